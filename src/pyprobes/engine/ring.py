"""Event records of probe programs: the pure-Python core's ring, the reference for the C one.

A program made with a ring writes one record per hit that passes its filter (see
``engine.program``); the reader takes them in batches. A record is a tuple
``(probe, kind, time_ns, thread_id, thread_name, values, retval, exception, duration_ns,
location, site, is_async, link)``: what ``tracer.hits.HitRecorder`` puts in an ``Event``, less what
is the same for every hit of a probe. Values are rendered by the ring's ``render`` (the
capture rules, given by the layer above) at the hit, so no object of the program is kept.
``link`` is what a return's instance holds in ``ri.data[link_key]`` for a ring given a
``link_key`` (``--otlp``'s activation link, set by an entry handler), else None.
A full ring counts the record lost for its probe. The C core's ``_speedups.Ring`` gives the
same records and also renders them as JSON Lines (``take_json``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Final

Record = tuple[
    int,
    str,
    int,
    int,
    str,
    tuple[object, ...],
    object,
    "str | None",
    "int | None",
    str,
    str,
    bool,
    object,
]
#: The most values one record holds; a probe that fetches more takes the Python path.
MAX_FIELDS: Final = 8
GEN_FLAGS: Final = 0x20 | 0x80 | 0x100 | 0x200


class RecordRing:
    """A bounded buffer of records, written at hits and taken by one reader thread."""

    def __init__(
        self,
        capacity: int,
        render: Callable[[object], object],
        exception_text: Callable[[BaseException], object],
        wake: Callable[[], object] | None = None,
        link_key: str | None = None,
    ) -> None:
        if not 1 <= capacity <= 1 << 24:
            raise ValueError(f"a ring holds 1 to {1 << 24} records, not {capacity}")
        if link_key is not None and type(link_key) is not str:
            raise TypeError("a ring's link_key is a str, or None")
        self.link_key = link_key
        self.capacity = capacity
        self.render = render
        self.exception_text = exception_text
        self._wake = wake
        self._woken = False
        self._recs: list[Record] = []
        self._lost: list[int] = []

    @property
    def pending(self) -> int:
        """Records written and not yet taken."""
        return len(self._recs)

    def add_probe(self) -> int:
        """A new probe id: its records and losses are told apart by it."""
        self._lost.append(0)
        return len(self._lost) - 1

    def full(self, probe: int) -> bool:
        """True (and the record counted lost) when no record fits."""
        if len(self._recs) < self.capacity:
            return False
        self._lost[probe] += 1
        return True

    def push(self, rec: Record) -> None:
        """Append a record (the hit checked ``full`` first; a race may lose it, counted)."""
        if len(self._recs) >= self.capacity:
            self._lost[rec[0]] += 1
            return
        self._recs.append(rec)
        if not self._woken and self._wake is not None and len(self._recs) >= self.capacity // 4:
            self._woken = True
            try:
                self._wake()
            except Exception:
                pass

    def take(self) -> tuple[list[Record], dict[int, int]]:
        """(records, {probe: lost}) since the last take; the ring starts over."""
        recs, self._recs = self._recs, []
        self._woken = False
        lost = {i: n for i, n in enumerate(self._lost) if n}
        for i in lost:
            self._lost[i] = 0
        return recs, lost

    def clear_after_fork(self) -> None:
        """Drop the records a forked child inherited (they are the parent's to write)."""
        self._recs = []
        self._lost = [0] * len(self._lost)


def value_of(ring: RecordRing, value: object) -> object:
    """A value as a record holds it: what the capture rules render, ``(fault)`` if that fails."""
    try:
        return ring.render(value)
    except Exception:
        return "(fault)"


def thread_native_id() -> int:
    """The probed thread's native id, as events carry it."""
    return threading.get_native_id()


def entry_location(code: CodeType, lineno: int | None) -> str:
    """An entry's ``location``: the probed code's file and line."""
    return f"{code.co_filename}:{lineno}"


def caller_places(frame: FrameType | None) -> tuple[str, str]:
    """A return's ``location`` and ``site`` from the caller's frame (no code of it runs)."""
    if frame is None:
        return "?", "?"
    name = dict.get(frame.f_globals, "__name__")
    module = name if type(name) is str else "?"
    line = frame.f_lineno
    return f"{frame.f_code.co_filename}:{line}", f"{module}:{frame.f_code.co_qualname}:{line}"
