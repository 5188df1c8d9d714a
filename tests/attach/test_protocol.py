"""The attach protocol: validation, limits, line splitting, encoding."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyprobes.attach.errors import ProtocolError
from pyprobes.attach.protocol import (
    MAX_LINE,
    MAX_SPEC_CHARS,
    MAX_SPECS_PER_MESSAGE,
    PROTOCOL_VERSION,
    REQUESTS,
    LineReader,
    Request,
    encode,
    error,
    hello,
    parse_request,
    request_id_of,
)


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


def code_of(data: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_request(data)
    return info.value.code


def test_valid_requests() -> None:
    assert parse_request(line(hello("me"))) == Request(
        "hello", None, {"version": PROTOCOL_VERSION, "client": "me"}
    )
    assert parse_request(line({"type": "hello", "version": 1})).fields == {"version": 1}
    req = parse_request(line({"type": "add", "id": 3, "specs": ["p json:loads", "r json:dumps"]}))
    assert req == Request("add", 3, {"specs": ["p json:loads", "r json:dumps"]})
    spans = parse_request(line({"type": "add", "specs": ["r m:f"], "spans": True}))
    assert spans.fields == {"specs": ["r m:f"], "spans": True}
    # spans false asks for nothing new: aggregating stays possible
    req = parse_request(line({"type": "add", "specs": ["r m:f"], "spans": False, "aggregate": {}}))
    assert req.fields["spans"] is False
    for rtype in ("remove", "enable", "disable"):
        assert parse_request(line({"type": rtype, "handles": [1, 2]})).fields == {"handles": [1, 2]}
    for rtype in ("list", "status", "ping", "detach"):
        assert parse_request(line({"type": rtype, "id": 0})) == Request(rtype, 0, {})


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "bad-json"),
        (b"not json", "bad-json"),
        (b"\xff", "bad-json"),
        (b'{"type": "ping", "x": Infinity}', "bad-json"),
        (b"null", "bad-message"),
        (b'"ping"', "bad-message"),
        (b'{"type": 1}', "bad-message"),
        (b'{"type": "eval", "code": "1"}', "unknown-type"),
        (b'{"type": "ping", "id": "1"}', "bad-message"),
        (b'{"type": "ping", "id": 1.5}', "bad-message"),
        (b'{"type": "ping", "id": true}', "bad-message"),
        (b'{"type": "ping", "id": 9007199254740992}', "bad-message"),
        (b'{"type": "ping", "extra": 1}', "bad-message"),
        (b'{"type": "hello"}', "bad-message"),
        (b'{"type": "hello", "version": "1"}', "bad-message"),
        (b'{"type": "hello", "version": 1, "client": 5}', "bad-message"),
        (b'{"type": "add", "specs": null}', "bad-message"),
        (b'{"type": "add", "specs": [null]}', "bad-message"),
        (b'{"type": "remove", "handles": [1.0]}', "bad-message"),
        (b'{"type": "remove", "handles": []}', "bad-message"),
        (b'{"type": "add", "specs": ["r m:f"], "spans": 1}', "bad-message"),
        (b'{"type": "add", "specs": ["r m:f"], "spans": "yes"}', "bad-message"),
        (b'{"type": "add", "specs": ["r m:f"], "spans": true, "aggregate": {}}', "bad-message"),
    ],
)
def test_invalid_requests(data: bytes, code: str) -> None:
    assert code_of(data) == code


def test_limits() -> None:
    assert code_of(b" " * (MAX_LINE + 1)) == "too-large"
    too_long = "p json:loads " + "x" * MAX_SPEC_CHARS
    assert code_of(line({"type": "add", "specs": [too_long]})) == "too-large"
    many = ["p json:loads"] * (MAX_SPECS_PER_MESSAGE + 1)
    assert code_of(line({"type": "add", "specs": many})) == "limit"
    name = "x" * 1000
    assert code_of(line({"type": "hello", "version": 1, "client": name})) == "too-large"


def test_error_messages_say_what_is_allowed() -> None:
    with pytest.raises(ProtocolError, match="allowed are hello, add, remove"):
        parse_request(b'{"type": "exec"}')
    with pytest.raises(ProtocolError, match="add has no field 'code': allowed are id, specs"):
        parse_request(b'{"type": "add", "specs": ["p json:loads"], "code": "x"}')
    long_type = "t" * 500
    with pytest.raises(ProtocolError) as info:
        parse_request(line({"type": long_type}))
    assert len(str(info.value)) < 300  # a hostile name is not echoed whole


def test_every_request_type_has_a_schema_and_specs_are_only_strings() -> None:
    assert set(REQUESTS) == {
        "hello", "add", "remove", "enable", "disable", "list", "status", "ping", "detach",
    }  # fmt: skip
    assert REQUESTS["add"]["specs"].kind == "strs"


def test_request_id_of_bad_messages() -> None:
    assert request_id_of(b'{"type": "nope", "id": 12}') == 12
    assert request_id_of(b'{"id": -1}') is None
    assert request_id_of(b"{") is None
    assert request_id_of(b"[]") is None


def test_encode_is_one_strict_line() -> None:
    data = encode({"type": "events", "events": [{"x": float("nan"), "s": "é\n"}]})
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    back = json.loads(data)
    assert back["events"][0]["s"] == "é\n"
    assert back["events"][0]["x"] == "NaN"
    assert json.loads(encode(error("bad-json", "no", 3))) == {
        "type": "error", "re": 3, "code": "bad-json", "message": "no",
    }  # fmt: skip


def test_line_reader_splits_and_bounds() -> None:
    r = LineReader(10)
    assert r.feed(b"ab") == []
    assert r.feed(b"c\nde\n\nf") == [b"abc", b"de", b""]
    assert r.pending == 1
    assert r.feed(b"g" * 20) == [None]  # over the limit: reported once
    assert r.pending == 0
    assert r.feed(b"h" * 50) == []  # still the same line: skipped, not kept
    assert r.pending == 0
    assert r.feed(b"hh\nok\n") == [b"ok"]
    assert r.feed(b"0123456789\n") == [b"0123456789"]  # exactly the limit is fine
    assert r.feed(b"0123456789A\nz\n") == [None, b"z"]


@given(st.binary(max_size=2000), st.lists(st.integers(1, 50), max_size=40))
@settings(max_examples=200, deadline=None)
def test_line_reader_chunking_does_not_matter(data: bytes, cuts: list[int]) -> None:
    whole = LineReader(64).feed(data)
    r = LineReader(64)
    pieces: list[bytes | None] = []
    i = 0
    for n in cuts:
        pieces += r.feed(data[i : i + n])
        i += n
    pieces += r.feed(data[i:])
    assert pieces == whole


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_any_bytes_are_a_request_or_a_protocol_error(data: bytes) -> None:
    try:
        req = parse_request(data)
    except ProtocolError as exc:
        assert exc.code in ("bad-json", "bad-message", "unknown-type", "too-large", "limit")
    else:
        assert req.type in REQUESTS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.sampled_from([*REQUESTS, "other"]),
    st.dictionaries(
        st.sampled_from(["id", "version", "client", "specs", "handles", "x"]), json_values
    ),
)
@settings(max_examples=200, deadline=None)
def test_any_json_object_is_a_request_or_a_protocol_error(
    rtype: str, fields: dict[str, object]
) -> None:
    data = json.dumps({"type": rtype, **fields}).encode()
    try:
        req = parse_request(data)
    except ProtocolError:
        return
    assert req.type == rtype
    for name, value in req.fields.items():
        assert name in REQUESTS[rtype]
        if name == "specs":
            assert all(isinstance(s, str) for s in value)
        if name == "handles":
            assert all(isinstance(h, int) and not isinstance(h, bool) for h in value)
