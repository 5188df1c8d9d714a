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
        (``retval``, ``exception``, ``duration_ns``, ``is_async``) only for returns."""
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
        return out
