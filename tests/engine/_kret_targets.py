"""Functions probed by the kretprobe tests, and the small helpers those tests share.

The tests directory is not a package: the test modules put this directory on ``sys.path`` and
import this module as ``_kret_targets`` (so ``symbol_name="_kret_targets:..."`` names it).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyprobes

#: Upper bound for every wait on an Event, Barrier or join: a safety net against hangs, never
#: a synchronisation (nothing waits for it to expire).
TIMEOUT = 30.0

#: gh-140373: closing or collecting a suspended generator emits no monitoring event on these
#: versions (3.13.0 up to 3.14.0), so its activation ends without a handler.


def _close_emits_nothing() -> bool:
    """gh-140373, seen with a raw sys.monitoring tool of the tests' own (not pyprobes'): whether
    closing or collecting a suspended generator emits no PY_UNWIND. Patch releases differ
    (3.13.0 emits nothing; 3.12.1, 3.14.10, 3.15.2 emit it), so the tests ask the interpreter."""
    m = sys.monitoring
    tid = next(t for t in range(6) if m.get_tool(t) is None)
    m.use_tool_id(tid, "pyprobes-tests")
    seen: list[object] = []

    def g() -> Iterator[int]:
        yield 1

    m.register_callback(tid, m.events.PY_UNWIND, lambda c, o, e: seen.append(c) and None)
    m.set_events(tid, m.events.PY_UNWIND)
    try:
        it = g()
        next(it)
        it.close()
        it = g()
        next(it)
        del it
    finally:
        m.set_events(tid, 0)
        m.register_callback(tid, m.events.PY_UNWIND, None)
        m.free_tool_id(tid)
    return seen.count(g.__code__) < 2


CLOSE_EMITS_NOTHING = _close_emits_nothing()


# --- targets ------------------------------------------------------------------------------


def add(a: int, b: int) -> int:
    return a + b


class Calc:
    def __init__(self, k: int) -> None:
        self.k = k

    def mul(self, x: int) -> int:
        return self.k * x


def held(barrier: threading.Barrier, release: threading.Event, value: object) -> object:
    """Wait at ``barrier`` (so the caller knows every thread is inside), then for ``release``."""
    barrier.wait()
    if not release.wait(TIMEOUT):
        raise TimeoutError("never released")
    return value


# --- helpers ------------------------------------------------------------------------------

_REG: dict[str, tuple[Callable[[Any], None], Callable[[Any], None]]] = {
    "k": (pyprobes.register_kprobe, pyprobes.unregister_kprobe),
    "j": (pyprobes.register_jprobe, pyprobes.unregister_jprobe),
    "r": (pyprobes.register_kretprobe, pyprobes.unregister_kretprobe),
}


@contextlib.contextmanager
def registered(*probes: pyprobes.Probe) -> Iterator[None]:
    """Register ``probes`` in order; unregister every one of them on the way out."""
    try:
        for p in probes:
            _REG[p.kind][0](p)
        yield
    finally:
        for p in reversed(probes):
            _REG[p.kind][1](p)


class HeldThreads:
    """``n`` threads inside ``held(barrier, release, i)`` at once, i = 0..n-1.

    On entering the ``with`` block every thread has passed the function's entry; ``finish()``
    lets them return and joins them. ``results[i]`` is thread i's return value and
    ``idents[i]`` its ``threading.get_ident()``.
    """

    def __init__(self, n: int, func: Callable[..., object] = held) -> None:
        self.n = n
        self.func = func
        self.barrier = threading.Barrier(n + 1, timeout=TIMEOUT)
        self.release = threading.Event()
        self.results: dict[int, object] = {}
        self.errors: list[BaseException] = []
        self.idents: dict[int, int] = {}
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]

    def _run(self, i: int) -> None:
        self.idents[i] = threading.get_ident()
        try:
            self.results[i] = self.func(self.barrier, self.release, i)
        except BaseException as exc:
            self.errors.append(exc)

    def __enter__(self) -> HeldThreads:
        for t in self.threads:
            t.start()
        try:
            self.barrier.wait()
        except BaseException:
            self.barrier.abort()  # never while the threads may still be leaving the barrier
            self.finish()
            raise
        return self

    def finish(self) -> None:
        self.release.set()
        for t in self.threads:
            t.join(TIMEOUT)
        assert not any(t.is_alive() for t in self.threads), "a thread did not finish"

    def __exit__(self, *exc: object) -> None:
        self.finish()


def run_concurrently(n: int) -> tuple[dict[int, object], dict[int, int]]:
    """Run ``n`` concurrent calls of ``held`` to the end; return (results, idents)."""
    with HeldThreads(n) as group:
        pass
    assert not group.errors, group.errors
    return group.results, group.idents
