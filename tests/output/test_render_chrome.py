"""Chrome trace-event renderer: a valid JSON file with X, b/e, instant and metadata events."""

from __future__ import annotations

import json
import math

import pytest
from output_helpers import make_event

from pyprobes.output import ChromeRenderer, Event, get_renderer


def _event(kind: str = "p", **kw: object) -> Event:
    fields: dict[str, object] = dict(
        group="grp", probe="json:loads", location="app.py:17", time_ns=5_000_000, pid=100,
        thread_id=7, thread_name="MainThread",
    )  # fmt: skip
    return make_event(kind, **{**fields, **kw})


def _document(events: list[Event]) -> list[dict[str, object]]:
    r = ChromeRenderer()
    text = r.header() + "".join(r.render(e) for e in events) + r.footer()
    doc = json.loads(text)
    assert isinstance(doc, list)
    return doc


def _trace(doc: list[dict[str, object]]) -> list[dict[str, object]]:
    return doc


def test_zero_events_is_valid_json() -> None:
    assert _document([]) == []


def test_one_return_is_a_complete_event_with_start_and_duration_in_us() -> None:
    ev = _event(
        "r",
        event="r_loads",
        args={"n": 3},
        retval={"a": 1},
        exception=None,
        duration_ns=1_500,
        time_ns=5_000_000,
    )
    meta, x = _trace(_document([ev]))
    assert meta == {
        "name": "thread_name",
        "ph": "M",
        "pid": 100,
        "tid": 7,
        "args": {"name": "MainThread"},
    }
    assert x["ph"] == "X"
    assert x["ts"] == pytest.approx(4_998.5)  # start = time_ns - duration_ns, in us
    assert x["dur"] == pytest.approx(1.5)
    assert (x["name"], x["cat"], x["pid"], x["tid"]) == ("json:loads", "grp", 100, 7)
    assert x["args"] == {"n": 3, "event": "r_loads", "retval": {"a": 1}, "exception": None}


def test_entry_is_a_thread_instant() -> None:
    ev = _event(args={"s": "x"}, time_ns=2_000)
    _, inst = _trace(_document([ev]))
    assert inst["ph"] == "i" and inst["s"] == "t"
    assert inst["ts"] == pytest.approx(2.0)
    assert "dur" not in inst
    assert inst["args"] == {"s": "x", "event": "e"}


def test_many_events_metadata_once_per_thread_and_on_rename() -> None:
    events = [_event(thread_id=t % 3, time_ns=1_000 * t) for t in range(30)]
    events.append(_event(thread_id=0, thread_name="renamed"))
    trace = _trace(_document(events))
    meta = [e for e in trace if e["ph"] == "M"]
    assert [(m["tid"], m["args"]) for m in meta] == [
        (0, {"name": "MainThread"}),
        (1, {"name": "MainThread"}),
        (2, {"name": "MainThread"}),
        (0, {"name": "renamed"}),
    ]
    assert len([e for e in trace if e["ph"] == "i"]) == 31


def test_exception_return_and_non_finite_values_stay_valid() -> None:
    ev = _event("r", args={"x": math.nan}, retval=None, exception="ValueError('x')", duration_ns=10)
    _, x = _trace(_document([ev]))
    assert x["args"] == {"x": "NaN", "event": "e", "retval": None, "exception": "ValueError('x')"}


def test_return_without_duration_falls_back_to_an_instant() -> None:
    _, inst = _trace(_document([_event("r", duration_ns=None)]))
    assert inst["ph"] == "i"


def test_thread_ids_too_large_for_perfetto_get_small_stable_tids() -> None:
    big_a, big_b = 140_000_000_000_001, 140_000_000_000_002
    events = [_event(thread_id=big_a), _event(thread_id=big_b), _event(thread_id=big_a)]
    tids = [e["tid"] for e in _trace(_document(events)) if e["ph"] == "i"]
    assert tids[0] == tids[2] != tids[1]
    assert all(isinstance(t, int) and 0 < t < 2**31 for t in tids)


def test_get_renderer_chrome_is_fresh_each_time() -> None:
    a, b = get_renderer("chrome"), get_renderer("chrome")
    assert isinstance(a, ChromeRenderer) and a is not b


def test_unknown_format_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="allowed are chrome, json, text"):
        get_renderer("xml")


def test_terminal_controls_in_names_and_args_stay_exact_valid_json() -> None:
    """Issue 18.4: C1 (CSI) and bidi controls are \\u-escaped, the document still valid."""
    hostile = "\x1b[2J\x9b2J\u202e"
    events = _trace(_document([_event("r", thread_name=hostile, args={"s": hostile})]))
    assert events[0]["args"] == {"name": hostile}
    assert events[1]["args"] == {"s": hostile, "event": "e", "retval": None, "exception": None}
    text = ChromeRenderer().render(_event(thread_name=hostile))
    assert "\\u009b" in text and "\\u202e" in text and "\x9b" not in text


def test_slices_are_named_after_the_function_and_keep_the_event_name_in_args() -> None:
    """Issue 17.3: not ``r_mod_star_star_0`` for every slice of a wildcard."""
    a = _event("r", event="r_app_star", probe="app:Shop.price", duration_ns=10)
    b = _event("r", event="r_app_star", probe="app:total", duration_ns=10)
    slices = [e for e in _trace(_document([a, b])) if e["ph"] == "X"]
    assert [s["name"] for s in slices] == ["app:Shop.price", "app:total"]
    assert [s["args"]["event"] for s in slices] == ["r_app_star", "r_app_star"]  # type: ignore[index]
    _, inst = _trace(_document([_event(args={"event": "click"})]))
    assert inst["name"] == "json:loads"
    assert inst["args"] == {"event": "click"}  # a fetch arg of that name wins


def test_suspending_code_is_an_async_begin_end_pair_with_its_own_id() -> None:
    """Issue 17.11: a generator/coroutine activation spans suspensions, so it is a b/e pair."""
    gens = [
        _event("r", probe="app:ticks", is_async=True, time_ns=t, duration_ns=4_000, args={"n": 1})
        for t in (10_000, 12_000)
    ]
    plain = _event("r", probe="app:square", time_ns=11_000, duration_ns=1_000)
    trace = [e for e in _trace(_document([gens[0], plain, gens[1]])) if e["ph"] != "M"]
    assert [e["ph"] for e in trace] == ["b", "e", "X", "b", "e"]
    b1, e1, x, b2, e2 = trace
    assert b1["id"] == e1["id"] != b2["id"] == e2["id"]
    assert "id" not in x
    assert b1["ts"] == pytest.approx(6.0) and e1["ts"] == pytest.approx(10.0)
    assert b2["ts"] == pytest.approx(8.0) and e2["ts"] == pytest.approx(12.0)
    for b, e in ((b1, e1), (b2, e2)):
        assert b["name"] == e["name"] == "app:ticks"
        assert b["cat"] == e["cat"] and "async" in str(b["cat"]).split(",")
        assert (b["pid"], b["tid"]) == (e["pid"], e["tid"]) == (100, 7)
        assert b["args"] == {"n": 1, "event": "e", "retval": None, "exception": None}
    assert x["name"] == "app:square" and x["cat"] == "grp"


def test_suspending_entry_and_missing_duration_stay_instants() -> None:
    trace = _trace(_document([_event(is_async=True), _event("r", is_async=True)]))
    assert [e["ph"] for e in trace] == ["M", "i", "i"]
