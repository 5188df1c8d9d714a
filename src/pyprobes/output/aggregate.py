"""Aggregations of events: counts by key, and the per-event aggregates (the histograms of
``output.histogram``, the statistics of ``output.stats``) the Aggregator keeps; pure and
mergeable."""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from pyprobes.output.histogram import (
    LinearHistogram,
    Log2Histogram,
    check_linear,
    linear_value,
)
from pyprobes.output.records import RETURN, Event, function_of
from pyprobes.output.render_text import format_value
from pyprobes.output.sanitize import READABLE, dumps, safe_repr, terminal_safe
from pyprobes.output.stats import Stats
from pyprobes.output.units import format_duration

DURATION_FIELD = "$duration"
#: Per-key histograms copied per hold of the lock by Aggregator.snapshot().
SNAPSHOT_CHUNK = 256


# -- counts by key -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerKey:
    """A list or dict used as a key, held as its canonical (sorted-keys) JSON text."""

    json: str

    def __str__(self) -> str:
        return self.json


_NAN = float("nan")


def canonical_key(value: object) -> Hashable:
    """A hashable key for a captured value: containers become canonical JSON, NaNs one key."""
    if isinstance(value, float) and math.isnan(value):
        return _NAN  # NaN != NaN: one shared object makes every NaN the same dict key
    if isinstance(value, list | tuple | Mapping):
        return ContainerKey(dumps(value, separators=READABLE, sort_keys=True))
    try:
        hash(value)
    except Exception:
        return ContainerKey(safe_repr(value))
    return value


def key_text(key: Hashable) -> str:
    """How a key is shown: strings repr-quoted, containers as JSON; terminal-safe (the
    values come from the program)."""
    return terminal_safe(key.json if isinstance(key, ContainerKey) else format_value(key), None)


class CountBy:
    """Counts per key, most frequent first, as bpftrace's ``@[key]: count``; not thread-safe."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[Hashable, int] = {}

    def add(self, key: object, n: int = 1) -> None:
        """Count ``key`` (any captured value) ``n`` times."""
        k = canonical_key(key)
        self._counts[k] = self._counts.get(k, 0) + n

    def __getitem__(self, key: object) -> int:
        return self._counts.get(canonical_key(key), 0)

    def __len__(self) -> int:
        return len(self._counts)

    @property
    def total(self) -> int:
        """Sum of all counts."""
        return sum(self._counts.values())

    def most_common(self) -> list[tuple[Hashable, int]]:
        """``(key, count)`` by count descending, then by the key's text."""
        return sorted(self._counts.items(), key=lambda kv: (-kv[1], key_text(kv[0])))

    def copy(self) -> CountBy:
        """An independent copy."""
        new = CountBy()
        new._counts = dict(self._counts)
        return new

    def merge(self, other: CountBy) -> CountBy:
        """A new CountBy with the counts of both added; neither input changes."""
        new = self.copy()
        for k, n in other._counts.items():
            new._counts[k] = new._counts.get(k, 0) + n
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CountBy):
            return NotImplemented
        return self._counts == other._counts

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CountBy({dict(self.most_common())!r})"

    def render(self, name: str = "") -> str:
        """``@name[key]: count`` lines, most frequent first."""
        if not self._counts:
            return f"@{name}: no data\n"
        return "".join(f"@{name}[{key_text(k)}]: {n}\n" for k, n in self.most_common())


# -- the aggregator ----------------------------------------------------------------------


class _Missing:
    """The field is absent from this event (not the same as a None value)."""


MISSING = _Missing()


def field_value(event: Event, name: str) -> object:
    """The value of field ``name`` in ``event``, or MISSING.

    A fetch arg of that name wins; else ``$duration`` is duration_ns, ``$retval`` and
    ``$exception`` come from a return event, ``$thread`` is the thread name,
    ``$location`` where the event fired, ``$function`` the probed function
    (``module:qualname``) and ``$probe`` the probe's own text.
    """
    args = event.args
    if name in args:
        return args[name]
    if name == DURATION_FIELD:
        return MISSING if event.duration_ns is None else event.duration_ns
    if event.kind == RETURN and name == "$retval":
        return event.retval
    if event.kind == RETURN and name == "$exception":
        return event.exception
    if name == "$thread":
        return event.thread_name
    if name == "$location":
        return event.location
    if name == "$function":
        return function_of(event.probe)
    if name == "$probe":
        return event.probe
    return MISSING


def _as_hist_value(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value >= 0:
        return int(value)
    return None


def _as_number(value: object) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        finite = math.isfinite(value)
    except OverflowError:
        return None
    return value if finite else None


@dataclass(frozen=True, slots=True)
class AggregatorConfig:
    """What to aggregate per probe event; fields are fetch-arg names or ``$`` specials."""

    hist_field: str | None = None
    count: bool = False
    by_field: str | None = None
    stats_field: str | None = None
    hist_unit: str | None = None  # nsecs/usecs/msecs for a $duration histogram; None: auto
    #: --lhist FIELD,MIN,MAX,STEP: a linear histogram of FIELD, bounds (MIN, MAX, STEP).
    lhist_field: str | None = None
    lhist_bounds: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if (self.lhist_field is None) != (self.lhist_bounds is None):
            raise ValueError("a linear histogram needs both a field and its bounds")
        if self.lhist_bounds is not None:
            check_linear(*self.lhist_bounds)
        if self.lhist_field is not None and self.hist_field is not None:
            raise ValueError("a log2 and a linear histogram cannot be asked at once")

    @property
    def histogram_field(self) -> str | None:
        """The field of the histogram, log2 or linear (one at most)."""
        return self.hist_field if self.hist_field is not None else self.lhist_field


@dataclass(slots=True)
class EventAggregates:
    """The aggregations of one probe event; each is created with its first value."""

    event: str
    hits: int = 0
    by: CountBy | None = None
    hist: Log2Histogram | None = None
    stats: Stats | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    #: With --by and --hist: one histogram per key (bpftrace's ``@[probefunc] = hist()``).
    hist_by: dict[Hashable, Log2Histogram] = field(default_factory=dict)
    lhist: LinearHistogram | None = None
    #: With --by and --lhist: one linear histogram per key.
    lhist_by: dict[Hashable, LinearHistogram] = field(default_factory=dict)

    def merge(self, other: EventAggregates) -> EventAggregates:
        """A new EventAggregates with both added up; neither input changes."""
        skipped = dict(self.skipped)
        for name, n in other.skipped.items():
            skipped[name] = skipped.get(name, 0) + n
        hist_by = {k: h.copy() for k, h in self.hist_by.items()}
        for k, h in other.hist_by.items():
            hist_by[k] = hist_by[k].merge(h) if k in hist_by else h.copy()
        lhist_by = {k: h.copy() for k, h in self.lhist_by.items()}
        for k, lh in other.lhist_by.items():
            lhist_by[k] = lhist_by[k].merge(lh) if k in lhist_by else lh.copy()
        return EventAggregates(
            event=self.event,
            hits=self.hits + other.hits,
            by=_merged(self.by, other.by),
            hist=_merged(self.hist, other.hist),
            stats=_merged(self.stats, other.stats),
            skipped=skipped,
            hist_by=hist_by,
            lhist=_merged(self.lhist, other.lhist),
            lhist_by=lhist_by,
        )

    def copy(self) -> EventAggregates:
        """An independent copy."""
        return self.merge(EventAggregates(self.event))

    def render(self, config: AggregatorConfig) -> str:
        """This event's aggregations as text, in a fixed order."""
        out: list[str] = []
        event = terminal_safe(self.event, 256)  # an attached process names its events
        if config.count:
            out.append(f"@{event}: {self.hits}\n")
        if self.by is not None:
            out.append(self.by.render(event))
        if self.hist is not None:
            out.append(f"{event} {config.hist_field}:\n{self.hist.render(config.hist_unit)}")
        if self.hist_by and self.by is not None:
            for key, _ in self.by.most_common():
                hist = self.hist_by.get(key)
                if hist is not None:
                    head = f"{event}[{key_text(key)}] {config.hist_field}:"
                    out.append(f"{head}\n{hist.render(config.hist_unit)}")
        if self.lhist is not None and self.lhist.count:
            out.append(f"{event} {_lhist_title(config, self.lhist)}:\n{self.lhist.render()}")
        if self.lhist_by and self.by is not None:
            for key, _ in self.by.most_common():
                lhist = self.lhist_by.get(key)
                if lhist is not None and lhist.count:
                    head = f"{event}[{key_text(key)}] {_lhist_title(config, lhist)}:"
                    out.append(f"{head}\n{lhist.render()}")
        if self.stats is not None:
            fmt = format_duration if config.stats_field == DURATION_FIELD else None
            out.append(f"{event} {config.stats_field}: {self.stats.render(fmt)}")
        for name, n in sorted(self.skipped.items()):
            out.append(f"{event}: {n} {name} value{'' if n == 1 else 's'} skipped (not numeric)\n")
        return "".join(out)


def _lhist_title(config: AggregatorConfig, hist: LinearHistogram) -> str:
    unit, _ = hist.display_unit()
    return f"{config.lhist_field}" + (f" ({unit})" if hist.unit != "value" else "")


def _merged[T: (CountBy, Log2Histogram, LinearHistogram, Stats)](
    a: T | None, b: T | None
) -> T | None:
    if a is None:
        return None if b is None else b.copy()
    return a.copy() if b is None else a.merge(b)


class Aggregator:
    """Per probe event: a hit count, counts by a field, a log2 histogram, stats of a field.

    One of these is fed from probe threads (or the writer thread): be careful. add()
    may run on any thread; its lock is held only for the O(1) updates of one event's
    aggregations, never for rendering or I/O, and makes snapshot_and_reset() (an O(1)
    swap) see every add() whole. render() and merge() read without the lock: use them
    on a snapshot, or once nothing feeds this aggregator any more.

    Events without the configured field are ignored for it (an entry event has no
    ``$duration``); values present but not numbers, or negative for the histogram,
    are counted as skipped per field and never raise.
    """

    def __init__(
        self,
        *,
        hist_field: str | None = None,
        count: bool = False,
        by_field: str | None = None,
        stats_field: str | None = None,
        hist_unit: str | None = None,
        lhist_field: str | None = None,
        lhist_bounds: tuple[int, int, int] | None = None,
    ) -> None:
        self.config = AggregatorConfig(
            hist_field, count, by_field, stats_field, hist_unit, lhist_field, lhist_bounds
        )
        self._lock = threading.Lock()
        self._per_event: dict[str, EventAggregates] = {}

    @classmethod
    def from_config(cls, config: AggregatorConfig) -> Aggregator:
        """An empty aggregator with this configuration."""
        return cls(
            hist_field=config.hist_field,
            count=config.count,
            by_field=config.by_field,
            stats_field=config.stats_field,
            hist_unit=config.hist_unit,
            lhist_field=config.lhist_field,
            lhist_bounds=config.lhist_bounds,
        )

    def add(self, event: Event) -> None:
        """Aggregate one event's configured fields."""
        config = self.config
        by_value: object = MISSING
        hist_value: int | None = None
        lhist_value: int | None = None
        stats_value: int | float | None = None
        skipped: list[str] = []
        if config.by_field is not None:
            by_value = field_value(event, config.by_field)
        if config.hist_field is not None:
            raw = field_value(event, config.hist_field)
            if raw is not MISSING:
                hist_value = _as_hist_value(raw)
                if hist_value is None:
                    skipped.append(config.hist_field)
        if config.lhist_field is not None:
            raw = field_value(event, config.lhist_field)
            if raw is not MISSING:
                lhist_value = linear_value(raw)
                if lhist_value is None:
                    skipped.append(config.lhist_field)
        if config.stats_field is not None:
            raw = field_value(event, config.stats_field)
            if raw is not MISSING:
                stats_value = _as_number(raw)
                if stats_value is None and config.stats_field not in skipped:
                    skipped.append(config.stats_field)
        nothing = (
            by_value is MISSING and hist_value is None and lhist_value is None
        ) and stats_value is None
        if nothing and not skipped and not config.count:
            return
        by_key = None if by_value is MISSING else canonical_key(by_value)
        hist_unit = "nsecs" if config.histogram_field == DURATION_FIELD else "value"
        with self._lock:
            agg = self._per_event.get(event.event)
            if agg is None:
                agg = self._per_event[event.event] = EventAggregates(event.event)
            agg.hits += 1
            if by_value is not MISSING:
                if agg.by is None:
                    agg.by = CountBy()
                agg.by.add(by_key)
            if hist_value is not None:
                if config.by_field is None:
                    if agg.hist is None:
                        agg.hist = Log2Histogram(hist_unit)
                    agg.hist.add(hist_value)
                elif by_value is not MISSING:
                    hist = agg.hist_by.get(by_key)
                    if hist is None:
                        hist = agg.hist_by[by_key] = Log2Histogram(hist_unit)
                    hist.add(hist_value)
            if lhist_value is not None:
                bounds = config.lhist_bounds
                assert bounds is not None
                if config.by_field is None:
                    if agg.lhist is None:
                        agg.lhist = LinearHistogram(*bounds, unit=hist_unit)
                    agg.lhist.add(lhist_value)
                elif by_value is not MISSING:
                    lhist = agg.lhist_by.get(by_key)
                    if lhist is None:
                        lhist = agg.lhist_by[by_key] = LinearHistogram(*bounds, unit=hist_unit)
                    lhist.add(lhist_value)
            if stats_value is not None:
                if agg.stats is None:
                    agg.stats = Stats()
                agg.stats.add(stats_value)
            for name in skipped:
                agg.skipped[name] = agg.skipped.get(name, 0) + 1

    def add_totals(
        self,
        event: str,
        rows: list[tuple[object, int, tuple[dict[int, int], ...], int, int, int]],
        *,
        keyed: bool,
        hist_unit: str,
        stats: tuple[Stats, int] | None = None,
    ) -> None:
        """Aggregate what a probe program gathered for ``event``, as add() would its events.

        Each row is ``(key, hits, hist buckets per unit, total, max, skipped)``: ``key`` is
        the --by value (when ``keyed``), and hits that had no histogram value are skipped.
        ``stats`` are the --stats of every row, and how many hits had no number for them.
        """
        config = self.config
        rows = [r for r in rows if r[1] and (config.count or keyed or r[2] or stats)]
        if not rows:
            return
        with self._lock:
            agg = self._per_event.get(event)
            if agg is None:
                agg = self._per_event[event] = EventAggregates(event)
            if stats is not None:
                got, skipped_stats = stats
                if got.count:
                    agg.stats = got if agg.stats is None else agg.stats.merge(got)
                name = config.stats_field
                if skipped_stats and name is not None and name != config.histogram_field:
                    agg.skipped[name] = agg.skipped.get(name, 0) + skipped_stats
            for key, hits, buckets, total, high, skipped in rows:
                agg.hits += hits
                if keyed:
                    if agg.by is None:
                        agg.by = CountBy()
                    agg.by.add(key, hits)
                counted = hits - skipped
                wanted = buckets and counted and (keyed or config.by_field is None)
                if wanted and config.lhist_bounds is not None:
                    self._add_linear(agg, key, keyed, buckets[0], counted, total, hist_unit)
                elif wanted:
                    hist = Log2Histogram.from_buckets(hist_unit, buckets, counted, total, high)
                    if not keyed:
                        agg.hist = hist if agg.hist is None else agg.hist.merge(hist)
                    else:  # one histogram per key, as add() keeps them
                        ck = canonical_key(key)
                        mine = agg.hist_by.get(ck)
                        agg.hist_by[ck] = hist if mine is None else mine.merge(hist)
                name = config.histogram_field
                if skipped and name is not None:
                    agg.skipped[name] = agg.skipped.get(name, 0) + skipped

    def _add_linear(
        self,
        agg: EventAggregates,
        key: object,
        keyed: bool,
        buckets: dict[int, int],
        counted: int,
        total: int,
        unit: str,
    ) -> None:
        """One row's linear histogram into ``agg`` (its lock held)."""
        bounds = self.config.lhist_bounds
        assert bounds is not None
        hist = LinearHistogram.from_buckets(bounds, unit, buckets, counted, total)
        if not keyed:
            agg.lhist = hist if agg.lhist is None else agg.lhist.merge(hist)
        else:
            ck = canonical_key(key)
            mine = agg.lhist_by.get(ck)
            agg.lhist_by[ck] = hist if mine is None else mine.merge(hist)

    def put(self, aggregates: EventAggregates) -> None:
        """Add one event's aggregations gathered elsewhere (an attached process's agent)."""
        with self._lock:
            mine = self._per_event.get(aggregates.event)
            self._per_event[aggregates.event] = (
                aggregates if mine is None else mine.merge(aggregates)
            )

    def absorb(self, other: Aggregator) -> None:
        """Add everything ``other`` holds (it must not be fed any more)."""
        for name in other.events:
            got = other.get(name)
            if got is not None:
                self.put(got)

    def snapshot_and_reset(self) -> Aggregator:
        """What was aggregated so far, as a new Aggregator; this one starts over (--interval)."""
        with self._lock:
            taken, self._per_event = self._per_event, {}
        snapshot = Aggregator.from_config(self.config)
        snapshot._per_event = taken
        return snapshot

    def snapshot(self) -> Aggregator:
        """What was aggregated so far, as a new independent Aggregator; this one is unchanged
        and keeps counting (cumulative readers such as ``/metrics``).

        The lock is held for short pieces of the copy, so an add() on a probed thread never
        waits for a whole large aggregation: per event, its hits, counts by key, histogram
        and stats at once (they agree), then its per-key histograms SNAPSHOT_CHUNK at a time
        (each whole; keys first seen meanwhile are in the next snapshot).
        """
        snapshot = Aggregator.from_config(self.config)
        with self._lock:
            names = list(self._per_event)
        for name in names:
            with self._lock:
                agg = self._per_event.get(name)
                if agg is None:
                    continue
                copy = EventAggregates(
                    agg.event,
                    agg.hits,
                    by=None if agg.by is None else agg.by.copy(),
                    hist=None if agg.hist is None else agg.hist.copy(),
                    stats=None if agg.stats is None else agg.stats.copy(),
                    skipped=dict(agg.skipped),
                    lhist=None if agg.lhist is None else agg.lhist.copy(),
                )
                keys = list(agg.hist_by)
                lkeys = list(agg.lhist_by)
            for i in range(0, len(keys), SNAPSHOT_CHUNK):
                with self._lock:
                    for k in keys[i : i + SNAPSHOT_CHUNK]:
                        hist = agg.hist_by.get(k)
                        if hist is not None:
                            copy.hist_by[k] = hist.copy()
            for i in range(0, len(lkeys), SNAPSHOT_CHUNK):
                with self._lock:
                    for k in lkeys[i : i + SNAPSHOT_CHUNK]:
                        lhist = agg.lhist_by.get(k)
                        if lhist is not None:
                            copy.lhist_by[k] = lhist.copy()
            snapshot._per_event[name] = copy
        return snapshot

    @property
    def events(self) -> list[str]:
        """The event names seen, sorted."""
        return sorted(self._per_event)

    def get(self, event: str) -> EventAggregates | None:
        """The aggregations of one event name, if it was seen."""
        return self._per_event.get(event)

    def merge(self, other: Aggregator) -> Aggregator:
        """A new Aggregator holding both (same configuration required); inputs unchanged."""
        if other.config != self.config:
            raise ValueError(f"cannot merge aggregators of {self.config} and {other.config}")
        merged = Aggregator.from_config(self.config)
        for name in self._per_event.keys() | other._per_event.keys():
            mine, theirs = self._per_event.get(name), other._per_event.get(name)
            if mine is None:
                assert theirs is not None
                merged._per_event[name] = theirs.copy()
            else:
                merged._per_event[name] = mine.copy() if theirs is None else mine.merge(theirs)
        return merged

    def render(self) -> str:
        """Every event's aggregations, events sorted by name, blocks separated by a blank line."""
        if not self._per_event:
            return "(no events)\n"
        blocks = [self._per_event[name].render(self.config) for name in sorted(self._per_event)]
        return "\n".join(b for b in blocks if b)
