"""JSON Lines renderer: every line is strict JSON, whatever the captured values."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st
from output_helpers import make_event

from pyprobes.output import Event, JsonRenderer, get_renderer
from pyprobes.output.sanitize import to_json_safe


def _event(kind: str = "p", args: dict[str, object] | None = None, **kw: object) -> Event:
    fields: dict[str, object] = dict(
        probe="json:loads", location="app.py:17", time_ns=10, pid=1, thread_id=2,
    )  # fmt: skip
    return make_event(kind, args, **{**fields, **kw})


def _strict_loads(line: str) -> object:
    def reject(name: str) -> object:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(line, parse_constant=reject)


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(exclude_categories=()))
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=())), inner, max_size=4)
    ),
    max_leaves=16,
)


@given(json_values, json_values)
def test_every_line_parses_and_keeps_the_values(arg: object, retval: object) -> None:
    ev = _event("r", args={"v": arg}, retval=retval, duration_ns=3)
    line = JsonRenderer().render(ev)
    assert line.endswith("\n") and line.count("\n") == 1
    line.encode("utf-8")
    obj = _strict_loads(line)
    assert isinstance(obj, dict)
    assert obj["args"] == {"v": to_json_safe(arg)}
    assert obj["retval"] == to_json_safe(retval)


def test_ints_past_the_str_digit_limit_become_hex_strings() -> None:
    huge = 10**5000
    obj = _strict_loads(JsonRenderer().render(_event("r", args={"n": [huge]}, retval=huge)))
    assert isinstance(obj, dict)
    assert obj["args"]["n"] == [hex(huge)] and obj["retval"] == hex(huge)


def test_return_has_all_fields() -> None:
    ev = _event("r", args={"$retval": 1}, retval=1, exception=None, duration_ns=99)
    obj = _strict_loads(JsonRenderer().render(ev))
    assert obj == {
        "event": "e",
        "group": "g",
        "kind": "r",
        "probe": "json:loads",
        "location": "app.py:17",
        "time_ns": 10,
        "pid": 1,
        "thread_id": 2,
        "thread_name": "T",
        "args": {"$retval": 1},
        "retval": 1,
        "exception": None,
        "duration_ns": 99,
        "site": "",
        "is_async": False,
    }


def test_entry_has_no_return_fields() -> None:
    obj = _strict_loads(JsonRenderer().render(_event()))
    assert isinstance(obj, dict)
    assert not {"retval", "exception", "duration_ns", "is_async"} & obj.keys()


def test_non_finite_floats_become_strings() -> None:
    ev = _event(args={"a": math.nan, "b": [math.inf, -math.inf]})
    obj = _strict_loads(JsonRenderer().render(ev))
    assert isinstance(obj, dict)
    assert obj["args"] == {"a": "NaN", "b": ["Infinity", "-Infinity"]}


def test_unicode_is_kept_readable_and_lone_surrogates_escaped() -> None:
    assert "é☃" in JsonRenderer().render(_event(args={"s": "é☃"}))
    line = JsonRenderer().render(_event(args={"s": "a\udc80b"}))
    assert line.isascii()
    obj = _strict_loads(line)
    assert isinstance(obj, dict)
    assert obj["args"]["s"] == "a\udc80b"


def test_non_json_objects_and_cycles_do_not_break_a_line() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    ev = _event(args={"obj": object(), "cyc": cyclic, "t": (1, 2), 3: "intkey"})  # type: ignore[dict-item]
    obj = _strict_loads(JsonRenderer().render(ev))
    assert isinstance(obj, dict)
    assert obj["args"]["obj"].startswith("<object object")
    assert obj["args"]["t"] == [1, 2]
    assert obj["args"]["3"] == "intkey"


def test_get_renderer_json() -> None:
    r = get_renderer("json")
    assert isinstance(r, JsonRenderer)
    assert r.header() == "" and r.footer() == ""


def test_terminal_controls_are_escaped_and_the_json_is_exact() -> None:
    """Issue 18.4: json escapes only C0; DEL, C1 (CSI) and bidi controls are \\u-escaped too."""
    hostile = "\x1b[2J\x7f\x9b2J\u202eevil\u2066\U000e0001"  # a surrogate would escape all
    ev = _event("r", thread_name=hostile, args={hostile: [hostile]}, retval=hostile)
    line = JsonRenderer().render(ev)
    assert line.endswith("\n") and line[:-1].isprintable()
    assert "\\u009b" in line and "\\u202e" in line and "\\u007f" in line
    back = json.loads(line)
    assert back["thread_name"] == hostile
    assert back["args"] == {hostile: [hostile]} and back["retval"] == hostile
    clean = JsonRenderer().render(_event(thread_name="wörker"))
    assert "wörker" in clean  # printable text is not escaped
