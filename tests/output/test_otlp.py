"""output.otlp: spans from return events, OTLP metrics from aggregations, endpoints."""

from __future__ import annotations

import pytest

# The test extras install the SDK (pyproject.toml): a missing one fails here.
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import StatusCode

from pyprobes.output import Aggregator, Event, SummaryRow
from pyprobes.output.otlp import (
    SpanBuilder,
    attribute_value,
    endpoint_urls,
    exception_type,
    failure_reason,
    metrics_data,
)
from pyprobes.output.prometheus import KeyBudget

RESOURCE = Resource.create({"service.name": "test"})
OFFSET = 1_700_000_000_000_000_000


def _event(
    link: tuple[int, int, int, int, int] | None,
    *,
    name: str = "work",
    time_ns: int = 5_000,
    duration_ns: int | None = 1_000,
    args: dict[str, object] | None = None,
    exception: str | None = None,
    key: object = None,
) -> Event:
    return Event(
        event=name,
        group="pyprobes",
        kind="r" if duration_ns is not None else "p",
        probe="app.mod:Box.work",
        location="app/mod.py:3",
        time_ns=time_ns,
        pid=42,
        thread_id=7,
        thread_name="MainThread",
        args={"n": 3, "k": key} if args is None else args,
        retval=None,
        exception=exception,
        duration_ns=duration_ns,
        activation=link,
    )


def _builder() -> SpanBuilder:
    return SpanBuilder(RESOURCE, clock_offset_ns=OFFSET, salt=bytes(range(24)))


def test_a_child_names_its_parent_and_shares_its_trace() -> None:
    b = _builder()
    parent = b.span(_event((1, 0, 1, 0, 0), time_ns=10_000, duration_ns=9_000))
    child = b.span(_event((2, 1, 1, 0, 0), time_ns=8_000, duration_ns=2_000))
    assert parent is not None and child is not None
    assert parent.parent is None
    assert child.parent is not None and parent.context is not None and child.context is not None
    assert child.parent.span_id == parent.context.span_id == b.span_id(1)
    assert child.context.span_id == b.span_id(2)
    assert child.context.trace_id == parent.context.trace_id == b.trace_id(1)
    assert child.context.trace_flags.sampled  # the batch processor drops unsampled spans
    assert (parent.start_time, parent.end_time) == (OFFSET + 1_000, OFFSET + 10_000)
    assert (child.start_time, child.end_time) == (OFFSET + 6_000, OFFSET + 8_000)


def test_a_root_under_the_programs_span_takes_its_trace_and_parent() -> None:
    b = _builder()
    trace_id, span_id = 0x1234_5678_9ABC_DEF0_1234_5678_9ABC_DEF0, 0xFEDC_BA98_7654_3210
    root = b.span(_event((5, 0, 5, trace_id, span_id)))
    kid = b.span(_event((6, 5, 5, trace_id, 0)))
    assert root is not None and kid is not None and root.context is not None
    assert root.parent is not None and root.parent.span_id == span_id
    assert root.context.trace_id == trace_id
    assert kid.parent is not None and kid.parent.span_id == root.context.span_id
    assert kid.context is not None and kid.context.trace_id == trace_id


def test_ids_are_distinct_nonzero_and_depend_on_the_salt() -> None:
    b = _builder()
    spans = {b.span_id(n) for n in range(1, 20_001)}
    traces = {b.trace_id(n) for n in range(1, 20_001)}
    assert len(spans) == len(traces) == 20_000 and 0 not in spans and 0 not in traces
    assert all(s < 1 << 64 for s in spans) and all(t < 1 << 128 for t in traces)
    other = SpanBuilder(RESOURCE, salt=bytes(24))
    assert other.span_id(1) != b.span_id(1)


def test_attributes_name_and_status() -> None:
    b = _builder()
    span = b.span(_event((1, 0, 1, 0, 0), args={"n": 3, "s": "x", "none": None}))
    assert span is not None and span.attributes is not None
    assert span.name == "work"
    assert dict(span.attributes) == {
        "n": 3,
        "s": "x",
        "none": "null",
        "code.function.name": "app.mod:Box.work",
        "thread.id": 7,
        "thread.name": "MainThread",
        "pyprobes.probe": "app.mod:Box.work",
    }
    assert span.status.status_code is StatusCode.UNSET
    bad = b.span(_event((2, 0, 2, 0, 0), exception="mod.Oops('no')"))
    assert bad is not None and bad.attributes is not None
    assert bad.status.status_code is StatusCode.ERROR
    assert bad.status.description == "mod.Oops"
    assert bad.attributes["exception.type"] == "mod.Oops"


def test_events_without_an_activation_make_no_span() -> None:
    b = _builder()
    assert b.span(_event(None)) is None
    assert b.span(_event((1, 0, 1, 0, 0), duration_ns=None)) is None  # an entry event


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", "text"),
        (True, True),
        (1.5, 1.5),
        (-(1 << 63), -(1 << 63)),
        (1 << 63, "9223372036854775808"),
        (None, "null"),
        ([1, "a"], '[1,"a"]'),
        ({"k": [None]}, '{"k":[null]}'),
        ("bad\udcff", "bad\\udcff"),  # protobuf cannot encode a lone surrogate
    ],
)
def test_attribute_values(value: object, expected: object) -> None:
    assert attribute_value(value) == expected


def test_exception_type_and_failure_reason() -> None:
    assert exception_type("ValueError('x: y')") == "ValueError"
    assert exception_type(None) == "?"
    line = (
        "Transient error HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded"
        ' (Caused by NewConnectionError("...: [Errno 111] Connection refused")) encountered'
    )
    assert failure_reason(line) == "[Errno 111] Connection refused"
    assert failure_reason("odd\x1b[2J") == "odd\\x1b[2J"


@pytest.mark.parametrize(
    ("endpoint", "traces"),
    [
        ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
        ("http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/traces"),
        ("https://collector/otlp", "https://collector/otlp/v1/traces"),
        ("http://h:1/v1/traces", "http://h:1/v1/traces"),
        ("http://h:1/v1/metrics", "http://h:1/v1/traces"),
    ],
)
def test_endpoint_urls(endpoint: str, traces: str) -> None:
    assert endpoint_urls(endpoint) == (traces, traces.replace("v1/traces", "v1/metrics"))


@pytest.mark.parametrize("endpoint", ["127.0.0.1:4318", "ftp://h", "http://", "http://h:99999"])
def test_bad_endpoints(endpoint: str) -> None:
    with pytest.raises(ValueError):
        endpoint_urls(endpoint)


def _metrics(agg: Aggregator, rows: list[SummaryRow]) -> dict[str, object]:
    data = metrics_data(agg, rows, resource=RESOURCE, budget=KeyBudget(2), start_ns=100, now_ns=200)
    (rm,) = data.resource_metrics
    (sm,) = rm.scope_metrics
    assert sm.scope.name == "pyprobes"
    return {m.name: m for m in sm.metrics}


def test_counts_and_hits_are_cumulative_monotonic_sums() -> None:
    agg = Aggregator(count=True)
    for _ in range(3):
        agg.add(_event((1, 0, 1, 0, 0)))
    got = _metrics(agg, [SummaryRow("work", 3, 1, 0, 0, None)])
    events = got["pyprobes.events"].data  # type: ignore[attr-defined]
    assert events.is_monotonic and events.aggregation_temporality.name == "CUMULATIVE"
    ((point,),) = [events.data_points]
    assert (point.attributes, point.value) == ({"event": "work"}, 3)
    assert (point.start_time_unix_nano, point.time_unix_nano) == (100, 200)
    hits = got["pyprobes.probe.hits"].data.data_points  # type: ignore[attr-defined]
    misses = got["pyprobes.probe.misses"].data.data_points  # type: ignore[attr-defined]
    assert [p.value for p in hits] == [3] and [p.value for p in misses] == [1]


def test_keys_past_the_budget_add_up_in_one_overflow_series() -> None:
    agg = Aggregator(count=True, by_field="k")
    for k in ["a", "a", "b", "c", "d"]:
        agg.add(_event((1, 0, 1, 0, 0), key=k))
    points = _metrics(agg, [])["pyprobes.events"].data.data_points  # type: ignore[attr-defined]
    assert {p.attributes["key"]: p.value for p in points} == {"a": 2, "b": 1, "__overflow__": 2}


def test_a_duration_histogram_has_the_log2_buckets_in_seconds() -> None:
    agg = Aggregator(hist_field="$duration")
    for d in (0, 1, 2, 3, 1000, 1023, 1024):
        agg.add(_event((1, 0, 1, 0, 0), duration_ns=d))
    hist = _metrics(agg, [])["pyprobes.duration"]
    assert hist.unit == "s"  # type: ignore[attr-defined]
    (point,) = hist.data.data_points  # type: ignore[attr-defined]
    assert point.count == 7 and point.sum == pytest.approx(3053e-9)
    assert point.max == pytest.approx(1024e-9)
    bounds = point.explicit_bounds
    assert len(bounds) == 36  # as /metrics: at least up to 2**36 - 1 ns, so bounds stay put
    assert bounds[:4] == [1e-9, 3e-9, 7e-9, 15e-9]
    counts = point.bucket_counts
    assert len(counts) == len(bounds) + 1 and sum(counts) == 7
    assert counts[:3] == [2, 2, 0]  # 0 and 1 <= 1 ns; 2 and 3 <= 3 ns
    assert counts[9] == 2 and counts[10] == 1  # 1000, 1023 <= 1023 ns; 1024 <= 2047 ns


def test_a_histogram_of_another_field_is_pyprobes_value() -> None:
    agg = Aggregator(hist_field="n")
    agg.add(_event((1, 0, 1, 0, 0)))
    (point,) = _metrics(agg, [])["pyprobes.value"].data.data_points  # type: ignore[attr-defined]
    assert point.attributes == {"event": "work", "field": "n"}
    assert point.explicit_bounds == [1.0, 3.0] and point.bucket_counts == [0, 1, 0]


def test_stats_are_gauges_per_statistic_in_seconds_for_durations() -> None:
    agg = Aggregator(stats_field="$duration")
    for d in (1000, 2000, 3000):
        agg.add(_event((1, 0, 1, 0, 0), duration_ns=d))
    metric = _metrics(agg, [])["pyprobes.duration.stats"]
    assert metric.unit == "s"  # type: ignore[attr-defined]
    got = {p.attributes["stat"]: p.value for p in metric.data.data_points}  # type: ignore[attr-defined]
    assert got["count"] == 3 and got["sum"] == pytest.approx(6e-6)
    assert got["min"] == pytest.approx(1e-6) and got["max"] == pytest.approx(3e-6)
    assert got["mean"] == pytest.approx(2e-6) and got["p50"] == pytest.approx(2e-6, rel=0.02)
    assert set(got) == {"count", "sum", "min", "max", "mean", "p50", "p90", "p99"}
    other = Aggregator(stats_field="n")
    other.add(_event((1, 0, 1, 0, 0)))
    (count, *_) = _metrics(other, [])["pyprobes.value.stats"].data.data_points  # type: ignore[attr-defined]
    assert count.attributes == {"event": "work", "field": "n", "stat": "count"}
    assert "pyprobes.value.stats" not in _metrics(Aggregator(stats_field="n"), [])


def test_a_linear_histogram_has_its_own_bounds_as_explicit_buckets() -> None:
    agg = Aggregator(lhist_field="$duration", lhist_bounds=(0, 2_000, 1_000), by_field="k")
    for d, k in ((5, "a"), (1_500, "a"), (9_000, "a"), (-1, "b")):
        agg.add(_event((1, 0, 1, 0, 0), duration_ns=d, key=k))
    hist = _metrics(agg, [])["pyprobes.duration"]
    points = {p.attributes["key"]: p for p in hist.data.data_points}  # type: ignore[attr-defined]
    a, b = points["a"], points["b"]
    assert a.explicit_bounds == [0.0, 1e-6, 2e-6]
    assert a.bucket_counts == [0, 1, 1, 1]  # below 0, [0, 1us), [1us, 2us), from 2us up
    assert a.count == 3 and a.sum == pytest.approx(10_505e-9)
    assert b.bucket_counts == [1, 0, 0, 0]
    field = Aggregator(lhist_field="n", lhist_bounds=(0, 10, 5))
    field.add(_event((1, 0, 1, 0, 0)))  # n = 3
    (point,) = _metrics(field, [])["pyprobes.value"].data.data_points  # type: ignore[attr-defined]
    assert point.attributes == {"event": "work", "field": "n"}
    assert point.explicit_bounds == [0.0, 5.0, 10.0] and point.bucket_counts == [0, 1, 0, 0]


def test_the_resource_hashes_once_and_equals_the_sdks(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk import resources

    from pyprobes.output.otlp import make_resource

    r = make_resource("svc", 42)
    same = resources.Resource.create(dict(r.attributes))
    sdk_hash = hash(same)
    assert r == same and same == r and hash(r) == sdk_hash

    def no_dumps(*args: object, **kwargs: object) -> str:
        raise AssertionError("the resource was hashed again")

    # the SDK's encoder hashes the resource per span: that is now a stored int
    monkeypatch.setattr(resources, "dumps", no_dumps)
    assert hash(r) == sdk_hash
    with pytest.raises(AssertionError):
        hash(same)
