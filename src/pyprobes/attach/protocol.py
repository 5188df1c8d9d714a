"""The attach protocol: JSON lines over a Unix socket, validated, bounded, versioned.

Every message is one JSON object on one line (UTF-8, ``\\n``-terminated) with a ``type``.
The client speaks first:

==========  ====================================================  ===========================
client      fields (``id``: optional int echoed back as ``re``)   agent's answer
==========  ====================================================  ===========================
hello       ``version`` (int), ``client`` (str, optional)         ``welcome`` or error+close
add         ``specs``: 1-64 probe specs (str) of the probe        ``ok`` with ``probes``:
            language, armed all or none; ``aggregate``            one entry per spec
            (optional: ``hist``, ``by``, ``stats`` field names,
            ``lhist`` [field, min, max, step], ``count`` bool,
            ``every`` seconds): aggregate in the agent, no events;
            ``spans`` (optional bool, not with ``aggregate``):
            events on the Python path, each return's carrying
            ``activation`` (for spans)
remove      ``handles``: ints (from ``add``), all or none          ``ok`` with ``handles``
enable      ``handles``                                           ``ok`` with ``handles``
disable     ``handles``                                           ``ok`` with ``handles``
list        (nothing)                                             ``ok`` with ``probes`` (the
                                                                  process's listing), ``core``,
                                                                  ``enabled``, ``tool_id``
status      (nothing)                                             ``ok`` with this client's
                                                                  ``probes`` and ``lost``
ping        (nothing)                                             ``ok``
detach      (nothing)                                             queued events, then
                                                                  ``detached`` with ``summary``
                                                                  and ``lost``; then close
==========  ====================================================  ===========================

``welcome`` carries ``version``, ``pid``, ``uid``, ``python``, ``implementation``,
``executable``, ``argv`` (bounded), ``pyprobes`` (its version), ``client`` (this client's
number), ``clients`` (how many others are connected) and ``probes`` (registered in the
process). Each ``add`` entry has ``handle``, ``spec`` (canonical text), ``event``,
``enabled``, ``probes`` (engine probes placed) and ``pending``. ``list`` entries are the
engine's listing records (``address``, ``kind``, ``symbol``, ``offset``, ``line``,
``module``, ``flags``, ``hits``, ``misses``, ``faults``, ``where``) with ``owner``
(``client``, ``handle``, ``event``) or null for probes the program registered itself.
``detached``'s ``summary`` rows have ``event``, ``hits``, ``misses``, ``lost`` and
``filtered`` (hits the spec's filter turned away; absent from an older agent).

With ``spans: true`` (``pyprobes attach --otlp``) every return event of the specs (recorded
by a probe program or made on the Python path) has ``activation``: ``[n, parent, root, trace,
span]``, its activation's number, the enclosing probed activation's (0 for none), its root's
(numbered per client, across all its ``spans`` specs), and for a root the program's active
OpenTelemetry span it ran under as 32 and 16 lowercase hex digits (``""`` for none;
``output.records.activation_json``). The client makes the spans. An agent older than the
field refuses such an ``add`` (``bad-message``, "add has no field 'spans'"), placing nothing.

The agent also sends, unasked: ``events`` (``events``: a list of event records, as the JSON
Lines output shows them), ``lost`` (``total`` and ``by_event``: events dropped for this
client so far, cumulative), ``aggregates`` (``aggregates``: what the specs added with
``aggregate`` gathered since the last one, per event, as ``output.aggregate_data`` writes
it; the hits ran as probe programs in the core where they can), ``counts`` (``summary``:
the rows ``detached`` will carry, so far, sent each round they changed; absent from an older
agent) and ``bye`` (``reason``:
the agent is stopping, or lets this idle client go; the connection closes after it).

Errors are ``{"type": "error", "re": ID or null, "code": CODE, "message": TEXT}``; a message
that gets one changed nothing. Codes: ``bad-json``, ``too-large``, ``bad-message``,
``unknown-type``, ``handshake``, ``version``, ``bad-spec``, ``probe-error``,
``no-such-probe``, ``limit``, ``permission``, ``internal``.

Limits (client to agent): a line is at most ``MAX_LINE`` bytes, an ``add`` at most
``MAX_SPECS_PER_MESSAGE`` specs of ``MAX_SPEC_CHARS`` characters, a client at most
``MAX_SPECS_PER_CLIENT`` specs and ``MAX_PROBES_PER_CLIENT`` engine probes (wildcards place
many), an agent ``MAX_CLIENTS`` clients. The agent also refuses (``limit``, nothing placed)
an ``add`` whose specs match more functions than it allows at once (2,000 by default,
``PYPROBES_AGENT_MAX_FUNCTIONS`` in the target), and lets a client go (a ``bye``) once it has
held no probes and sent no request for 60 s (``PYPROBES_AGENT_IDLE_TIMEOUT``), so idle
clients cannot hold every slot. Specs are data: they are parsed by the probe language's
parser and nothing a client sends is ever executed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyprobes.attach.errors import ProtocolError

PROTOCOL_VERSION = 1

MAX_LINE = 64 * 1024
MAX_SPECS_PER_MESSAGE = 64
MAX_SPEC_CHARS = 4096
MAX_SPECS_PER_CLIENT = 256
MAX_PROBES_PER_CLIENT = 10_000
MAX_HANDLES_PER_MESSAGE = MAX_SPECS_PER_CLIENT
MAX_CLIENTS = 16
MAX_CLIENT_NAME = 200
MAX_ID = 2**53 - 1
#: Lines from the agent (event batches, listings) may be longer; the client's bound.
MAX_AGENT_LINE = 16 * 1024 * 1024
HANDSHAKE_TIMEOUT = 10.0

# error codes
BAD_JSON = "bad-json"
TOO_LARGE = "too-large"
BAD_MESSAGE = "bad-message"
UNKNOWN_TYPE = "unknown-type"
HANDSHAKE = "handshake"
VERSION = "version"
BAD_SPEC = "bad-spec"
PROBE_ERROR = "probe-error"
NO_SUCH_PROBE = "no-such-probe"
LIMIT = "limit"
PERMISSION = "permission"
INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class _Field:
    kind: str  # "int", "bool", "str", "strs", "ints", "aggregate"
    required: bool = True
    max_items: int = 0
    max_chars: int = 0


#: Request type -> its fields (besides ``type`` and ``id``).
REQUESTS: dict[str, dict[str, _Field]] = {
    "hello": {
        "version": _Field("int"),
        "client": _Field("str", required=False, max_chars=MAX_CLIENT_NAME),
    },
    "add": {
        "specs": _Field("strs", max_items=MAX_SPECS_PER_MESSAGE, max_chars=MAX_SPEC_CHARS),
        "aggregate": _Field("aggregate", required=False, max_chars=MAX_SPEC_CHARS),
        "spans": _Field("bool", required=False),
    },
    "remove": {"handles": _Field("ints", max_items=MAX_HANDLES_PER_MESSAGE)},
    "enable": {"handles": _Field("ints", max_items=MAX_HANDLES_PER_MESSAGE)},
    "disable": {"handles": _Field("ints", max_items=MAX_HANDLES_PER_MESSAGE)},
    "list": {},
    "status": {},
    "ping": {},
    "detach": {},
}


@dataclass(frozen=True, slots=True)
class Request:
    """A validated client message."""

    type: str
    id: int | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def loads_line(line: bytes) -> object:
    """Decode one line as strict JSON; ProtocolError(bad-json/too-large) otherwise."""
    if len(line) > MAX_LINE:
        raise ProtocolError(TOO_LARGE, f"message longer than {MAX_LINE} bytes")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(BAD_JSON, "message is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ProtocolError(BAD_JSON, f"message is not valid JSON: {detail}") from None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_field(rtype: str, name: str, spec: _Field, value: object) -> None:
    where = f"{rtype}.{name}"
    if spec.kind == "aggregate":
        _check_aggregate(where, spec.max_chars, value)
    elif spec.kind == "bool":
        if not isinstance(value, bool):
            raise ProtocolError(BAD_MESSAGE, f"{where} must be true or false")
    elif spec.kind == "int":
        if not isinstance(value, int) or isinstance(value, bool) or not -MAX_ID <= value <= MAX_ID:
            raise ProtocolError(BAD_MESSAGE, f"{where} must be an integer")
    elif spec.kind == "str":
        if not isinstance(value, str):
            raise ProtocolError(BAD_MESSAGE, f"{where} must be a string")
        if spec.max_chars and len(value) > spec.max_chars:
            raise ProtocolError(TOO_LARGE, f"{where} is longer than {spec.max_chars} characters")
    else:
        item_kind = "string" if spec.kind == "strs" else "integer"
        if not isinstance(value, list):
            raise ProtocolError(BAD_MESSAGE, f"{where} must be a list of {item_kind}s")
        if not value:
            raise ProtocolError(BAD_MESSAGE, f"{where} must not be empty")
        if len(value) > spec.max_items:
            raise ProtocolError(LIMIT, f"{where} holds more than {spec.max_items} items")
        for i, item in enumerate(value):
            if spec.kind == "strs":
                if not isinstance(item, str):
                    raise ProtocolError(BAD_MESSAGE, f"{where}[{i}] must be a string")
                if len(item) > spec.max_chars:
                    raise ProtocolError(
                        TOO_LARGE, f"{where}[{i}] is longer than {spec.max_chars} characters"
                    )
            elif not _is_int(item) or not 0 <= item <= MAX_ID:
                raise ProtocolError(BAD_MESSAGE, f"{where}[{i}] must be a non-negative integer")


#: The fields of ``add.aggregate``: what the agent aggregates instead of streaming events.
AGGREGATE_FIELDS = ("hist", "count", "by", "stats", "lhist", "every")
#: ``add.aggregate.every``: seconds between two ``aggregates`` messages (default 0.5).
AGGREGATE_EVERY = (0.05, 60.0)


def _check_aggregate(where: str, max_chars: int, value: object) -> None:
    if not isinstance(value, dict):
        raise ProtocolError(BAD_MESSAGE, f"{where} must be an object")
    unknown = sorted(str(k)[:40] for k in value if k not in AGGREGATE_FIELDS)
    if unknown:
        raise ProtocolError(
            BAD_MESSAGE,
            f"{where} has unknown fields {unknown}: allowed are {', '.join(AGGREGATE_FIELDS)}",
        )
    every = value.get("every", AGGREGATE_EVERY[0])
    low, high = AGGREGATE_EVERY
    if type(every) not in (int, float) or not low <= every <= high:
        raise ProtocolError(BAD_MESSAGE, f"{where}.every must be {low} to {high} seconds")
    if not isinstance(value.get("count", False), bool):
        raise ProtocolError(BAD_MESSAGE, f"{where}.count must be true or false")
    for name in ("hist", "by", "stats"):
        v = value.get(name)
        if v is not None and (not isinstance(v, str) or not 0 < len(v) <= max_chars):
            raise ProtocolError(BAD_MESSAGE, f"{where}.{name} must be a field name or null")
    lhist = value.get("lhist")
    if lhist is not None:
        from pyprobes.output.histogram import check_linear

        ok = type(lhist) is list and len(lhist) == 4 and isinstance(lhist[0], str)
        ok = ok and 0 < len(lhist[0]) <= max_chars
        try:
            ok = ok and bool(check_linear(*lhist[1:]))
        except ValueError:
            ok = False
        if not ok or value.get("hist") is not None:
            raise ProtocolError(
                BAD_MESSAGE,
                f"{where}.lhist must be [field, min, max, step] (ints: min < max, step > 0,"
                " at most 1000 buckets), without hist",
            )


def parse_request(line: bytes) -> Request:
    """Decode and validate one client line; ProtocolError says what is wrong and allowed."""
    obj = loads_line(line)
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_MESSAGE, 'a message is a JSON object with a "type"')
    rtype = obj.get("type")
    if not isinstance(rtype, str):
        raise ProtocolError(BAD_MESSAGE, 'a message needs a string "type"')
    schema = REQUESTS.get(rtype)
    if schema is None:
        allowed = ", ".join(REQUESTS)
        shown = rtype if len(rtype) <= 40 else rtype[:37] + "..."
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {shown!r}: allowed are {allowed}")
    rid = obj.get("id")
    if rid is not None and (not _is_int(rid) or not 0 <= rid <= MAX_ID):
        raise ProtocolError(BAD_MESSAGE, "id must be a non-negative integer")
    unknown = sorted(k for k in obj if k not in schema and k not in ("type", "id"))
    if unknown:
        allowed = ", ".join(["id", *schema]) or "id"
        name = unknown[0] if len(unknown[0]) <= 40 else unknown[0][:37] + "..."
        raise ProtocolError(BAD_MESSAGE, f"{rtype} has no field {name!r}: allowed are {allowed}")
    fields: dict[str, Any] = {}
    for name, spec in schema.items():
        if name not in obj:
            if spec.required:
                raise ProtocolError(BAD_MESSAGE, f"{rtype} needs the field {name!r}")
            continue
        _check_field(rtype, name, spec, obj[name])
        fields[name] = obj[name]
    if fields.get("spans") is True and "aggregate" in fields:
        raise ProtocolError(
            BAD_MESSAGE,
            "add.spans streams events and add.aggregate sends none: ask for one of them",
        )
    return Request(rtype, rid, fields)


def request_id_of(line: bytes) -> int | None:
    """Best effort: the id of a message that failed validation, to address the error reply."""
    try:
        obj = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except Exception:
        return None
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= MAX_ID:
            return rid
    return None


def encode(message: Mapping[str, object]) -> bytes:
    """One message as a strict JSON line; never raises (odd values go through the sanitizer)."""
    try:
        text = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError):
        from pyprobes.output.sanitize import dumps

        text = dumps(message)
    return (text + "\n").encode("utf-8", "backslashreplace")


def error(code: str, message: str, re: int | None = None) -> dict[str, object]:
    """An error reply."""
    return {"type": "error", "re": re, "code": code, "message": message}


def hello(client: str) -> dict[str, object]:
    """The client's first message."""
    return {"type": "hello", "version": PROTOCOL_VERSION, "client": client[:MAX_CLIENT_NAME]}


class LineReader:
    """Splits a byte stream into lines of at most ``limit`` bytes.

    ``feed()`` returns complete lines (without the newline); a line longer than the limit is
    returned once as None and its remaining bytes, up to its newline, are skipped without
    being kept, so memory stays bounded whatever the peer sends.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._skipping = False

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | None]:
        """The lines completed by ``data`` (None for each line over the limit)."""
        out: list[bytes | None] = []
        start = 0
        while start < len(data):
            nl = data.find(b"\n", start)
            end = len(data) if nl < 0 else nl
            chunk = data[start:end]
            if self._skipping:
                if nl >= 0:
                    self._skipping = False
            elif len(self._buf) + len(chunk) > self.limit:
                self._buf.clear()
                out.append(None)
                self._skipping = nl < 0
            elif nl >= 0:
                self._buf += chunk
                out.append(bytes(self._buf))
                self._buf.clear()
            else:
                self._buf += chunk
            if nl < 0:
                break
            start = nl + 1
        return out


__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MAX_AGENT_LINE",
    "MAX_CLIENTS",
    "MAX_LINE",
    "MAX_PROBES_PER_CLIENT",
    "MAX_SPECS_PER_CLIENT",
    "MAX_SPECS_PER_MESSAGE",
    "MAX_SPEC_CHARS",
    "PROTOCOL_VERSION",
    "REQUESTS",
    "LineReader",
    "Request",
    "encode",
    "error",
    "hello",
    "loads_line",
    "parse_request",
    "request_id_of",
]
