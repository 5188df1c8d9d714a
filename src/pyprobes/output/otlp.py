"""``--otlp``: return-probe activations as OpenTelemetry spans, aggregations as OTLP metrics.

Needs the optional extra ``otlp`` (``opentelemetry-sdk``, ``opentelemetry-exporter-otlp-proto-
http``); nothing else in pyprobes imports this module. The pieces:

- ``SpanBuilder`` turns one return ``Event`` (with its ``activation`` link, made at the hit by
  ``pyprobes.tracer.activations``) into a finished ``ReadableSpan``: name from the event,
  start and end from its entry and return (``time_ns - duration_ns``, ``time_ns``, moved
  from ``perf_counter_ns``' clock to the epoch once per session), attributes from the fetch
  args, status ERROR with the exception type when it raised, ids derived from the activation
  numbers (so a child names its parent before the parent has ended).
- ``metrics_data`` turns the session's aggregations (cumulative, as ``/metrics`` reads them)
  into OTLP metrics: sums for hits, misses and ``--count``, histograms for ``--hist``, gauges
  for ``--stats`` (count, sum, min, max, mean, p50, p90, p99, by the attribute ``stat``).
- ``OtlpExport`` runs it: return events go through a bounded queue to a thread of pyprobes'
  own (an ``EventWriter`` whose renderer builds the spans), which hands them to the SDK's
  ``BatchSpanProcessor`` (bounded queue, its own export thread, the OTLP/HTTP exporter); a
  ``PeriodicExportingMetricReader`` reads the aggregations. Nothing is ever exported on a
  probed thread. Spans that never reach the receiver (the writer's queue or the processor's
  queue full, an export that failed) are counted for one line at the end.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Attributes, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from pyprobes.output.aggregate import DURATION_FIELD, Aggregator, EventAggregates
from pyprobes.output.histogram import LinearHistogram, Log2Histogram
from pyprobes.output.prometheus import (
    MIN_DURATION_BUCKETS,
    NO_KEY,
    OVERFLOW_KEY,
    KeyBudget,
    key_label,
    top_bucket,
)
from pyprobes.output.records import Event, function_of
from pyprobes.output.sanitize import dumps, terminal_safe
from pyprobes.output.summary import SummaryRow
from pyprobes.output.writer import EventWriter

SCOPE = "pyprobes"
TRACES_PATH = "v1/traces"
METRICS_PATH = "v1/metrics"
#: Events queued for the span thread before more are dropped (and counted).
QUEUE_CAPACITY = 65_536
#: How long the end of the run waits for the last spans and metrics to go out (seconds).
FINISH_TIMEOUT = 10.0
NS_PER_S = 1_000_000_000
_M64 = (1 << 64) - 1
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_INT64 = 1 << 63

ThreadContext = Callable[[], AbstractContextManager[object]]


# --- ids, values ----------------------------------------------------------------------------


def _mix64(x: int) -> int:
    """splitmix64's finalizer: a bijection of 64-bit ints that spreads nearby ones apart."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _text(value: str) -> str:
    """``value`` as protobuf can encode it (a lone surrogate becomes a backslash escape)."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def attribute_value(value: object) -> str | bool | int | float:
    """A captured value as an OpenTelemetry attribute: str, bool, float and 64-bit ints as
    they are; None, larger ints and containers as the JSON the json format writes."""
    t = type(value)
    if t is str:
        return _text(value)  # type: ignore[arg-type]
    if t is bool or t is float:
        return value  # type: ignore[return-value]
    if t is int and -_INT64 <= value < _INT64:  # type: ignore[operator]
        return value  # type: ignore[return-value]
    return _text(dumps(value))


def exception_type(text: str | None) -> str:
    """The type name at the head of an exception's rendering (``ValueError('x')``)."""
    head = (text or "?").split("(", 1)[0].split(":", 1)[0].strip()
    return head or "?"


# --- spans -------------------------------------------------------------------------------


class SpanBuilder:
    """Return events to finished spans. Its ids are a bijection of the activation numbers
    under a per-session random salt: unique within the session, unlikely to meet another's.

    ``clock_offset_ns`` is added to event times (``perf_counter_ns``) to make epoch times.
    """

    def __init__(
        self,
        resource: Resource,
        *,
        scope: InstrumentationScope | None = None,
        clock_offset_ns: int | None = None,
        salt: bytes | None = None,
    ) -> None:
        self.resource = resource
        self.scope = scope if scope is not None else InstrumentationScope(SCOPE)
        if clock_offset_ns is None:
            clock_offset_ns = time.time_ns() - time.perf_counter_ns()
        self.clock_offset_ns = clock_offset_ns
        raw = salt if salt is not None else os.urandom(24)
        self._salts = tuple(int.from_bytes(raw[i : i + 8], "little") for i in (0, 8, 16))

    def span_id(self, n: int) -> int:
        """The span id of activation ``n``."""
        return _mix64(self._salts[0] ^ n) or 1

    def trace_id(self, root: int) -> int:
        """The trace id of the activations under root activation ``root``."""
        return (_mix64(self._salts[1] ^ root) << 64) | _mix64(self._salts[2] ^ root) or 1

    def span(self, event: Event) -> ReadableSpan | None:
        """The span of a return event that has an activation link (else None)."""
        link = event.activation
        if link is None or event.duration_ns is None:
            return None
        n, parent_n, root, program_trace, program_span = link
        trace_id = program_trace or self.trace_id(root)
        context = SpanContext(trace_id, self.span_id(n), is_remote=False, trace_flags=_SAMPLED)
        parent: SpanContext | None = None
        if parent_n:
            parent = SpanContext(
                trace_id, self.span_id(parent_n), is_remote=False, trace_flags=_SAMPLED
            )
        elif program_span:
            parent = SpanContext(trace_id, program_span, is_remote=False, trace_flags=_SAMPLED)
        end = event.time_ns + self.clock_offset_ns
        attributes: dict[str, str | bool | int | float] = {
            _text(name): attribute_value(value) for name, value in event.args.items()
        }
        attributes["code.function.name"] = _text(function_of(event.probe))
        attributes["thread.id"] = event.thread_id
        attributes["thread.name"] = _text(event.thread_name)
        attributes["pyprobes.probe"] = _text(event.probe)
        if event.is_async:
            attributes["pyprobes.async"] = True
        status = Status(StatusCode.UNSET)
        if event.exception is not None:
            kind = _text(exception_type(event.exception))
            attributes["exception.type"] = kind
            status = Status(StatusCode.ERROR, kind)
        return ReadableSpan(
            name=_text(event.event),
            context=context,
            parent=parent,
            resource=self.resource,
            attributes=attributes,
            kind=SpanKind.INTERNAL,
            status=status,
            start_time=end - event.duration_ns,
            end_time=end,
            instrumentation_scope=self.scope,
        )


# --- metrics -----------------------------------------------------------------------------

Attrs = tuple[tuple[str, str], ...]


def _log2_point(
    hist: Log2Histogram, attrs: Attrs, start_ns: int, now_ns: int
) -> HistogramDataPoint:
    """Bucket k of the log2 histogram (ints 2**(k-1) to 2**k - 1) is the explicit bucket with
    upper bound 2**k - 1 (in seconds for durations); every bucket from the first one up."""
    duration = hist.unit == "nsecs"
    scale = NS_PER_S if duration else 1
    last = max(top_bucket(hist), MIN_DURATION_BUCKETS if duration else 1)
    counts = {hi: n for _, hi, n in hist.buckets(hist.unit)}
    bounds = [((1 << k) - 1) / scale for k in range(1, last + 1)]
    bucket_counts = [counts.get((1 << k) - 1, 0) for k in range(1, last + 1)]
    bucket_counts.append(0)  # above the last bound: nothing, the last bound covers the max
    return HistogramDataPoint(
        attributes=dict(attrs),
        start_time_unix_nano=start_ns,
        time_unix_nano=now_ns,
        count=hist.count,
        sum=hist.total / scale,
        bucket_counts=bucket_counts,
        explicit_bounds=bounds,
        min=None,  # type: ignore[arg-type]  # optional in OTLP; the histogram keeps no minimum
        max=hist.max / scale,
    )


def _linear_point(
    hist: LinearHistogram, attrs: Attrs, start_ns: int, now_ns: int
) -> HistogramDataPoint:
    """A linear histogram's buckets as they are: bounds MIN, MIN + STEP, ... MAX (in seconds
    for durations); the first count is of the values below MIN, the last of those from MAX
    up (bpftrace's buckets, closed below: a value of exactly a bound is in the next)."""
    scale = NS_PER_S if hist.unit == "nsecs" else 1
    counts = hist.counts()
    n = hist.nbuckets
    return HistogramDataPoint(
        attributes=dict(attrs),
        start_time_unix_nano=start_ns,
        time_unix_nano=now_ns,
        count=hist.count,
        sum=hist.total / scale,
        bucket_counts=[counts.get(i, 0) for i in range(n + 2)],
        explicit_bounds=[(hist.lo + k * hist.step) / scale for k in range(n + 1)],
        min=None,  # type: ignore[arg-type]  # optional in OTLP: not kept
        max=None,  # type: ignore[arg-type]
    )


@dataclass
class _Points:
    sums: dict[str, list[NumberDataPoint]] = field(default_factory=dict)
    hists: dict[str, list[HistogramDataPoint]] = field(default_factory=dict)


def _event_points(
    out: _Points,
    ea: EventAggregates,
    count: bool,
    hist_field: str | None,
    budget: KeyBudget,
    start_ns: int,
    now_ns: int,
    lhist_field: str | None = None,
) -> None:
    ev: Attrs = (("event", _text(ea.event)),)
    admitted: set[str] = set()
    if ea.by is not None or ea.hist_by or ea.lhist_by:
        labels: dict[str, None] = {}
        if ea.by is not None:
            for k, _ in ea.by.most_common():
                labels.setdefault(key_label(k), None)
        for k in [*ea.hist_by, *ea.lhist_by]:
            labels.setdefault(key_label(k), None)
        admitted, _ = budget.split(ea.event, list(labels))

    def series(k: Hashable) -> str:
        label = key_label(k)
        return _text(label) if label in admitted else OVERFLOW_KEY

    def add_sum(attrs: Attrs, value: int) -> None:
        out.sums.setdefault("pyprobes.events", []).append(
            NumberDataPoint(dict(attrs), start_ns, now_ns, value)
        )

    if ea.by is not None:
        counts: dict[str, int] = {}
        for k, n in ea.by.most_common():
            s = series(k)
            counts[s] = counts.get(s, 0) + n
        if count and ea.hits > ea.by.total:
            counts[NO_KEY] = counts.get(NO_KEY, 0) + ea.hits - ea.by.total
        for s, n in counts.items():
            add_sum((*ev, ("key", s)), n)
    elif count:
        add_sum(ev, ea.hits)
    if lhist_field is not None:
        name = "pyprobes.duration" if lhist_field == DURATION_FIELD else "pyprobes.value"
        base = ev if lhist_field == DURATION_FIELD else (*ev, ("field", _text(lhist_field)))
        points = out.hists.setdefault(name, [])
        if ea.lhist is not None:
            points.append(_linear_point(ea.lhist, base, start_ns, now_ns))
        lgrouped: dict[str, LinearHistogram] = {}
        for k, lh in ea.lhist_by.items():
            s = series(k)
            lgrouped[s] = lh.copy() if s not in lgrouped else lgrouped[s].merge(lh)
        for s, lh in lgrouped.items():
            points.append(_linear_point(lh, (*base, ("key", s)), start_ns, now_ns))
    if hist_field is None:
        return
    name = "pyprobes.duration" if hist_field == DURATION_FIELD else "pyprobes.value"
    base = ev if hist_field == DURATION_FIELD else (*ev, ("field", _text(hist_field)))
    points = out.hists.setdefault(name, [])
    if ea.hist is not None:
        points.append(_log2_point(ea.hist, base, start_ns, now_ns))
    grouped: dict[str, Log2Histogram] = {}
    for k, h in ea.hist_by.items():
        s = series(k)
        prev = grouped.get(s)
        grouped[s] = h.copy() if prev is None else prev.merge(h)
    for s, h in grouped.items():
        points.append(_log2_point(h, (*base, ("key", s)), start_ns, now_ns))


_DESCRIPTIONS = {
    "pyprobes.probe.hits": ("Probe hits, per event.", "1"),
    "pyprobes.probe.misses": ("Return-probe calls missed: no free instance.", "1"),
    "pyprobes.events": ("Events counted (--count), per --by key.", "1"),
    "pyprobes.duration": ("Durations of return probes (--hist, --lhist), seconds.", "s"),
    "pyprobes.value": ("Histogram of a field (--hist FIELD, --lhist FIELD,...).", "1"),
    "pyprobes.duration.stats": ("--stats of $duration (attribute stat), seconds.", "s"),
    "pyprobes.value.stats": ("--stats of a field (attribute stat).", "1"),
}
#: What --stats exports, by the attribute ``stat`` (a gauge each: the session's so far).
STATS = ("count", "sum", "min", "max", "mean", "p50", "p90", "p99")


def _stats_points(
    ea: EventAggregates, stats_field: str, start_ns: int, now_ns: int
) -> list[NumberDataPoint]:
    """The event's --stats as gauge points, one per statistic (seconds for $duration)."""
    st = ea.stats
    if st is None or st.count == 0:
        return []
    duration = stats_field == DURATION_FIELD
    attrs: Attrs = (("event", _text(ea.event)),)
    if not duration:
        attrs = (*attrs, ("field", _text(stats_field)))
    values = {
        "count": st.count,
        "sum": st.sum,
        "min": st.min,
        "max": st.max,
        "mean": st.mean,
        "p50": st.p50,
        "p90": st.p90,
        "p99": st.p99,
    }
    points = []
    for stat in STATS:
        v = values[stat]
        if v is None:
            continue
        if duration and stat != "count":
            v = v / NS_PER_S
        points.append(NumberDataPoint({**dict(attrs), "stat": stat}, start_ns, now_ns, v))
    return points


def metrics_data(
    aggregator: Aggregator | None,
    rows: Sequence[SummaryRow],
    *,
    resource: Resource,
    budget: KeyBudget,
    start_ns: int,
    now_ns: int | None = None,
    scope: InstrumentationScope | None = None,
) -> MetricsData:
    """The session's figures as OTLP metrics, cumulative since ``start_ns`` (epoch ns):
    ``pyprobes.probe.hits``/``.misses`` (sums per event), ``pyprobes.events`` (``--count``,
    ``--by`` keys as the attribute ``key``, bounded by ``budget``), ``pyprobes.duration``
    (``--hist`` of ``$duration``, seconds) and ``pyprobes.value`` (``--hist FIELD``)."""
    now = time.time_ns() if now_ns is None else now_ns
    out = _Points()
    gauges: dict[str, list[NumberDataPoint]] = {}
    per_event: dict[str, list[int]] = {}
    for row in rows:
        mine = per_event.setdefault(row.event, [0, 0])
        mine[0] += row.hits
        mine[1] += row.misses
    for event, (hits, misses) in per_event.items():
        attrs = {"event": _text(event)}
        out.sums.setdefault("pyprobes.probe.hits", []).append(
            NumberDataPoint(attrs, start_ns, now, hits)
        )
        out.sums.setdefault("pyprobes.probe.misses", []).append(
            NumberDataPoint(attrs, start_ns, now, misses)
        )
    if aggregator is not None:
        config = aggregator.config
        for name in aggregator.events:
            ea = aggregator.get(name)
            if ea is not None:
                _event_points(
                    out,
                    ea,
                    config.count,
                    config.hist_field,
                    budget,
                    start_ns,
                    now,
                    config.lhist_field,
                )
            if ea is not None and config.stats_field is not None:
                metric = (
                    "pyprobes.duration.stats"
                    if config.stats_field == DURATION_FIELD
                    else "pyprobes.value.stats"
                )
                gauges.setdefault(metric, []).extend(
                    _stats_points(ea, config.stats_field, start_ns, now)
                )
    metrics: list[Metric] = []
    cumulative = AggregationTemporality.CUMULATIVE
    for name, sum_points in out.sums.items():
        desc, unit = _DESCRIPTIONS[name]
        metrics.append(Metric(name, desc, unit, Sum(sum_points, cumulative, is_monotonic=True)))
    for name, hist_points in out.hists.items():
        if hist_points:
            desc, unit = _DESCRIPTIONS[name]
            metrics.append(Metric(name, desc, unit, Histogram(hist_points, cumulative)))
    for name, gauge_points in gauges.items():
        if gauge_points:
            desc, unit = _DESCRIPTIONS[name]
            metrics.append(Metric(name, desc, unit, Gauge(gauge_points)))
    scope = scope if scope is not None else InstrumentationScope(SCOPE)
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, metrics, "")], "")])


# --- export ------------------------------------------------------------------------------

_ERRNO = re.compile(r"\[Errno -?\d+\] [^\"')\]]+")


def failure_reason(message: str) -> str:
    """Why exports failed, from the SDK's log line: the OS error when there is one
    (``[Errno 111] Connection refused``), else the line itself, cut and made safe."""
    m = _ERRNO.search(message)
    text = m.group(0).strip() if m is not None else message
    return terminal_safe(text, 300)


def endpoint_urls(endpoint: str) -> tuple[str, str]:
    """The traces and metrics URLs of an OTLP/HTTP endpoint (``http://host:4318``, as
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` gives it); ValueError, with why, for what is none."""
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an OTLP/HTTP endpoint is http://HOST:PORT or https://HOST:PORT")
    try:
        parts.port  # noqa: B018  (a bad port raises here)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    base = parts.path.rstrip("/")
    for suffix in ("/" + TRACES_PATH, "/" + METRICS_PATH):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    root = urllib.parse.urlunsplit((parts.scheme, parts.netloc, base, "", ""))
    return f"{root}/{TRACES_PATH}", f"{root}/{METRICS_PATH}"


def make_resource(program: str, pid: int) -> Resource:
    """The resource of the probed process: ``service.name`` from OTEL_SERVICE_NAME or
    OTEL_RESOURCE_ATTRIBUTES when set, else ``program``; its pid and host name."""
    attrs: dict[str, str | int] = {"process.pid": pid, "host.name": socket.gethostname()}
    env_attrs = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in env_attrs:
        attrs["service.name"] = _text(program)
    r = Resource.create(attrs)
    return _Resource(r.attributes, r.schema_url)


class _Resource(Resource):
    """A Resource that computes its hash once: the SDK's span encoder groups the spans of a
    batch by resource, hashing it per span, and Resource's hash is a json.dumps of its
    attributes (about 5 of the 30 us a span took to encode here). Its attributes are
    immutable, so the hash is the same each time."""

    def __init__(self, attributes: Attributes, schema_url: str | None = None) -> None:
        super().__init__(attributes, schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other)


class _Quiet(logging.Filter):
    """Keeps the SDK's log lines about our exports out of the program's logging (and its
    stderr), remembering the last one as the reason of a failure. Only records made on a
    thread while it runs our export code are touched: the program's own exporters log as
    they would without pyprobes."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()
        self.last: str | None = None
        #: A warning came since the last export that succeeded (the receiver is failing:
        #: the exporter retries, with backoff, until its timeout).
        self.trouble = False
        #: Called when a warning comes (at the end of the run: stop retrying at once).
        self.on_trouble: Callable[[], None] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(self.local, "ours", False):
            return True
        if record.levelno >= logging.WARNING and record.name.startswith(_EXPORTERS):
            # (an exporter's: the processor's "queue full" is counted, and not the receiver)
            if not self.trouble:  # the first warning of a failing spell says why
                try:
                    self.last = record.getMessage()
                except Exception:
                    self.last = str(record.msg)
            self.trouble = True
            then = self.on_trouble
            if then is not None:
                then()
        return False

    @contextmanager
    def ours(self) -> Iterator[None]:
        local = self.local
        before = getattr(local, "ours", False)
        local.ours = True
        try:
            yield
        finally:
            local.ours = before


_EXPORTERS = "opentelemetry.exporter."
#: The loggers the SDK's exporters and processors log our exports' trouble on.
_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk.metrics._internal.export",
    "opentelemetry.sdk.metrics._internal",
)


@dataclass
class Delivery:
    """What became of the spans (and metric exports): counted on pyprobes' threads."""

    submitted: int = 0  # spans handed to the processor
    exported: int = 0  # spans the receiver took
    failed: int = 0  # spans in exports that failed
    metric_exports: int = 0
    metric_failures: int = 0
    error: str | None = None  # why the last export failed


class _Spans(SpanExporter):
    """The OTLP/HTTP span exporter, counted, quiet, and on a thread of pyprobes' own."""

    def __init__(
        self, inner: OTLPSpanExporter, delivery: Delivery, quiet: _Quiet, ctx: ThreadContext
    ) -> None:
        self.inner, self.delivery, self.quiet, self.ctx = inner, delivery, quiet, ctx
        self.failing = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = SpanExportResult.FAILURE
        with self.ctx(), self.quiet.ours():
            try:
                result = self.inner.export(spans)
            except Exception as exc:
                self.quiet.last = f"{type(exc).__name__}: {exc}"
        if result is SpanExportResult.SUCCESS:
            self.delivery.exported += len(spans)
            self.failing = self.quiet.trouble = False
        else:
            self.delivery.failed += len(spans)
            self.delivery.error = self.quiet.last
            self.failing = True
        return result

    def shutdown(self) -> None:
        with self.ctx(), self.quiet.ours():
            self.inner.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _Metrics(MetricExporter):
    """The OTLP/HTTP metric exporter, counted, quiet, and on a thread of pyprobes' own."""

    def __init__(
        self, inner: OTLPMetricExporter, delivery: Delivery, quiet: _Quiet, ctx: ThreadContext
    ) -> None:
        super().__init__(preferred_temporality={}, preferred_aggregation={})
        self.inner, self.delivery, self.quiet, self.ctx = inner, delivery, quiet, ctx
        self.failing = False

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        result = MetricExportResult.FAILURE
        with self.ctx(), self.quiet.ours():
            try:
                result = self.inner.export(metrics_data, timeout_millis=timeout_millis)
            except Exception as exc:
                self.quiet.last = f"{type(exc).__name__}: {exc}"
        if result is MetricExportResult.SUCCESS:
            self.delivery.metric_exports += 1
            self.failing = self.quiet.trouble = False
        else:
            self.delivery.metric_failures += 1
            self.delivery.error = self.quiet.last
            self.failing = True
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        with self.ctx(), self.quiet.ours():
            self.inner.shutdown()


class _SpanRenderer:
    """The span thread's "renderer": builds each return event's span and hands it to the
    batch processor; writes nothing."""

    def __init__(self, builder: SpanBuilder, submit: Callable[[ReadableSpan], None]) -> None:
        self.builder, self.submit = builder, submit

    def header(self) -> str:
        return ""

    def footer(self) -> str:
        return ""

    def render(self, event: Event) -> str:
        span = self.builder.span(event)
        if span is not None:
            self.submit(span)
        return ""


class _NullHandle:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _NullSink:
    def open(self) -> _NullHandle:
        return _NullHandle()


#: What a metric export reads: the aggregations (a snapshot, never reset) and the summary rows.
Reader = Callable[[], tuple[Aggregator | None, list[SummaryRow]]]


class OtlpExport:
    """Spans and metrics of one session to an OTLP/HTTP endpoint.

    Thread rules: ``emit`` runs on the probed threads (O(1), never blocks or raises: it is the
    span thread's ``EventWriter.emit``); spans are built and handed to the processor on that
    thread; the SDK exports on its own threads (under ``thread_context``, so no probe fires in
    the export); ``finish`` runs once, at the end of the run.

    The SDK's environment variables for the batch processor (``OTEL_BSP_MAX_QUEUE_SIZE``,
    ``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``), the metric reader
    (``OTEL_METRIC_EXPORT_INTERVAL``) and the exporters (``OTEL_EXPORTER_OTLP_TIMEOUT``,
    ``..._HEADERS``) apply.
    """

    def __init__(
        self,
        endpoint: str,
        resource: Resource,
        *,
        thread_context: ThreadContext = nullcontext,
        capacity: int = QUEUE_CAPACITY,
        version: str | None = None,
    ) -> None:
        self.traces_url, self.metrics_url = endpoint_urls(endpoint)
        self.resource = resource
        self.scope = InstrumentationScope(SCOPE, version)
        self.delivery = Delivery()
        self._ctx = thread_context
        self._quiet = _Quiet()
        for name in _LOGGERS:
            logging.getLogger(name).addFilter(self._quiet)
        self._span_exporter = _Spans(
            OTLPSpanExporter(endpoint=self.traces_url), self.delivery, self._quiet, thread_context
        )
        with self._quiet.ours():
            self._processor = BatchSpanProcessor(self._span_exporter)
        self.builder = SpanBuilder(resource, scope=self.scope)
        self.start_ns = time.time_ns()
        self._writer = EventWriter(
            _SpanRenderer(self.builder, self._submit),
            _NullSink(),
            capacity,
            thread_context=thread_context,
        )
        self.emit = self._writer.emit
        self._metric_exporter: _Metrics | None = None
        self._reader: PeriodicExportingMetricReader | None = None
        self._budget = KeyBudget()
        self._dropped_early = 0  # return records a ring of records lost (dropped_early)
        self._finished = False
        self._aborted = False
        # A forked child inherits all this (and the SDK restarts its threads there): the
        # parent alone exports and reports; the child's copies send nothing.
        self._pid = os.getpid()

    def _submit(self, span: ReadableSpan) -> None:
        self.delivery.submitted += 1
        with self._quiet.ours():
            self._processor.on_end(span)

    def start_metrics(self, read: Reader) -> None:
        """Send the aggregations every OTEL_METRIC_EXPORT_INTERVAL ms (default 60 s) and at
        the end, through the SDK's periodic reader."""
        exporter = _Metrics(
            OTLPMetricExporter(endpoint=self.metrics_url), self.delivery, self._quiet, self._ctx
        )

        def collect(reader: object, timeout_millis: float = 10_000) -> MetricsData | None:
            if os.getpid() != self._pid:
                return None
            with self._ctx(), self._quiet.ours():
                try:
                    aggregator, rows = read()
                    return metrics_data(
                        aggregator,
                        rows,
                        resource=self.resource,
                        budget=self._budget,
                        start_ns=self.start_ns,
                        scope=self.scope,
                    )
                except Exception as exc:
                    self._quiet.last = f"reading the aggregations failed: {exc!r}"
                    return None

        with self._quiet.ours():
            reader = PeriodicExportingMetricReader(exporter)
            # What a MeterProvider does; we have none (the figures are gathered already).
            reader._set_collect_callback(collect)  # type: ignore[arg-type]
        self._metric_exporter, self._reader = exporter, reader

    def finish(self, timeout: float = FINISH_TIMEOUT) -> None:
        """Build the spans still queued, send them and the last metrics (at most ``timeout``
        seconds, less when the receiver is failing), and stop the threads."""
        if self._finished or os.getpid() != self._pid:
            return
        self._finished = True
        deadline = time.monotonic() + timeout
        self._writer.close(timeout)
        with self._ctx(), self._quiet.ours():
            # A failing receiver (now, or at the first refused export from here on): stop
            # the exporters' retries, which back off until their timeout, so that what is
            # left fails at once instead of holding the program's exit; it is counted.
            self._quiet.on_trouble = self._abort
            exporters = (self._span_exporter, self._metric_exporter)
            if self._quiet.trouble or any(e is not None and e.failing for e in exporters):
                self._abort()
            try:
                self._processor.shutdown()  # type: ignore[no-untyped-call]
            except Exception:
                pass
            if self._reader is not None:
                millis = max(0.0, deadline - time.monotonic()) * 1000
                try:
                    self._reader.shutdown(timeout_millis=max(millis, 1000.0))
                except Exception:
                    pass

    def _abort(self) -> None:
        if self._aborted:
            return
        self._aborted = True
        for exporter in (self._span_exporter, self._metric_exporter):
            if exporter is not None:
                try:
                    exporter.inner.shutdown()
                except Exception:
                    pass

    def dropped_early(self, n: int) -> None:
        """Count ``n`` spans lost before they reached ``emit`` (a full ring of records).
        One caller thread at a time (the thread that drains the ring)."""
        self._dropped_early += n

    @property
    def lost(self) -> int:
        """Spans never delivered: dropped before the processor, by its queue, or failed."""
        d = self.delivery
        queued_out = max(0, d.submitted - d.exported - d.failed)
        return self._writer.lost + self._dropped_early + queued_out + d.failed

    def report(self) -> list[str]:
        """The lines for the end of the run: what was sent, and what was lost and why."""
        if os.getpid() != self._pid:
            return []
        d = self.delivery
        n = d.exported
        lines = [f"pyprobes: OTLP: {n:,} span{'' if n == 1 else 's'} sent to {self.traces_url}"]
        lost = self.lost
        if lost or d.metric_failures:
            reasons = []
            early = self._writer.lost + self._dropped_early
            if early:
                reasons.append(f"{early:,} dropped before export (the span queue was full)")
            queued_out = max(0, d.submitted - d.exported - d.failed)
            if queued_out:
                reasons.append(
                    f"{queued_out:,} dropped by the export queue (full, or unsent at the end)"
                )
            if d.failed:
                reasons.append(f"{d.failed:,} in exports that failed")
            if d.metric_failures:
                m = d.metric_failures
                reasons.append(f"{m:,} metric export{'' if m == 1 else 's'} failed")
            why = f": {failure_reason(d.error)}" if d.error else ""
            lines.append(
                f"pyprobes: warning: OTLP: {lost:,} span{'' if lost == 1 else 's'} not"
                f" delivered ({'; '.join(reasons)}){why}"
            )
        return lines
