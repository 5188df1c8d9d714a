"""tracer.hits: after its probes went, wait_for_handlers waits for a handler still running
(here one rendering an argument's str, held by the test), and only for it."""

from __future__ import annotations

import os
import sys
import threading

from pyprobes.lang import parse_spec
from pyprobes.output import Event
from pyprobes.tracer import TraceSession
from pyprobes.tracer.hits import threads_in_handlers, wait_for_handlers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _prog_targets as targets

TIMEOUT = 30.0


class Held:
    """A value whose str waits for the test: the handler rendering it is held there."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __str__(self) -> str:
        self.entered.set()
        self.release.wait(TIMEOUT)
        return "held"


def test_waits_for_the_handler_still_running_and_only_for_it() -> None:
    assert wait_for_handlers(0.0)  # nothing runs a handler: no wait at all
    seen: list[Event] = []
    session = TraceSession([parse_spec("p:h _prog_targets:price item:str")], seen.append)
    session.arm()
    value = Held()
    caller = threading.Thread(target=targets.price, args=(value, 1))
    try:
        caller.start()
        assert value.entered.wait(TIMEOUT)
    finally:
        session.stop()  # the probe goes; its handler is still in Held.__str__
    assert threads_in_handlers() == {caller.ident}
    assert not wait_for_handlers(0.05)  # still held: the wait ends at its bound, says so
    assert seen == []
    value.release.set()
    assert wait_for_handlers(TIMEOUT)
    assert [e.args for e in seen] == [{"item": "held"}]  # emitted before the wait returned
    caller.join(TIMEOUT)
    assert threads_in_handlers() == set()
