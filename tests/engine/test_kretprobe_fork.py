"""Kretprobes across os.fork(): in the child, the activations of threads that do not exist there
are flushed without handlers (the kernel's kprobe_flush_task); the forking thread's own
activations, and suspended generators, carry on."""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pyprobes import Kretprobe, KretprobeInstance, ProbeContext

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from _kret_targets import TIMEOUT, registered

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    # Forking with threads alive is what these tests are about.
    pytest.mark.filterwarnings(
        "ignore:.*use of fork\\(\\) may lead to deadlocks:DeprecationWarning"
    ),
]


def work(cb: Callable[[], object]) -> object:
    """The probed function: runs ``cb`` inside its own activation."""
    return cb()


def countdown(n: int) -> int:
    """n nested activations of work()."""
    return 0 if n == 0 else 1 + work(lambda: countdown(n - 1))  # type: ignore[operator]


def steps(n: int) -> Iterator[int]:
    yield from range(n)


def _read_all(fd: int, pid: int) -> bytes:
    """Read the child's report to EOF; kill the child if it hangs (a safety net only)."""
    chunks = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError("the child did not report in time")
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def _child_exit(w: int, report: Callable[[], dict[str, Any]]) -> None:
    """In the child: write the report (or the error) to the pipe and leave at once."""
    code = 0
    try:
        try:
            data = report()
        except BaseException:
            data = {"error": traceback.format_exc()}
            code = 1
        os.write(w, json.dumps(data, default=repr).encode())
    finally:
        os._exit(code)


def _parent_collect(pid: int, r: int) -> dict[str, Any]:
    try:
        data = _read_all(r, pid)
    finally:
        _, status = os.waitpid(pid, 0)
    report: dict[str, Any] = json.loads(data) if data else {"error": "no report"}
    assert "error" not in report, report["error"]
    assert os.waitstatus_to_exitcode(status) == 0
    return report


def test_fork_flushes_the_activations_of_other_threads() -> None:
    returns: list[Any] = []

    def entry(ri: KretprobeInstance, ctx: ProbeContext) -> None:
        ri.data["pid"] = os.getpid()

    def handler(ri: KretprobeInstance, ctx: ProbeContext) -> None:
        returns.append((ri.data["pid"], os.getpid(), ctx.retval))

    rp = Kretprobe(addr=work, entry_handler=entry, handler=handler, maxactive=4)
    entered, release = threading.Event(), threading.Event()

    def blocker() -> str:
        entered.set()
        if not release.wait(TIMEOUT):
            raise TimeoutError
        return "thread"

    with registered(rp):
        thread = threading.Thread(target=work, args=(blocker,))
        thread.start()
        try:
            assert entered.wait(TIMEOUT)
            assert rp.nactive == 1
            r, w = os.pipe()

            def do_fork() -> int:
                return os.fork()  # inside the forking thread's own activation of work()

            pid = work(do_fork)
            if pid == 0:  # the child: only this thread exists here

                def report() -> dict[str, Any]:
                    out: dict[str, Any] = {"after_return": rp.nactive}
                    out["returns"] = list(returns)
                    # The pool is whole: maxactive nested activations are all tracked.
                    nmissed = rp.nmissed
                    returns.clear()
                    out["countdown"] = countdown(rp.maxactive)
                    out["tracked"] = len(returns)
                    out["missed"] = rp.nmissed - nmissed
                    out["nactive_end"] = rp.nactive
                    out["child_pid"] = os.getpid()
                    return out

                # The forking thread's activation of work() ended just now, in the child.
                _child_exit(w, report)
            os.close(w)
            report = _parent_collect(pid, r)
        finally:
            release.set()
            thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert rp.nactive == 0

    # In the child, the blocked thread's activation was flushed (no handler, no instance) and
    # the forking thread's activation of work() returned there with its handler.
    assert report["after_return"] == 0
    me = os.getpid()
    assert report["returns"] == [[me, report["child_pid"], 0]]
    assert report["countdown"] == rp.maxactive
    assert (report["tracked"], report["missed"], report["nactive_end"]) == (rp.maxactive, 0, 0)
    # In the parent nothing was flushed: both activations ended with their handlers.
    assert sorted(returns, key=repr) == sorted([(me, me, pid), (me, me, "thread")], key=repr)


def test_in_the_child_nactive_counts_only_the_forking_threads_activations() -> None:
    rp = Kretprobe(addr=work, maxactive=8)
    entered = threading.Barrier(3, timeout=TIMEOUT)
    release = threading.Event()

    def blocker() -> None:
        entered.wait()
        release.wait(TIMEOUT)

    with registered(rp):
        threads = [threading.Thread(target=work, args=(lambda: work(blocker),)) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            entered.wait()
            assert rp.nactive == 4  # two threads, two nested activations each
            r, w = os.pipe()
            # Fork three activations deep on this thread.
            pid = work(lambda: work(lambda: work(os.fork)))
            if pid == 0:
                _child_exit(w, lambda: {"nactive": rp.nactive})
            os.close(w)
            report = _parent_collect(pid, r)
        finally:
            release.set()
            for t in threads:
                t.join(TIMEOUT)
        assert rp.nactive == 0
    # Inside the child, after the three work() frames returned: a leak would show here.
    assert report == {"nactive": 0}


def test_nactive_inside_the_child_before_the_forking_activations_return() -> None:
    rp = Kretprobe(addr=work, maxactive=5)
    entered = threading.Barrier(2, timeout=TIMEOUT)
    release = threading.Event()

    def blocker() -> None:
        entered.wait()
        release.wait(TIMEOUT)

    with registered(rp):
        thread = threading.Thread(target=work, args=(blocker,))
        thread.start()
        try:
            entered.wait()
            r, w = os.pipe()

            def fork_inside() -> int:
                pid = os.fork()
                if pid == 0:
                    # Two activations of work() on this thread are in flight around us.
                    _child_exit(w, lambda: {"nactive": rp.nactive, "nmissed": rp.nmissed})
                return pid

            pid = work(lambda: work(fork_inside))
            os.close(w)
            report = _parent_collect(pid, r)
        finally:
            release.set()
            thread.join(TIMEOUT)
        assert rp.nactive == 0
    assert report == {"nactive": 2, "nmissed": 0}


def test_suspended_generator_survives_the_fork_and_ends_in_the_child() -> None:
    returns: list[Any] = []
    rp = Kretprobe(
        addr=steps,
        handler=lambda ri, ctx: returns.append((os.getpid(), ctx.retval, ctx.exception)),
    )
    with registered(rp):
        gen = steps(3)
        started = threading.Thread(target=lambda: next(gen))  # started by a thread that exits
        started.start()
        started.join(TIMEOUT)
        assert rp.nactive == 1
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:

            def report() -> dict[str, Any]:
                before = rp.nactive
                rest = list(gen)
                return {"before": before, "rest": rest, "after": rp.nactive, "n": len(returns)}

            _child_exit(w, report)
        os.close(w)
        report = _parent_collect(pid, r)
        assert returns == []  # the child's handler ran in the child only
        assert list(gen) == [1, 2]
        assert rp.nactive == 0
    assert report == {"before": 1, "rest": [1, 2], "after": 0, "n": 1}
    assert returns == [(os.getpid(), None, None)]
