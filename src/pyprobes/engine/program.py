"""Probe programs: what a probe does per hit as plain data (a filter, a key, a histogram).

A ``Program`` stands in for a Python handler when all a probe does is aggregate, as an eBPF
program run by bpftrace does: the core runs it at the hit with no Python call (the C core in
C, the Python core with ``ProgramHandler`` below, the readable reference), into a bounded
per-probe store that ``take()`` reads and resets. Both cores give the same results for the
same hits; ``tests/engine/test_program.py`` holds them equal.

Per hit, in this order:

1. ``filter`` false: counted in ``filtered``, nothing else happens.
2. ``key`` read (``None``: one slot for every hit). A key that is not an exact ``str``,
   ``int``, ``bool``, ``float`` or ``None`` becomes ``(type name, key_of(value))``, where
   ``key_of`` is the handler's own function (never the program's code) and returns a str;
   a value that cannot be read (or that key_of fails on) is ``FAULT_KEY``; every NaN is one.
3. ``hist`` (if any) read: an int (not a bool) or finite float in ``[0, 2**63)`` counts.
4. the key's slot (a new key beyond ``max_keys`` is counted in ``overflow`` and the hit
   dropped): its count goes up, and the hist value is counted in log2 buckets after
   integer division by each of ``hist_scales`` (bucket ``(v // d).bit_length() or 1``);
   a hist value that does not count is counted in ``skipped``. With ``lhist = (lo, hi,
   step)`` the histogram is linear instead: an int (not a bool) or the floor of a finite
   float, in ``[-2**63, 2**63)``, counts in one bucket dict: 0 below ``lo``, ``1 + (v -
   lo) // step`` up to ``hi``, ``(hi - lo) // step + 1`` from ``hi`` up (bpftrace's
   lhist); ``total`` is the sum of the values counted (``max`` is not kept).
5. ``stats`` (if any) read: an int (not a bool) of at most ``STATS_INT_BITS`` bits or a
   finite float goes into the program's one ``StatsParts`` (of every key, as
   ``output.Stats`` keeps one per event): count, sum (exact for ints, float arithmetic in
   the order of the hits otherwise), min, max, and the DDSketch bucket ``ceil(log(|v|) /
   log(g))`` of its sign (zeros apart), g = (1 + a) / (1 - a) for ``stats_accuracy`` a.
   Anything else is counted in its ``skipped``.

Values (``Var``) are read without running the program's code: ``$duration`` (ns, return
probes), ``$retval``, ``$exception`` (the exception, None if it returned), ``$thread`` (the
thread's name, as ``threads.thread_name``) and locals by name, each followed by a path of
attribute and literal subscript steps read as ``engine.reads`` reads them (a step it refuses
or that fails: the value cannot be read). Filters (``Cmp``, ``AllOf``, ``AnyOf``, ``Not``,
``Truth``) behave as ``lang.filter`` over captured values: a value that cannot be read is the
string ``(fault)``; a builtin container or bytes equals no constant and has no order; any
other object (never touched) is only ``is``/``is not`` None, every other comparison with it
is a fault; an order that cannot be made (``None < 1``) or the truth of a non-scalar is a
fault, and a fault makes the whole filter false (parts are taken in order, ``and``/``or``
stop early).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Final, Protocol, Union

from pyprobes.engine.context import KretprobeInstance, ProbeContext, read_local
from pyprobes.engine.reads import get_attr, get_item
from pyprobes.engine.ring import (
    GEN_FLAGS,
    RecordRing,
    caller_places,
    entry_location,
    thread_native_id,
    value_of,
)
from pyprobes.engine.threads import thread_name

#: What a key that cannot be read (an unbound local, a probe with no return value) becomes.
FAULT_KEY: Final = "(fault)"
HIST_LIMIT: Final = 1 << 63
#: The widest int stats take: what the capture rules render as an int (wider: hex text).
STATS_INT_BITS: Final = 768
NBUCKETS: Final = 65
#: The most buckets a linear histogram has between lo and hi.
LHIST_BUCKETS: Final = 1000
#: The kinds of ``Var``.
VAR_KINDS: Final = ("duration", "retval", "exception", "thread", "local")
CMP_OPS: Final = ("==", "!=", "<", "<=", ">", ">=", "in", "not in", "is", "is not")
SCALARS: Final = (str, int, bool, float, type(None))
#: Values a filter compares by their rendering (lang.filter): equal to no scalar constant.
PLAIN: Final = (bytes, tuple, list, dict, set, frozenset)
#: Steps of a Var's path: ("attr", name) or ("item", literal key).
STEP_KINDS: Final = ("attr", "item")
Step = tuple[str, object]


@dataclass(frozen=True, slots=True)
class Var:
    """A value read at the hit: ``kind`` is one of VAR_KINDS, ``name`` the local's name,
    then ``path``: ``("attr", name)`` and ``("item", key)`` steps (``x.a[0]``)."""

    kind: str
    name: str = ""
    path: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in VAR_KINDS:
            raise ValueError(f"a program reads {', '.join(VAR_KINDS)}, not {self.kind!r}")
        if (self.kind == "local") != bool(self.name):
            raise ValueError("a local Var needs a name, and only a local one")
        for step in self.path:
            ok = type(step) is tuple and len(step) == 2 and step[0] in STEP_KINDS
            if ok and step[0] == "attr":
                ok = type(step[1]) is str
            elif ok:
                ok = type(step[1]) in SCALARS
            if not ok:
                raise ValueError(f"a step is ('attr', name) or ('item', scalar), not {step!r}")


Const = Union[str, int, bool, float, None]  # noqa: UP007 (a runtime alias)


@dataclass(frozen=True, slots=True)
class Cmp:
    """``var OP const``; for ``in``/``not in`` the constant is a tuple of scalars."""

    op: str
    var: Var
    const: Const | tuple[Const, ...]

    def __post_init__(self) -> None:
        if self.op not in CMP_OPS:
            raise ValueError(f"a comparison is one of {', '.join(CMP_OPS)}, not {self.op!r}")
        consts = self.const if self.op in ("in", "not in") else (self.const,)
        if not isinstance(consts, tuple) or not all(
            type(c) in SCALARS for c in consts
        ):  # exact types: a subclass could run code in __eq__
            raise ValueError(f"{self.op} compares with scalar constants, not {self.const!r}")
        if self.op in ("is", "is not") and self.const is not None:
            raise ValueError(f"{self.op} compares with None only, not {self.const!r}")


@dataclass(frozen=True, slots=True)
class Truth:
    """``var`` used as a condition (``if x``): the truth of an exact scalar."""

    var: Var


@dataclass(frozen=True, slots=True)
class AllOf:
    """Every part holds (``and``)."""

    parts: tuple[Cond, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Some part holds (``or``)."""

    parts: tuple[Cond, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """The part does not hold."""

    part: Cond


Cond = Union[Cmp, Truth, AllOf, AnyOf, Not]  # noqa: UP007 (a runtime alias)


@dataclass(frozen=True, slots=True)
class Program:
    """A filter, a key and a histogram: what an aggregating probe does per hit."""

    filter: Cond | None = None
    key: Var | None = None
    hist: Var | None = None
    hist_scales: tuple[int, ...] = (1,)
    max_keys: int = 4096
    #: What an event record of a hit holds (the fetch args, in order), when the handler is
    #: given a ring (``engine.ring``): each hit that passes the filter writes one record.
    fields: tuple[Var, ...] = ()
    #: The value whose count, sum, min, max and quantile sketch are kept (``--stats``).
    stats: Var | None = None
    stats_accuracy: float = 0.01
    #: ``(lo, hi, step)``: ``hist`` is counted in linear buckets (``--lhist``), not log2.
    lhist: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.lhist is not None:
            ok = type(self.lhist) is tuple and len(self.lhist) == 3
            ok = ok and all(type(v) is int for v in self.lhist)
            if not ok or not (
                self.lhist[1] > self.lhist[0]
                and self.lhist[2] > 0
                and (self.lhist[1] - self.lhist[0]) % self.lhist[2] == 0
                and (self.lhist[1] - self.lhist[0]) // self.lhist[2] <= LHIST_BUCKETS
                and max(abs(self.lhist[0]), abs(self.lhist[1])) <= 1 << 62
            ):
                raise ValueError(
                    "lhist is (lo, hi, step): ints, lo < hi within +-2**62, step > 0 dividing"
                    f" hi - lo into at most {LHIST_BUCKETS} buckets; not {self.lhist!r}"
                )
        if len(self.fields) > 8:
            raise ValueError(f"a record holds at most 8 values, not {len(self.fields)}")
        if not self.hist_scales or not all(type(d) is int and d > 0 for d in self.hist_scales):
            raise ValueError(f"hist_scales are positive ints, not {self.hist_scales!r}")
        if type(self.max_keys) is not int or self.max_keys < 1:
            raise ValueError(f"max_keys is a positive int, not {self.max_keys!r}")
        if type(self.stats_accuracy) is not float or not 0 < self.stats_accuracy < 1:
            raise ValueError(f"stats_accuracy is a float in (0, 1), not {self.stats_accuracy!r}")

    def vars(self) -> set[Var]:
        """Every value the program reads."""
        out: set[Var] = {v for v in (self.key, self.hist, self.stats) if v is not None}
        out.update(self.fields)
        todo: list[Cond] = [self.filter] if self.filter is not None else []
        while todo:
            c = todo.pop()
            if isinstance(c, Cmp | Truth):
                out.add(c.var)
            elif isinstance(c, Not):
                todo.append(c.part)
            else:
                todo.extend(c.parts)
        return out


@dataclass(slots=True)
class Slot:
    """What one key gathered: hits, and the histogram of ``hist`` (one bucket dict per scale)."""

    count: int = 0
    buckets: tuple[dict[int, int], ...] = ()
    total: int = 0
    max: int = 0
    skipped: int = 0


@dataclass(slots=True)
class StatsParts:
    """What ``stats`` gathered: ``output.Stats``'s own fields (its sketch's buckets by index)."""

    count: int = 0
    sum: int | float = 0
    min: int | float | None = None
    max: int | float | None = None
    zeros: int = 0
    pos: dict[int, int] = field(default_factory=dict)
    neg: dict[int, int] = field(default_factory=dict)
    skipped: int = 0  # hits whose value was not a number stats take


@dataclass(slots=True)
class Results:
    """What a program gathered since the last take(): slots by key, and what it dropped."""

    slots: dict[object, Slot] = field(default_factory=dict)
    filtered: int = 0
    overflow: int = 0
    stats: StatsParts | None = None  # None: the program keeps no stats


KeyOf = Callable[[object], str]


class ProgramRunner(Protocol):
    """What ``program_handler`` gives, from either core: a handler with a store."""

    @property
    def program(self) -> Program: ...
    def take(self) -> Results: ...


def default_key_of(value: object) -> str:
    """How a key that is not a scalar is told apart when no key_of is given: not at all."""
    return ""


class _Unread:
    """A value that could not be read."""


UNREAD: Final = _Unread()


# --- the reference interpreter ------------------------------------------------------------------


_ORDER: Final[dict[str, Callable[[object, object], bool]]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,  # type: ignore[dict-item]
    "<=": operator.le,  # type: ignore[dict-item]
    ">": operator.gt,  # type: ignore[dict-item]
    ">=": operator.ge,  # type: ignore[dict-item]
}


#: A comparison that cannot be made: the whole filter is false (as a raise in lang.filter).
FAULT: Final = None


def _compare(op: str, value: object, const: object) -> bool | None:
    """True, False, or FAULT (an order between values that have none, or another object)."""
    if op in {"is", "is not"}:
        return (value is None) == (op == "is")
    if type(value) not in SCALARS:
        if type(value) not in PLAIN:
            return FAULT  # lang.filter compares only builtin values
        if op in {"==", "!=", "in", "not in"}:
            return op in {"!=", "not in"}  # never equal to a scalar constant
        return FAULT  # and no order with one
    if op in {"in", "not in"}:
        assert isinstance(const, tuple)
        found = any(value == c for c in const)
        return found if op == "in" else not found
    if op in {"==", "!="}:
        return bool(_ORDER[op](value, const))
    try:
        return bool(_ORDER[op](value, const))
    except TypeError:  # "a" < 1
        return FAULT


class ProgramHandler:
    """The pure-Python core's program runner: a handler object the core calls per hit.

    It is a kprobe's pre_handler or a kretprobe's handler. take() swaps the whole store in one
    assignment; a hit that another thread is in the middle of at that moment may still land
    in the store taken (and be lost to both). The C core's take() has no such window.
    """

    def __init__(
        self,
        program: Program,
        key_of: KeyOf | None = None,
        ring: RecordRing | None = None,
        probe: int = 0,
    ) -> None:
        self.program = program
        self.key_of = key_of or default_key_of
        self.ring = ring
        self.probe = probe
        self._log_gamma = math.log((1 + program.stats_accuracy) / (1 - program.stats_accuracy))
        self._results = self._fresh()

    def _fresh(self) -> Results:
        return Results(stats=StatsParts() if self.program.stats is not None else None)

    def take(self) -> Results:
        """What was gathered so far; the store starts over (``--interval``)."""
        taken, self._results = self._results, self._fresh()
        return taken

    def __call__(self, first: object, ctx: ProbeContext) -> None:
        """A kprobe's pre_handler ``(probe, ctx)`` or a kretprobe's handler ``(ri, ctx)``."""
        if isinstance(first, KretprobeInstance):
            self._hit(ctx, ctx.time_ns - first.entry_time_ns, first)
        else:
            self._hit(ctx, None, None)

    def _read(self, var: Var, ctx: ProbeContext, duration: int | None) -> object:
        kind = var.kind
        value: object
        if kind == "duration":
            return UNREAD if duration is None else duration
        if kind == "retval":  # None when it raised, as in a return event
            if duration is None:
                return UNREAD
            value = None if ctx.exception is not None else ctx.retval
        elif kind == "exception":
            value = ctx.exception
        elif kind == "thread":
            value = thread_name()
        else:
            frame: FrameType | None = ctx.frame
            if frame is None:
                return UNREAD
            try:
                value = read_local(frame, var.name)
            except KeyError:
                return UNREAD
        for step, arg in var.path:
            try:
                value = get_attr(value, arg) if step == "attr" else get_item(value, arg)  # type: ignore[arg-type]
            except Exception:  # refused, or failed: as lang.capture.fetch, a fault
                return UNREAD
        return value

    def _holds(self, c: Cond, ctx: ProbeContext, duration: int | None) -> bool | None:
        """True, False or FAULT; parts in order, stopping at the first that decides."""
        if isinstance(c, Cmp | Truth):
            value = self._read(c.var, ctx, duration)
            if value is UNREAD:
                value = FAULT_KEY  # what lang.capture makes of a value it cannot read
            if isinstance(c, Cmp):
                return _compare(c.op, value, c.const)
            return bool(value) if type(value) in SCALARS else FAULT
        if isinstance(c, Not):
            inner = self._holds(c.part, ctx, duration)
            return FAULT if inner is FAULT else not inner
        want = isinstance(c, AnyOf)  # the answer that ends the walk
        for part in c.parts:
            r = self._holds(part, ctx, duration)
            if r is FAULT or r is want:
                return r
        return not want

    def _key(self, ctx: ProbeContext, duration: int | None) -> object:
        assert self.program.key is not None
        key = self._read(self.program.key, ctx, duration)
        if key is UNREAD:
            return FAULT_KEY
        if type(key) not in SCALARS:
            try:
                text = self.key_of(key)
            except Exception:
                return FAULT_KEY
            return (type(key).__name__, text) if type(text) is str else FAULT_KEY
        if type(key) is float and math.isnan(key):
            return math.nan  # one key for every NaN
        return key

    def _hist_value(self, ctx: ProbeContext, duration: int | None) -> int | None:
        assert self.program.hist is not None
        raw = self._read(self.program.hist, ctx, duration)
        if type(raw) is int and 0 <= raw < HIST_LIMIT:
            return raw
        if type(raw) is float and math.isfinite(raw) and 0 <= raw < HIST_LIMIT:
            return int(raw)
        return None

    def _lhist_value(self, ctx: ProbeContext, duration: int | None) -> int | None:
        assert self.program.hist is not None
        raw = self._read(self.program.hist, ctx, duration)
        if type(raw) is float:
            if not math.isfinite(raw):
                return None
            raw = math.floor(raw)
        elif type(raw) is not int:
            return None
        assert isinstance(raw, int)
        return raw if -HIST_LIMIT <= raw < HIST_LIMIT else None

    def _add_stats(self, stats: StatsParts, ctx: ProbeContext, duration: int | None) -> None:
        """One value into the stats, as ``output.Stats.add`` adds it."""
        assert self.program.stats is not None
        v = self._read(self.program.stats, ctx, duration)
        if type(v) is int:
            ok = v.bit_length() <= STATS_INT_BITS
        else:
            ok = type(v) is float and math.isfinite(v)
        if not ok:
            stats.skipped += 1
            return
        assert isinstance(v, int | float)
        as_float = float(v)
        if as_float > 0:
            k = math.ceil(math.log(v) / self._log_gamma)
            stats.pos[k] = stats.pos.get(k, 0) + 1
        elif as_float < 0:
            k = math.ceil(math.log(-v) / self._log_gamma)
            stats.neg[k] = stats.neg.get(k, 0) + 1
        else:
            stats.zeros += 1
        stats.count += 1
        stats.sum += v
        if stats.min is None or v < stats.min:
            stats.min = v
        if stats.max is None or v > stats.max:
            stats.max = v

    def _record(
        self, ctx: ProbeContext, duration: int | None, ri: KretprobeInstance | None
    ) -> None:
        """One event record into the ring, as the C core's ring_push writes it."""
        ring = self.ring
        assert ring is not None
        if ring.full(self.probe):
            return
        time_ns = ctx.time_ns
        values = []
        for var in self.program.fields:
            raw = self._read(var, ctx, duration)
            values.append(FAULT_KEY if raw is UNREAD else value_of(ring, raw))
        code = ctx.code
        if duration is None:
            location, site = entry_location(code, ctx.lineno), ""
            retval, exc_text, is_async = None, None, False
        else:
            frame = ctx.frame
            location, site = caller_places(frame.f_back if frame is not None else None)
            exc = ctx.exception
            retval = None if exc is not None else value_of(ring, ctx.retval)
            exc_text = None
            if exc is not None:
                try:
                    exc_text = ring.exception_text(exc)
                except Exception:
                    exc_text = FAULT_KEY
            is_async = bool(code.co_flags & GEN_FLAGS)
        link = None
        if ring.link_key is not None and ri is not None:
            link = ri.data.get(ring.link_key)
        ring.push(
            (
                self.probe,
                "p" if duration is None else "r",
                time_ns,
                thread_native_id(),
                thread_name(),
                tuple(values),
                retval,
                exc_text,  # type: ignore[arg-type]
                duration,
                location,
                site,
                is_async,
                link,
            )
        )

    def _hit(self, ctx: ProbeContext, duration: int | None, ri: KretprobeInstance | None) -> None:
        prog = self.program
        res = self._results
        if prog.filter is not None and self._holds(prog.filter, ctx, duration) is not True:
            res.filtered += 1
            return
        if self.ring is not None:
            self._record(ctx, duration, ri)
        key = self._key(ctx, duration) if prog.key is not None else None
        value = None
        if prog.hist is not None:
            linear = prog.lhist is not None
            value = self._lhist_value(ctx, duration) if linear else self._hist_value(ctx, duration)
        if res.stats is not None:
            self._add_stats(res.stats, ctx, duration)
        slot = res.slots.get(key)
        if slot is None:
            if len(res.slots) >= prog.max_keys:
                res.overflow += 1
                return
            nscales = 0 if prog.hist is None else 1 if prog.lhist else len(prog.hist_scales)
            slot = res.slots[key] = Slot(buckets=tuple({} for _ in range(nscales)))
        slot.count += 1
        if prog.hist is None:
            return
        if value is None:
            slot.skipped += 1
            return
        if prog.lhist is not None:
            lo, hi, step = prog.lhist
            i = (
                0
                if value < lo
                else (hi - lo) // step + 1
                if value >= hi
                else 1 + (value - lo) // step
            )
            slot.buckets[0][i] = slot.buckets[0].get(i, 0) + 1
            slot.total += value
            return
        for d, buckets in zip(prog.hist_scales, slot.buckets, strict=True):
            i = (value // d).bit_length() or 1
            buckets[i] = buckets.get(i, 0) + 1
        slot.total += value
        slot.max = max(slot.max, value)


# --- what the C core is given, and gives back ------------------------------------------------

_VAR_INDEX: Final = {kind: i for i, kind in enumerate(VAR_KINDS)}
_OP_INDEX: Final = {op: i for i, op in enumerate(CMP_OPS)}
Lowered = tuple[object, ...]


def _lower_var(v: Var) -> tuple[int, str | None, tuple[tuple[int, object], ...]]:
    return (
        _VAR_INDEX[v.kind],
        v.name or None,
        tuple((STEP_KINDS.index(step), arg) for step, arg in v.path),
    )


def _lower_cond(c: Cond) -> Lowered:
    if isinstance(c, Cmp):
        return (0, _OP_INDEX[c.op], _lower_var(c.var), c.const)
    if isinstance(c, Truth):
        return (1, _lower_var(c.var))
    if isinstance(c, AllOf):
        return (2, tuple(_lower_cond(p) for p in c.parts))
    if isinstance(c, AnyOf):
        return (3, tuple(_lower_cond(p) for p in c.parts))
    return (4, _lower_cond(c.part))


def lower(program: Program) -> Lowered:
    """The program as nested tuples of ints, strs and constants (what a C core parses)."""
    return (
        None if program.filter is None else _lower_cond(program.filter),
        None if program.key is None else _lower_var(program.key),
        None if program.hist is None else _lower_var(program.hist),
        program.hist_scales,
        program.max_keys,
        tuple(_lower_var(v) for v in program.fields),
        None if program.stats is None else _lower_var(program.stats),
        program.stats_accuracy,
        program.lhist,
    )


RawSlot = tuple[object, int, tuple[dict[int, int], ...], int, int, int]


RawStats = tuple[
    int,
    int | float,
    int | float | None,
    int | float | None,
    int,
    dict[int, int],
    dict[int, int],
    int,
]


def results_from_raw(
    slots: list[RawSlot], filtered: int, overflow: int, stats: RawStats | None = None
) -> Results:
    """Results from a C core's rows ``(key, count, buckets, total, max, skipped)`` and its
    stats ``(count, sum, min, max, zeros, pos, neg, skipped)``."""
    out = Results(
        filtered=filtered, overflow=overflow, stats=None if stats is None else StatsParts(*stats)
    )
    for key, count, buckets, total, high, skipped in slots:
        out.slots[key] = Slot(count, buckets, total, high, skipped)
    return out
