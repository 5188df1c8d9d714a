"""The plain, detached record of one probe hit, handed from the engine to output."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

ENTRY = "p"
RETURN = "r"

_OFFSET = re.compile(r"\+\d+$")
_REL_LINE = re.compile(r"(.+:.+):\d+$")


@functools.lru_cache(maxsize=4096)
def function_of(probe: str) -> str:
    """The ``module:qualname`` a probe text names (bpftrace's probefunc): ``json:loads+0``
    and ``json:loads:3`` are ``json:loads``; a module line (``json:12``) stays as it is."""
    head = _OFFSET.sub("", probe)
    m = _REL_LINE.fullmatch(head)
    return m.group(1) if m is not None else head


@dataclass(frozen=True, slots=True)
class Event:
    """One probe hit as plain data, safe to queue and render on any thread later.

    It never holds a live frame or a user object: ``args``, ``retval`` are values the
    engine captured already (None/bool/int/float/str/list/dict). The producer hands
    ``args`` over: it must not mutate the mapping afterwards. Not hashable (``args``).
    """

    event: str
    group: str
    kind: str
    probe: str
    location: str
    time_ns: int
    pid: int
    thread_id: int
    thread_name: str
    args: Mapping[str, object]
    retval: object = None
    exception: str | None = None
    duration_ns: int | None = None
    #: For a return, its site in probe syntax (``module:qualname:line`` of the caller), so
    #: text lines name both ends alike; ``location`` keeps the caller's path:line.
    site: str = ""
    #: The probed code is a generator, coroutine or async generator: a return event's
    #: activation spans suspensions, so it need not nest with other calls on its thread.
    is_async: bool = False
    #: ``--otlp`` only: a return's place among the probed activations, ``(its number, the
    #: enclosing activation's or 0, its root's, the program's OpenTelemetry trace id and span
    #: id the root had as parent, or 0, 0)`` (``pyprobes.tracer.activations``).
    activation: tuple[int, int, int, int, int] | None = None

    @property
    def is_return(self) -> bool:
        """True for a return event (kind ``r``)."""
        return self.kind == RETURN

    def to_json_dict(self) -> dict[str, object]:
        """The record as the JSON Lines output (and the attach protocol) shows it; return fields
        (``retval``, ``exception``, ``duration_ns``, ``is_async``) only for returns, and
        ``activation`` only when the event has one (``--otlp``, ``activation_json``)."""
        out: dict[str, object] = {
            "event": self.event,
            "group": self.group,
            "kind": self.kind,
            "probe": self.probe,
            "location": self.location,
            "time_ns": self.time_ns,
            "pid": self.pid,
            "thread_id": self.thread_id,
            "thread_name": self.thread_name,
            "args": dict(self.args),
        }
        if self.kind == RETURN:
            out["retval"] = self.retval
            out["exception"] = self.exception
            out["duration_ns"] = self.duration_ns
            out["site"] = self.site
            out["is_async"] = self.is_async
        if self.activation is not None:
            out["activation"] = activation_json(self.activation)
        return out


def activation_json(link: tuple[int, int, int, int, int]) -> list[object]:
    """An activation link as JSON that any reader keeps exact: the three activation numbers as
    ints, the program's trace id and span id (128 and 64 bits, past a double's 53) as lowercase
    hex strings, ``""`` for none."""
    n, parent, root, trace_id, span_id = link
    return [
        n,
        parent,
        root,
        f"{trace_id:032x}" if trace_id else "",
        f"{span_id:016x}" if span_id else "",
    ]


_HEX = re.compile(r"[0-9a-f]{1,32}")


def activation_from_json(value: object) -> tuple[int, int, int, int, int] | None:
    """The link ``activation_json`` wrote; ValueError for anything else."""
    if not isinstance(value, list) or len(value) != 5:
        raise ValueError("an activation is a list of 5 items")
    n, parent, root, trace_hex, span_hex = value
    for v in (n, parent, root):
        if type(v) is not int or not 0 <= v < 1 << 63:
            raise ValueError("activation numbers are non-negative ints")
    ids = []
    for text, digits in ((trace_hex, 32), (span_hex, 16)):
        if not isinstance(text, str) or (text and (len(text) > digits or not _HEX.fullmatch(text))):
            raise ValueError("activation ids are hex strings")
        ids.append(int(text, 16) if text else 0)
    if n == 0 or root == 0:
        raise ValueError("activation numbers start at 1")
    return n, parent, root, ids[0], ids[1]
