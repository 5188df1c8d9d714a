"""Event records: frozen plain data with exactly the JSON fields of the output formats."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from output_helpers import make_event

from pyprobes.output import Event

ENTRY_FIELDS = {
    "event",
    "group",
    "kind",
    "probe",
    "location",
    "time_ns",
    "pid",
    "thread_id",
    "thread_name",
    "args",
}
RETURN_FIELDS = ENTRY_FIELDS | {"retval", "exception", "duration_ns", "site", "is_async"}


def _event(kind: str = "p", **kw: object) -> Event:
    fields: dict[str, object] = dict(
        probe="json:loads", location="app.py:17", time_ns=1, pid=2, thread_id=3,
        thread_name="MainThread", args={"x": 1},
    )  # fmt: skip
    return make_event(kind, **{**fields, **kw})


def test_event_is_frozen_and_slotted() -> None:
    ev = _event()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.event = "other"  # type: ignore[misc]
    assert not hasattr(ev, "__dict__")


def test_entry_json_dict_has_exactly_the_entry_fields() -> None:
    d = _event("p").to_json_dict()
    assert set(d) == ENTRY_FIELDS
    assert d["args"] == {"x": 1}
    assert not _event("p").is_return


def test_return_json_dict_adds_retval_exception_duration() -> None:
    ev = _event("r", retval=[1, 2], exception="ValueError('x')", duration_ns=42)
    d = ev.to_json_dict()
    assert set(d) == RETURN_FIELDS
    assert (d["retval"], d["exception"], d["duration_ns"]) == ([1, 2], "ValueError('x')", 42)
    assert d["is_async"] is False
    assert ev.is_return
    assert _event("r", is_async=True).to_json_dict()["is_async"] is True


def test_json_dict_args_is_a_copy() -> None:
    ev = _event(args={"x": 1})
    d = ev.to_json_dict()
    d["args"]["y"] = 2  # type: ignore[index]
    assert dict(ev.args) == {"x": 1}


def test_event_pickles_as_plain_data() -> None:
    ev = _event("r", retval={"a": [1]}, duration_ns=5)
    assert pickle.loads(pickle.dumps(ev)) == ev


def test_is_async_survives_the_attach_protocol() -> None:
    """An attached client renders chrome from the JSON records: the flag must travel too."""
    from pyprobes.attach.client import event_from_json

    for flag in (True, False):
        ev = _event("r", duration_ns=5, is_async=flag)
        assert event_from_json(ev.to_json_dict()) == ev


def test_activation_travels_the_attach_protocol_exactly_and_only_when_set() -> None:
    """``attach --otlp``: a return's link crosses the socket; its 128- and 64-bit program ids
    as hex strings (exact for any JSON reader), and events without one gain no field."""
    import json

    from pyprobes.attach.client import event_from_json

    assert "activation" not in _event("r", duration_ns=5).to_json_dict()
    for link in ((7, 3, 1, 0, 0), (1, 0, 1, (1 << 128) - 1, (1 << 64) - 1), (9, 0, 9, 5, 6)):
        ev = _event("r", duration_ns=5, activation=link)
        d = json.loads(json.dumps(ev.to_json_dict()))
        assert all(type(v) is not int or v < 1 << 53 for v in d["activation"])
        assert event_from_json(d) == ev
    assert _event("r", duration_ns=5, activation=(2, 1, 1, 0, 0)).to_json_dict()["activation"] == [
        2, 1, 1, "", ""
    ]  # fmt: skip


@pytest.mark.parametrize(
    "bad",
    [None, [1, 0, 1, "", ""][:4], [1, 0, 1, 0, ""], [1, -1, 1, "", ""], [1, 0, 1, "xyz", ""],
     [1, 0, 1, "0" * 33, ""], [0, 0, 0, "", ""], [True, 0, 1, "", ""], "1,0,1"],
)  # fmt: skip
def test_a_malformed_activation_makes_the_record_malformed(bad: object) -> None:
    from pyprobes.attach.client import event_from_json

    d = _event("r", duration_ns=5).to_json_dict()
    d["activation"] = bad
    assert event_from_json(d) is None
