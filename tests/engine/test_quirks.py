"""What the engine measures of the interpreter where versions differ, against the tests' view."""

from __future__ import annotations

import sys

from _kret_targets import CLOSE_EMITS_NOTHING, add, registered

from pyprobes import Kretprobe
from pyprobes.engine import quirks


def test_measured_once_a_tool_id_is_taken() -> None:
    with registered(Kretprobe(addr=add)):
        assert quirks.CLOSE_EMITS_NOTHING is CLOSE_EMITS_NOTHING
        # gh-142186: per-code PY_UNWIND exists from 3.15 on, and nowhere before
        assert quirks.LOCAL_UNWIND is (sys.version_info >= (3, 15))


def test_measuring_leaves_nothing_on_the_tool_id() -> None:
    m = sys.monitoring
    tid = next(t for t in (3, 4, 5) if m.get_tool(t) is None)
    quirks._measured = False
    m.use_tool_id(tid, "pyprobes-tests")
    try:
        quirks.measure(tid)
        assert m.get_events(tid) == 0
        assert m.get_local_events(tid, quirks._probe_gen.__code__) == 0
        assert m.register_callback(tid, m.events.PY_UNWIND, None) is None
        assert quirks.CLOSE_EMITS_NOTHING is CLOSE_EMITS_NOTHING
    finally:
        m.free_tool_id(tid)
