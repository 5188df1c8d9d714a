"""Threads calling probed functions while another thread changes the probes."""

from __future__ import annotations

import sys
import threading
from typing import Any

import pyprobes
from pyprobes import Jprobe, Kprobe, Kretprobe


def f0(x: int) -> int:
    return x + 1


def f1(x: int) -> int:
    y = x * 2
    return y


def f2(x: int) -> int:
    return f0(x) + f1(x)


TARGETS = (f0, f1, f2)
#: What each target returns, computed here without a probe (f2(x) = 3x + 1).
EXPECTED = (lambda x: x + 1, lambda x: 2 * x, lambda x: 3 * x + 1)


def test_register_disable_enable_unregister_while_8_threads_call() -> None:
    stop = threading.Event()
    calls_done = [0] * 8
    errors: list[BaseException] = []

    def caller(i: int) -> None:
        try:
            n = 0
            while not stop.is_set():
                for f, want in zip(TARGETS, EXPECTED, strict=True):
                    assert f(n) == want(n)  # results are never changed
                n += 1
            calls_done[i] = n
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    seen: dict[int, list[int]] = {}

    def counting(p: Any) -> list[int]:
        return seen.setdefault(id(p), [])

    probes: list[Any] = []

    def control() -> None:
        try:
            for round_ in range(60):
                batch: list[Any] = []
                for f in TARGETS:
                    k = Kprobe(addr=f, pre_handler=lambda p, ctx: counting(p).append(1))
                    r = Kretprobe(
                        addr=f,
                        handler=lambda ri, ctx: counting(ri.rp).append(1),
                        maxactive=64,
                    )
                    j = Jprobe(lambda x, _f=f: None, addr=f)
                    line = Kprobe(
                        addr=f1,
                        line=f1.__code__.co_firstlineno + 1,
                        pre_handler=lambda p, ctx: counting(p).append(1),
                    )
                    batch += [k, r, j, line]
                for p in batch:
                    if isinstance(p, Kretprobe):
                        pyprobes.register_kretprobe(p)
                    elif isinstance(p, Jprobe):
                        pyprobes.register_jprobe(p)
                    else:
                        pyprobes.register_kprobe(p)
                for p in batch[round_ % 3 :: 3]:
                    pyprobes.disable_kprobe(p)
                pyprobes.set_enabled(round_ % 5 != 0)
                pyprobes.set_enabled(True)
                for p in batch[round_ % 3 :: 3]:
                    pyprobes.enable_kprobe(p)
                for p in batch:
                    pyprobes.engine.registry.unregister(p)
                probes.extend(batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    ctl = threading.Thread(target=control)
    for t in threads:
        t.start()
    ctl.start()
    ctl.join(timeout=120)
    for t in threads:
        t.join(timeout=60)
    assert not ctl.is_alive() and not any(t.is_alive() for t in threads), "deadlock"
    assert errors == []
    assert pyprobes.registered_probes() == []
    assert all(n > 0 for n in calls_done)
    total_hits = 0
    for p in probes:
        if isinstance(p, Jprobe):
            continue
        handled = len(seen.get(id(p), []))
        if isinstance(p, Kretprobe):
            # Each tracked activation either returned (handler ran) or was in flight when the
            # probe was disabled or unregistered (flushed without handler).
            assert handled <= p.nhit
            assert p.nmissed == 0
        else:
            assert handled == p.nhit, p  # every counted hit called the handler exactly once
        total_hits += p.nhit
    assert total_hits > 0


def looped(x: int) -> int:
    y = x + 1
    return y * 2


def test_a_line_probe_armed_while_another_thread_runs_the_code_always_fires() -> None:
    """Issue 18.2: arming while the code runs must never leave a probe that cannot fire (a LINE
    callback in the arming window answered DISABLE with no restart to undo it)."""
    import time

    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            looped(1)

    t = threading.Thread(target=spin)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as it can: the window is short
    t.start()
    line = looped.__code__.co_firstlineno + 1
    dead = 0
    tries = 0
    deadline = time.monotonic() + 4.0
    try:
        while time.monotonic() < deadline and dead == 0:
            tries += 1
            p = Kprobe(addr=looped, line=line)
            pyprobes.register_kprobe(p)
            try:
                fired_by = time.monotonic() + 2.0
                while p.nhit == 0 and time.monotonic() < fired_by:
                    time.sleep(0)  # let the spinning thread run (not a synchronisation sleep)
                if p.nhit == 0:
                    dead += 1
            finally:
                pyprobes.unregister_kprobe(p)
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(interval)
    assert tries > 100
    assert dead == 0, f"a probe armed while the code ran never fired (try {tries})"
