"""pyprobes' own threads (the event writer, the agent, timers): no probe fires there."""

from __future__ import annotations

import inspect
import threading

import pyprobes
from pyprobes import Kprobe, Kretprobe


def work(n: int) -> int:
    total = n + 1
    return total


LINE = inspect.getsourcelines(work)[1] + 2  # "return total"


def _in_thread(fn: object, *args: object) -> None:
    t = threading.Thread(target=fn, args=args)  # type: ignore[arg-type]
    t.start()
    t.join()


def test_no_probe_fires_on_an_own_thread_and_nothing_is_counted() -> None:
    seen: list[str] = []
    entry = Kprobe(addr=work, pre_handler=lambda p, ctx: seen.append("entry"))
    line = Kprobe(addr=work, line=LINE, pre_handler=lambda p, ctx: seen.append("line"))
    ret = Kretprobe(addr=work, handler=lambda ri, ctx: seen.append("return"))
    pyprobes.register_kprobes([entry, line])
    pyprobes.register_kretprobe(ret)
    try:

        def ours() -> None:
            with pyprobes.own_thread():
                work(1)
            work(2)  # the thread is the program's again once the block ends

        _in_thread(ours)
        work(3)  # the main thread was never ours
    finally:
        pyprobes.unregister_kprobes([entry, line])
        pyprobes.unregister_kretprobe(ret)
    assert seen == ["entry", "line", "return"] * 2
    assert (entry.nhit, line.nhit, ret.nhit) == (2, 2, 2)


def test_own_threads_do_not_hide_other_threads_hits() -> None:
    """A thread of ours running at the same time as a program thread hides only its own."""
    hits: list[int] = []
    probe = Kprobe(addr=work, pre_handler=lambda p, ctx: hits.append(threading.get_ident()))
    inside, release = threading.Event(), threading.Event()

    def ours() -> None:
        with pyprobes.own_thread():
            inside.set()
            release.wait(30)
            work(0)

    pyprobes.register_kprobe(probe)
    try:
        t = threading.Thread(target=ours)
        t.start()
        assert inside.wait(30)
        _in_thread(work, 5)
        work(6)
        release.set()
        t.join()
    finally:
        pyprobes.unregister_kprobe(probe)
    assert len(hits) == 2 and t.ident not in hits
