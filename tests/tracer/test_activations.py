"""tracer.activations: each return event of a ``spans=True`` session names its activation
and the probed activation enclosing it (--otlp's span parents)."""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import pytest

from pyprobes.lang import parse_spec
from pyprobes.output import Event
from pyprobes.output.render_json import JsonRenderer
from pyprobes.tracer import TraceSession
from pyprobes.tracer.activations import KEY, SWEEP_AT, Activations
from pyprobes.tracer.records import RingSource

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _act_targets as targets

T = "_act_targets"


@pytest.fixture(params=["python", "records"])
def path(request: pytest.FixtureRequest) -> str:
    """How the probes run: the Python path (HitRecorder events), or probe programs writing
    records into the core's ring, their links taken from the activations' entries."""
    return str(request.param)


def trace(specs: list[str], run: Any, *, spans: bool = True, path: str = "python") -> list[Event]:
    seen: list[Event] = []
    source = RingSource(spans=seen.append, write=False) if path == "records" else None
    session = TraceSession([parse_spec(s) for s in specs], seen.append, spans=spans, records=source)
    if path == "records":  # every spec here can be recorded, except those that say so
        assert all(
            why == "program" or ":repr" in spec
            for (_, why), spec in zip(session.paths(), specs, strict=True)
        ), session.paths()
    session.arm()
    try:
        run()
    finally:
        session.stop()
    if source is not None:
        text, counts = source.drain(JsonRenderer())
        assert text == "" and counts == {} and source.lost_by_event() == {}
    return sorted((e for e in seen if e.is_return), key=lambda e: e.time_ns)


def _link(e: Event) -> tuple[int, int, int, int, int]:
    assert e.activation is not None
    return e.activation


def test_children_name_the_activation_that_encloses_them(path: str) -> None:
    events = trace([f"r:mid {T}:mid", f"r:leaf {T}:leaf x"], lambda: targets.mid(1), path=path)
    assert [e.event for e in events] == ["leaf", "leaf", "mid"]
    mid = _link(events[2])
    assert mid[1] == 0 and mid[2] == mid[0]  # a root: its own root
    for leaf in events[:2]:
        n, parent, root, _, _ = _link(leaf)
        assert (parent, root) == (mid[0], mid[0]) and n != mid[0]


def test_recursion_nests_each_call_in_its_caller(path: str) -> None:
    events = trace([f"r:f {T}:fact n"], lambda: targets.fact(4), path=path)
    links = {e.args["n"]: _link(e) for e in events}
    assert links[4][1] == 0
    for n in (3, 2, 1):
        assert links[n][1] == links[n + 1][0] and links[n][2] == links[4][0]


def test_a_second_probe_on_the_same_function_nests_in_the_first(path: str) -> None:
    events = trace([f"r:a {T}:leaf", f"r:b {T}:leaf"], lambda: targets.leaf(1), path=path)
    a, b = (_link(e) for e in sorted(events, key=lambda e: e.event))
    assert b[1] == a[0] and a[1] == 0


def test_a_suspended_generator_encloses_nothing(path: str) -> None:
    events = trace([f"r:between {T}:between", f"r:gen {T}:gen", f"r:leaf {T}:leaf"],
                   targets.between, path=path)  # fmt: skip
    by = {e.event: e for e in events}
    outer = _link(by["between"])
    assert _link(by["gen"])[1] == outer[0]
    leaves = [_link(e) for e in events if e.event == "leaf"]
    assert len(leaves) == 2 and all(link[1] == outer[0] for link in leaves)


def test_without_spans_events_carry_no_link(path: str) -> None:
    events = trace([f"r:leaf {T}:leaf"], lambda: targets.leaf(1), spans=False, path="python")
    assert events and all(e.activation is None for e in events)


def test_a_root_takes_the_programs_active_opentelemetry_span(path: str) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("request") as span:
        ctx = span.get_span_context()
        events = trace([f"r:mid {T}:mid", f"r:leaf {T}:leaf"], lambda: targets.mid(1), path=path)
    mid = _link(next(e for e in events if e.event == "mid"))
    assert mid[3:] == (ctx.trace_id, ctx.span_id)
    leaf = _link(next(e for e in events if e.event == "leaf"))
    assert leaf[3:] == (ctx.trace_id, 0) and leaf[1] == mid[0]


class _Instance:
    """Stands in for a KretprobeInstance: only ``data`` is used."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}


def _frames() -> tuple[types.FrameType, types.FrameType]:
    def inner() -> types.FrameType:
        return sys._getframe()

    def outer() -> tuple[types.FrameType, types.FrameType]:
        return sys._getframe(), inner()

    return outer()


def test_an_activation_that_ended_unseen_is_no_parent_and_is_swept() -> None:
    acts = Activations()
    outer_frame, inner_frame = _frames()
    assert inner_frame.f_back is outer_frame
    gone = _Instance()
    acts.enter(gone, outer_frame)  # type: ignore[arg-type]
    gone.data = {}  # recycled by the engine without a return handler (a dropped generator)
    first = _Instance()
    link = acts.enter(first, inner_frame)  # type: ignore[arg-type]
    assert link[1] == 0  # no parent: the stale entry is not taken for one
    assert len(acts) == 1  # and it was removed on the way
    assert acts.leave(first, inner_frame) == link  # type: ignore[arg-type]
    assert len(acts) == 0
    live = _Instance()
    acts.enter(live, outer_frame)  # type: ignore[arg-type]
    assert acts.enter(_Instance(), inner_frame)[1] == live.data[KEY][0]  # type: ignore[arg-type]


def test_records_and_python_path_activations_nest_in_each_other() -> None:
    # mid's x:repr takes the Python path, leaf is recorded in the ring, fact's outer call too
    events = trace([f"r:mid {T}:mid x:repr", f"r:leaf {T}:leaf x"], lambda: targets.mid(1),
                   path="records")  # fmt: skip
    assert [e.event for e in events] == ["leaf", "leaf", "mid"]
    mid = _link(events[2])
    assert all(_link(leaf)[1:3] == (mid[0], mid[0]) for leaf in events[:2])


def test_records_leave_no_live_entry_behind_for_long() -> None:
    acts = Activations()
    seen: list[Event] = []
    source = RingSource(spans=seen.append, write=False)
    session = TraceSession([parse_spec(f"r:leaf {T}:leaf x")], seen.append, spans=True,
                           records=source, activations=acts)  # fmt: skip
    session.arm()
    try:
        for i in range(3 * SWEEP_AT):
            targets.leaf(i)
            assert len(acts) <= 2 * SWEEP_AT + 1  # stale entries are swept, not kept
        first = targets.mid(1)
    finally:
        session.stop()
    source.drain(JsonRenderer())
    assert first == 5
    links = [_link(e) for e in seen]
    assert len(links) == 3 * SWEEP_AT + 2 and len({n for n, *_ in links}) == len(links)
    assert all(link[1] == 0 for link in links)  # a stale entry at a reused address: no parent
