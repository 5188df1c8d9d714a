"""EventQueue: bounded, drops counted per event name, never raises, closed and emptied in a
fork child (the queue of the event writer and of each attach client's stream)."""

from __future__ import annotations

import os
import threading

import pytest
from output_helpers import make_event

from pyprobes.output.event_queue import EventQueue


def test_bound_and_drops_per_event() -> None:
    q = EventQueue(3)
    for i in range(5):
        q.put(make_event(event="a" if i % 2 else "b"))
    assert len(q) == 3 and q.wake.is_set()
    assert q.dropped_by_event() == {"b": 1, "a": 1}  # the 4th (a) and 5th (b)
    q.items.popleft()
    q.put(make_event(event="c"))
    assert len(q) == 3 and q.dropped_by_event() == {"b": 1, "a": 1}


def test_a_closed_queue_drops() -> None:
    q = EventQueue(10)
    q.accepting = False
    q.put(make_event())
    assert len(q) == 0 and q.dropped_by_event() == {"e": 1} and not q.wake.is_set()


def test_drops_from_several_threads_are_all_counted() -> None:
    q = EventQueue(1)
    q.put(make_event())
    threads = [
        threading.Thread(target=lambda: [q.put(make_event()) for _ in range(1000)])
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert q.dropped_by_event() == {"e": 4000}


def test_put_never_raises() -> None:
    EventQueue(1).put(object())  # type: ignore[arg-type]  # no event name: counted as "?"
    EventQueue.__new__(EventQueue).put(make_event())  # no attributes at all: swallowed


def test_bad_capacity() -> None:
    with pytest.raises(ValueError, match="capacity must be at least 1, got 0"):
        EventQueue(0)


def test_after_fork_the_child_queue_is_empty_and_closed() -> None:
    q = EventQueue(10)
    q.put(make_event())
    put = q.put  # what handlers hold
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            q.after_fork_in_child()
            put(make_event(event="x"))
            ok = len(q) == 0 and q.dropped_by_event() == {"x": 1} and not q.wake.is_set()
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)
    assert len(q) == 1  # the parent's is untouched
