"""The session's aggregations in the Prometheus text exposition format (version 0.0.4).

Pure rendering: ``render_metrics`` turns an ``Aggregator`` (read from a ``snapshot()``: the
values are cumulative, as Prometheus counters must be) and the exit summary's rows into the
text a ``GET /metrics`` answers. Written by hand rather than with ``prometheus_client``: the
log2 buckets differ per series (they follow the data), the aggregations are already gathered
(a client library would have us copy them into its own metric objects on every scrape), and
the format is small (``tests/output/test_prometheus.py`` pins it; a real Prometheus scrapes it
in ``tests/cli/test_metrics_prometheus.py``).

Metric names (every series also has the labels ``hostname`` and ``pid``):

====================================  =========  =============================================
``pyprobes_probe_hits_total``         counter    probe hits per event (the summary's HITS)
``pyprobes_probe_misses_total``       counter    return-probe calls missed (MISSES)
``pyprobes_events_lost_total``        counter    events never written (LOST)
``pyprobes_events_total``             counter    ``--count``: events per ``event`` (and ``key``
                                                 with ``--by``)
``pyprobes_duration_seconds``         histogram  ``--hist`` (``$duration``), log2 buckets in s;
                                                 ``--lhist $duration,...``: le = MIN, MIN+STEP
                                                 ... MAX (values below each), +Inf
``pyprobes_value``                    histogram  ``--hist FIELD``/``--lhist FIELD,...`` of
                                                 another field (``field``)
``pyprobes_duration_stats_seconds``   summary    ``--stats $duration``: p50, p90, p99, sum, count
``pyprobes_duration_min_seconds``,    gauge      its minimum and maximum
``pyprobes_duration_max_seconds``
``pyprobes_value_stats``,             summary,   ``--stats FIELD`` of another field
``pyprobes_value_min``,               gauge
``pyprobes_value_max``
``pyprobes_values_skipped_total``     counter    values not numeric, per ``field``
``pyprobes_info``                     gauge      1, labelled with pyprobes' version and core
====================================  =========  =============================================

With ``--by`` each key is a ``key`` label, up to a bound per event (``KeyBudget``): keys are
admitted in the order they are first seen and stay; later ones are added up in one series
labelled ``key="__overflow__"``, so every series only grows, as counters must.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field

from pyprobes.output.aggregate import (
    DURATION_FIELD,
    Aggregator,
    ContainerKey,
    CountBy,
    EventAggregates,
)
from pyprobes.output.histogram import LinearHistogram, Log2Histogram
from pyprobes.output.render_text import format_value
from pyprobes.output.stats import Stats
from pyprobes.output.summary import SummaryRow

#: The Content-Type of the text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "pyprobes_"
OVERFLOW_KEY = "__overflow__"
#: The ``key`` of a --count'ed event that had no --by value (an entry probe with --by $retval).
NO_KEY = "__none__"
#: Keys shown per event before the rest goes to the overflow series.
DEFAULT_MAX_KEYS = 10_000
#: Label values are cut to this many characters (keys come from the program).
MAX_LABEL = 512
#: A $duration histogram has buckets at least up to this one (2**36 - 1 ns, 68.7 s), so its
#: ``le`` values stay the same from scrape to scrape; slower values add buckets above.
MIN_DURATION_BUCKETS = 36
QUANTILES = (0.5, 0.9, 0.99)
NS_PER_S = 1_000_000_000


# --- the text format's pieces ----------------------------------------------------------------


def escape_label(value: str) -> str:
    """A label value as the format writes it: backslash, double quote and newline escaped;
    what cannot be UTF-8 (a lone surrogate) becomes a ``\\udcxx``-style escape."""
    out = value
    if "\\" in out or '"' in out or "\n" in out:
        out = out.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    if not out.isascii():
        try:
            out.encode("utf-8")
        except UnicodeEncodeError:
            out = out.encode("utf-8", "backslashreplace").decode("utf-8")
    return out


def escape_help(text: str) -> str:
    """HELP text: backslash and newline escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_number(value: int | float) -> str:
    """A sample value: ints exactly, floats by repr, and ``+Inf``, ``-Inf``, ``NaN``."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def ns_as_seconds(ns: int) -> str:
    """Integer nanoseconds as an exact decimal number of seconds: 1023 -> ``0.000001023``."""
    sign = "-" if ns < 0 else ""
    whole, frac = divmod(abs(ns), NS_PER_S)
    text = f"{whole}.{frac:09d}".rstrip("0").rstrip(".")
    return sign + text


def key_label(key: Hashable) -> str:
    """A --by key as a label value: text as it is, containers as their JSON, the rest as the
    text report shows them (``None``, ``42``, ``True``); cut to MAX_LABEL characters."""
    if isinstance(key, str):
        text = key
    elif isinstance(key, ContainerKey):
        text = key.json
    else:
        text = format_value(key)
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 3] + "..."


Labels = tuple[tuple[str, str], ...]


def _inner(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{name}="{escape_label(value)}"' for name, value in pairs)


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = _inner(pairs)
    return "{" + inner + "}" if inner else ""


@dataclass
class _Family:
    name: str
    kind: str
    help: str
    samples: list[str] = field(default_factory=list)
    #: A histogram family's series, written at the end with one bucket layout for all (so
    #: ``sum by (le)`` over keys or events adds the same buckets).
    hists: list[tuple[Labels, Log2Histogram]] = field(default_factory=list)
    #: A linear histogram family's series (--lhist): every one has the buckets of the bounds.
    lhists: list[tuple[Labels, LinearHistogram]] = field(default_factory=list)

    def add(self, suffix: str, labels: Iterable[tuple[str, str]], value: int | float) -> None:
        self.samples.append(f"{self.name}{suffix}{_labels(labels)} {format_number(value)}")

    def add_raw(self, suffix: str, labels: Iterable[tuple[str, str]], value: str) -> None:
        self.samples.append(f"{self.name}{suffix}{_labels(labels)} {value}")

    def text(self) -> str:
        if self.hists:
            floor = MIN_DURATION_BUCKETS if self.hists[0][1].unit == "nsecs" else 1
            last = max(floor, *(top_bucket(h) for _, h in self.hists))
            for labels, hist in self.hists:
                _histogram(self, labels, hist, last)
            self.hists = []
        for labels, lhist in self.lhists:
            _linear(self, labels, lhist)
        self.lhists = []
        head = f"# HELP {self.name} {escape_help(self.help)}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(s + "\n" for s in self.samples)


class _Families:
    """Metric families in the order first asked for, each written as one block."""

    def __init__(self) -> None:
        self._by_name: dict[str, _Family] = {}

    def get(self, name: str, kind: str, help_text: str) -> _Family:
        fam = self._by_name.get(name)
        if fam is None:
            fam = self._by_name[name] = _Family(PREFIX + name, kind, help_text)
        return fam

    def text(self) -> str:
        return "".join(f.text() for f in self._by_name.values() if f.samples or f.hists or f.lhists)


# --- bounded keys ------------------------------------------------------------------------


class KeyBudget:
    """Which --by keys get a series of their own, per event: the first ``limit`` seen, for
    good (a key never moves between its series and the overflow one, so both only grow).

    The one piece of state of the renderer, shared by the scrapes of one session; its lock
    makes concurrent scrapes safe.
    """

    def __init__(self, limit: int = DEFAULT_MAX_KEYS) -> None:
        if limit < 1:
            raise ValueError(f"a key budget is at least 1, not {limit}")
        self.limit = limit
        self._admitted: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def split(self, event: str, labels: Iterable[str]) -> tuple[set[str], set[str]]:
        """``(admitted, overflow)``: the label values of ``event`` that have their series,
        and those counted in the overflow series. New ones are admitted while room is left,
        in the order given."""
        with self._lock:
            mine = self._admitted.setdefault(event, set())
            admitted: set[str] = set()
            overflow: set[str] = set()
            for label in labels:
                if label in mine:
                    admitted.add(label)
                elif len(mine) < self.limit:
                    mine.add(label)
                    admitted.add(label)
                else:
                    overflow.add(label)
            return admitted, overflow


# --- histograms ---------------------------------------------------------------------------


def top_bucket(hist: Log2Histogram) -> int:
    """The index of the highest non-empty bucket (1 when empty)."""
    rows = hist.buckets(hist.unit)
    return rows[-1][1].bit_length() if rows else 1


def histogram_buckets(hist: Log2Histogram, last: int | None = None) -> list[tuple[str, int]]:
    """``(le, cumulative count)`` for every bucket from the first (``le`` 1 ns, or 1) up to
    bucket ``last`` (default: the last non-empty one, for durations at least
    MIN_DURATION_BUCKETS), then ``+Inf``.

    Bucket k of the log2 histogram holds the ints in [2**(k-1), 2**k - 1] (0 and 1 in
    bucket 1), so its upper bound ``le`` is 2**k - 1 (ns, written in seconds, for durations).
    """
    duration = hist.unit == "nsecs"
    counts = {hi: n for _, hi, n in hist.buckets(hist.unit)}
    if last is None:
        last = max(top_bucket(hist), MIN_DURATION_BUCKETS if duration else 1)
    names = _LE_SECONDS if duration else _LE_VALUES
    out: list[tuple[str, int]] = []
    running = 0
    for k in range(1, last + 1):
        hi = (1 << k) - 1
        running += counts.get(hi, 0)
        out.append((names[k] if k < len(names) else _le(hi, duration), running))
    out.append(("+Inf", hist.count))
    return out


def _le(hi: int, duration: bool) -> str:
    return ns_as_seconds(hi) if duration else str(hi)


#: ``le`` of bucket k (index k; 0 unused), made once.
_LE_SECONDS = tuple(_le((1 << k) - 1, True) for k in range(65))
_LE_VALUES = tuple(_le((1 << k) - 1, False) for k in range(65))


def _merge_hists(hists: Iterable[Log2Histogram]) -> Log2Histogram | None:
    merged: Log2Histogram | None = None
    for h in hists:
        merged = h.copy() if merged is None else merged.merge(h)
    return merged


def _histogram(fam: _Family, labels: Labels, hist: Log2Histogram, last: int) -> None:
    inner = _inner(labels)
    head = f"{fam.name}_bucket{{{inner}{',' if inner else ''}le="
    fam.samples.extend(f'{head}"{le}"}} {n}' for le, n in histogram_buckets(hist, last))
    tail = "{" + inner + "}" if inner else ""
    total = ns_as_seconds(hist.total) if hist.unit == "nsecs" else str(hist.total)
    fam.samples.append(f"{fam.name}_sum{tail} {total}")
    fam.samples.append(f"{fam.name}_count{tail} {hist.count}")


def linear_buckets(hist: LinearHistogram) -> list[tuple[str, int]]:
    """``(le, cumulative count)`` of a linear histogram: ``le`` MIN (the values below it),
    then MIN + STEP, ... MAX, then ``+Inf``. The buckets are bpftrace's, closed below and
    open above: ``le="B"`` counts the values below B (a value of exactly B is in the next)."""
    duration = hist.unit == "nsecs"
    counts = hist.counts()
    out: list[tuple[str, int]] = []
    running = 0
    for k in range(hist.nbuckets + 1):
        running += counts.get(k, 0)
        out.append((_le(hist.lo + k * hist.step, duration), running))
    out.append(("+Inf", hist.count))
    return out


def _linear(fam: _Family, labels: Labels, hist: LinearHistogram) -> None:
    inner = _inner(labels)
    head = f"{fam.name}_bucket{{{inner}{',' if inner else ''}le="
    fam.samples.extend(f'{head}"{le}"}} {n}' for le, n in linear_buckets(hist))
    tail = "{" + inner + "}" if inner else ""
    total = ns_as_seconds(hist.total) if hist.unit == "nsecs" else str(hist.total)
    fam.samples.append(f"{fam.name}_sum{tail} {total}")
    fam.samples.append(f"{fam.name}_count{tail} {hist.count}")


def _linear_event(
    fams: _Families,
    ea: EventAggregates,
    lhist_field: str,
    ev: Labels,
    const: Labels,
    series_key: Callable[[Hashable], str],
) -> None:
    if lhist_field == DURATION_FIELD:
        fam = fams.get(
            "duration_seconds", "histogram", "Durations of return probes (--lhist), seconds."
        )
        base: Labels = ev
    else:
        fam = fams.get("value", "histogram", "Linear histogram of a field (--lhist FIELD).")
        base = (*ev, ("field", lhist_field))
    if ea.lhist is not None:
        fam.lhists.append(((*base, *const), ea.lhist))
    grouped: dict[str, LinearHistogram] = {}
    for k, h in ea.lhist_by.items():
        s = series_key(k)
        grouped[s] = h.copy() if s not in grouped else grouped[s].merge(h)
    for s, merged in grouped.items():
        fam.lhists.append(((*base, ("key", s), *const), merged))


# --- one event ---------------------------------------------------------------------------


def _by_label(
    by: CountBy | None, hist_by: Mapping[Hashable, Log2Histogram | LinearHistogram]
) -> list[str]:
    """The label values of an event's keys, most frequent first (the admission order)."""
    seen: dict[str, None] = {}
    if by is not None:
        for k, _ in by.most_common():
            seen.setdefault(key_label(k), None)
    for k in hist_by:
        seen.setdefault(key_label(k), None)
    return list(seen)


def _event(
    fams: _Families,
    ea: EventAggregates,
    config_count: bool,
    hist_field: str | None,
    stats_field: str | None,
    const: Labels,
    budget: KeyBudget,
    lhist_field: str | None = None,
) -> None:
    ev = (("event", ea.event),)
    keyed = ea.by is not None or bool(ea.hist_by) or bool(ea.lhist_by)
    admitted: set[str] = set()
    if keyed:
        by_hist = ea.lhist_by if ea.lhist_by else ea.hist_by
        admitted, _ = budget.split(ea.event, _by_label(ea.by, by_hist))

    def series_key(k: Hashable) -> str:
        label = key_label(k)
        return label if label in admitted else OVERFLOW_KEY

    events = fams.get("events_total", "counter", "Events counted (--count), per --by key.")
    if ea.by is not None:
        counts: dict[str, int] = {}
        for k, n in ea.by.most_common():
            s = series_key(k)
            counts[s] = counts.get(s, 0) + n
        if config_count and ea.hits > ea.by.total:
            counts[NO_KEY] = counts.get(NO_KEY, 0) + ea.hits - ea.by.total
        for s, n in counts.items():
            events.add("", (*ev, ("key", s), *const), n)
    elif config_count:
        events.add("", (*ev, *const), ea.hits)

    if hist_field is not None:
        duration = hist_field == DURATION_FIELD
        if duration:
            fam = fams.get(
                "duration_seconds", "histogram", "Durations of return probes (--hist), seconds."
            )
            base: Labels = ev
        else:
            fam = fams.get("value", "histogram", "Log2 histogram of a field (--hist FIELD).")
            base = (*ev, ("field", hist_field))
        if ea.hist is not None:
            fam.hists.append(((*base, *const), ea.hist))
        grouped: dict[str, list[Log2Histogram]] = {}
        for k, h in ea.hist_by.items():
            grouped.setdefault(series_key(k), []).append(h)
        for s, hs in grouped.items():
            merged = _merge_hists(hs)
            if merged is not None:
                fam.hists.append(((*base, ("key", s), *const), merged))

    if lhist_field is not None:
        _linear_event(fams, ea, lhist_field, ev, const, series_key)

    if ea.stats is not None and stats_field is not None:
        _stats(fams, ea.stats, stats_field, ev, const)

    if ea.skipped:
        fam = fams.get("values_skipped_total", "counter", "Field values that were not numeric.")
        for name, n in sorted(ea.skipped.items()):
            fam.add("", (*ev, ("field", name), *const), n)


def _stats(fams: _Families, st: Stats, stats_field: str, ev: Labels, const: Labels) -> None:
    duration = stats_field == DURATION_FIELD

    def conv(v: float) -> float:
        return v / NS_PER_S if duration else v

    if duration:
        base: Labels = ev
        summary = fams.get(
            "duration_stats_seconds", "summary", "Durations (--stats $duration), seconds."
        )
        low = fams.get("duration_min_seconds", "gauge", "Shortest duration seen, seconds.")
        high = fams.get("duration_max_seconds", "gauge", "Longest duration seen, seconds.")
    else:
        base = (*ev, ("field", stats_field))
        summary = fams.get("value_stats", "summary", "Statistics of a field (--stats FIELD).")
        low = fams.get("value_min", "gauge", "Smallest value of the field seen.")
        high = fams.get("value_max", "gauge", "Largest value of the field seen.")
    labels = (*base, *const)
    for q in QUANTILES:
        v = st.quantile(q)
        if v is not None:
            summary.add("", (*base, ("quantile", repr(q)), *const), conv(v))
    total = st.sum
    if duration and isinstance(total, int):
        summary.add_raw("_sum", labels, ns_as_seconds(total))
    else:
        summary.add("_sum", labels, conv(total))
    summary.add("_count", labels, st.count)
    for fam, v in ((low, st.min), (high, st.max)):
        if v is not None:
            if duration and isinstance(v, int):
                fam.add_raw("", labels, ns_as_seconds(v))
            else:
                fam.add("", labels, conv(v))


# --- the whole page ------------------------------------------------------------------------


def render_metrics(
    aggregator: Aggregator | None,
    summary: Iterable[SummaryRow],
    *,
    labels: Mapping[str, str] | None = None,
    budget: KeyBudget | None = None,
    info: Mapping[str, str] | None = None,
) -> str:
    """The exposition text for the summary rows (hits, misses, lost per event) and the
    aggregations (read them from ``Aggregator.snapshot()``). ``labels`` go on every series
    (``hostname``, ``pid``); ``info`` labels the ``pyprobes_info`` gauge; ``budget`` bounds
    the keys per event (a new one with DEFAULT_MAX_KEYS when not given: keep one per session,
    so series stay where they were first put)."""
    const: Labels = tuple((labels or {}).items())
    budget = budget if budget is not None else KeyBudget()
    fams = _Families()
    if info is not None:
        fams.get("info", "gauge", "pyprobes itself: version and core.").add(
            "", (*info.items(), *const), 1
        )
    hits = fams.get("probe_hits_total", "counter", "Probe hits, per event.")
    misses = fams.get(
        "probe_misses_total", "counter", "Return-probe calls missed: no free instance."
    )
    lost = fams.get("events_lost_total", "counter", "Events never written, per event.")
    per_event: dict[str, list[int]] = {}
    for row in summary:  # two specs may name the same event: one series, added up
        mine = per_event.setdefault(row.event, [0, 0, 0])
        mine[0] += row.hits
        mine[1] += row.misses
        mine[2] += row.lost
    for event, (n_hits, n_misses, n_lost) in per_event.items():
        ev = (("event", event), *const)
        hits.add("", ev, n_hits)
        misses.add("", ev, n_misses)
        lost.add("", ev, n_lost)
    if aggregator is not None:
        config = aggregator.config
        for name in aggregator.events:
            ea = aggregator.get(name)
            if ea is not None:
                _event(
                    fams,
                    ea,
                    config.count,
                    config.hist_field,
                    config.stats_field,
                    const,
                    budget,
                    config.lhist_field,
                )
    return fams.text()
