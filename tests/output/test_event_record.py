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
