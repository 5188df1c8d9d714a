"""Memory: registering and unregistering 100,000 probes and 10 million hits leave the resident
memory flat (no leak in the core's tables, pools, contexts or counters).

The 10 million hits run on the C core; the Python core, some ten times slower per hit, makes
one million (the same paths, run fewer times). The figures are printed (``-s`` shows them)."""

from __future__ import annotations

import gc
import os
import time

import pytest

import pyprobes
from pyprobes import Jprobe, Kprobe, Kretprobe

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
STATM = "/proc/self/statm"
BOUND = 5 * 1024 * 1024  # bytes of growth allowed after the warm-up

pytestmark = pytest.mark.skipif(not os.path.exists(STATM), reason="needs /proc/self/statm")


def rss() -> int:
    with open(STATM) as f:
        return int(f.read().split()[1]) * PAGE


def target(a: int, b: int) -> int:
    return a + b


def gen(n: int):  # type: ignore[no-untyped-def]
    yield from range(n)


def anchor() -> None:
    pass


def mirror(a: int, b: int) -> None:
    pass


def handler(p: object, ctx: object) -> None:
    pass


def hits(n: int) -> None:
    """n calls of target (each a kprobe hit and a kretprobe hit when both are registered)."""
    f = target
    for _ in range(n // 10):
        f(1, 2)
        f(1, 2)
        f(1, 2)
        f(1, 2)
        f(1, 2)
        f(1, 2)
        f(1, 2)
        f(1, 2)
        f(1, 2)
        f(1, 2)


def churn(n: int) -> None:
    """Register, hit and unregister n probes of every kind, one at a time."""
    for i in range(n):
        kind = i % 4
        if kind == 0:
            p: Kprobe | Jprobe | Kretprobe = Kprobe(addr=target, pre_handler=handler)
            pyprobes.register_kprobe(p)
        elif kind == 1:
            p = Jprobe(entry=mirror, addr=target)
            pyprobes.register_jprobe(p)
        elif kind == 2:
            p = Kretprobe(addr=target, handler=handler, entry_handler=handler, maxactive=2)
            pyprobes.register_kretprobe(p)
        else:
            p = Kretprobe(addr=gen, handler=handler, maxactive=1)
            pyprobes.register_kretprobe(p)
            g = gen(2)
            next(g)  # left suspended: its activation is flushed by unregister
        target(i, 1)
        pyprobes.engine.registry.unregister(p)


def test_rss_stays_flat_over_100k_registrations_and_10m_hits() -> None:
    c_core = pyprobes.core_name() == "c"
    n_hits = 10_000_000 if c_core else 1_000_000
    keep = Kprobe(addr=anchor)  # holds the tool id, as a long-running tool would
    kp = Kprobe(addr=target, pre_handler=handler)
    rp = Kretprobe(addr=target, handler=handler, entry_handler=handler)
    pyprobes.register_kprobe(keep)
    try:
        # warm-up: every table, pool, cache and free list reaches its working size
        churn(2_000)
        pyprobes.register_kprobe(kp)
        pyprobes.register_kretprobe(rp)
        hits(200_000)
        pyprobes.unregister_kprobe(kp)
        pyprobes.unregister_kretprobe(rp)
        gc.collect()
        before = rss()
        t0 = time.perf_counter()
        churn(100_000)
        t1 = time.perf_counter()
        pyprobes.register_kprobe(kp)
        pyprobes.register_kretprobe(rp)
        hits(n_hits)
        t2 = time.perf_counter()
        assert kp.nhit == n_hits  # (registering again zeroes the counters)
        assert rp.nhit == n_hits and rp.nmissed == 0 and rp.nactive == 0
        pyprobes.unregister_kprobe(kp)
        pyprobes.unregister_kretprobe(rp)
        gc.collect()
        after = rss()
    finally:
        for p in (kp, rp, keep):
            pyprobes.engine.registry.unregister(p)
    print(
        f"\ncore {pyprobes.core_name()}: RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB"
        f" ({(after - before) / 2**10:+.0f} KiB) over 100,000 registrations ({t1 - t0:.1f} s)"
        f" and {n_hits:,} calls with a kprobe and a kretprobe ({t2 - t1:.1f} s)"
    )
    assert after - before < BOUND
