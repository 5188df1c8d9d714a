"""The Prometheus text exposition format of the aggregations: exact text, escaping, buckets."""

from __future__ import annotations

import re

import pytest
from output_helpers import make_event

from pyprobes.output import Aggregator, Event, Log2Histogram, SummaryRow
from pyprobes.output.prometheus import (
    MIN_DURATION_BUCKETS,
    OVERFLOW_KEY,
    KeyBudget,
    escape_label,
    format_number,
    histogram_buckets,
    key_label,
    ns_as_seconds,
    render_metrics,
)


def _ev(name: str, args: dict[str, object] | None = None, duration_ns: int | None = None) -> Event:
    return make_event("r", args, event=name, duration_ns=duration_ns)


def _samples(text: str) -> dict[str, str]:
    """``name{labels}`` -> value for every sample line (comments left out)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            assert series not in out, f"duplicate series {series}"
            out[series] = value
    return out


def test_counts_by_key_and_a_value_histogram_exactly() -> None:
    agg = Aggregator(count=True, by_field="k", hist_field="n")
    for k, n in [("GET", 1), ("GET", 5), ("POST", 2)]:
        agg.add(_ev("req", {"k": k, "n": n}))
    text = render_metrics(agg.snapshot(), [SummaryRow("req", 4, 1, 2)], labels={"pid": "7"})
    assert text == (
        "# HELP pyprobes_probe_hits_total Probe hits, per event.\n"
        "# TYPE pyprobes_probe_hits_total counter\n"
        'pyprobes_probe_hits_total{event="req",pid="7"} 4\n'
        "# HELP pyprobes_probe_misses_total Return-probe calls missed: no free instance.\n"
        "# TYPE pyprobes_probe_misses_total counter\n"
        'pyprobes_probe_misses_total{event="req",pid="7"} 1\n'
        "# HELP pyprobes_events_lost_total Events never written, per event.\n"
        "# TYPE pyprobes_events_lost_total counter\n"
        'pyprobes_events_lost_total{event="req",pid="7"} 2\n'
        "# HELP pyprobes_events_total Events counted (--count), per --by key.\n"
        "# TYPE pyprobes_events_total counter\n"
        'pyprobes_events_total{event="req",key="GET",pid="7"} 2\n'
        'pyprobes_events_total{event="req",key="POST",pid="7"} 1\n'
        "# HELP pyprobes_value Log2 histogram of a field (--hist FIELD).\n"
        "# TYPE pyprobes_value histogram\n"
        'pyprobes_value_bucket{event="req",field="n",key="GET",pid="7",le="1"} 1\n'
        'pyprobes_value_bucket{event="req",field="n",key="GET",pid="7",le="3"} 1\n'
        'pyprobes_value_bucket{event="req",field="n",key="GET",pid="7",le="7"} 2\n'
        'pyprobes_value_bucket{event="req",field="n",key="GET",pid="7",le="+Inf"} 2\n'
        'pyprobes_value_sum{event="req",field="n",key="GET",pid="7"} 6\n'
        'pyprobes_value_count{event="req",field="n",key="GET",pid="7"} 2\n'
        # the same buckets for every series of the family, so sum by (le) adds like with like
        'pyprobes_value_bucket{event="req",field="n",key="POST",pid="7",le="1"} 0\n'
        'pyprobes_value_bucket{event="req",field="n",key="POST",pid="7",le="3"} 1\n'
        'pyprobes_value_bucket{event="req",field="n",key="POST",pid="7",le="7"} 1\n'
        'pyprobes_value_bucket{event="req",field="n",key="POST",pid="7",le="+Inf"} 1\n'
        'pyprobes_value_sum{event="req",field="n",key="POST",pid="7"} 2\n'
        'pyprobes_value_count{event="req",field="n",key="POST",pid="7"} 1\n'
    )


def test_a_duration_histogram_is_in_seconds_with_exact_bounds() -> None:
    agg = Aggregator(count=True, hist_field="$duration")
    for d in (300, 1_000, 1_023, 1_024, 5_000_000_000):
        agg.add(_ev("w", duration_ns=d))
    s = _samples(render_metrics(agg.snapshot(), [], info={"version": "1"}))
    assert s['pyprobes_info{version="1"}'] == "1"
    assert s['pyprobes_events_total{event="w"}'] == "5"
    assert s['pyprobes_duration_seconds_bucket{event="w",le="0.000000255"}'] == "0"
    assert s['pyprobes_duration_seconds_bucket{event="w",le="0.000000511"}'] == "1"
    # le is "less than or equal": 1023 ns is in le=1023ns, 1024 ns only in the next one
    assert s['pyprobes_duration_seconds_bucket{event="w",le="0.000001023"}'] == "3"
    assert s['pyprobes_duration_seconds_bucket{event="w",le="0.000002047"}'] == "4"
    assert s['pyprobes_duration_seconds_bucket{event="w",le="4.294967295"}'] == "4"
    assert s['pyprobes_duration_seconds_bucket{event="w",le="8.589934591"}'] == "5"
    assert s['pyprobes_duration_seconds_bucket{event="w",le="+Inf"}'] == "5"
    assert s['pyprobes_duration_seconds_sum{event="w"}'] == "5.000003347"
    assert s['pyprobes_duration_seconds_count{event="w"}'] == "5"
    les = [k for k in s if k.startswith("pyprobes_duration_seconds_bucket")]
    assert len(les) == MIN_DURATION_BUCKETS + 1  # 1 ns .. 68.7 s, always, then +Inf


def test_buckets_are_cumulative_and_end_in_the_count() -> None:
    h = Log2Histogram("value")
    for v in (0, 1, 2, 3, 4, 9, 9, 100):
        h.add(v)
    rows = histogram_buckets(h)
    assert rows == [
        ("1", 2),
        ("3", 4),
        ("7", 5),
        ("15", 7),
        ("31", 7),
        ("63", 7),
        ("127", 8),
        ("+Inf", 8),
    ]
    counts = [n for _, n in rows]
    assert counts == sorted(counts)
    d = Log2Histogram("nsecs")
    d.add(70_000_000_000)  # beyond the fixed range: buckets are added up to it
    assert histogram_buckets(d)[-2:] == [("137.438953471", 1), ("+Inf", 1)]


def test_label_values_are_escaped_per_the_format() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert escape_label("caf\u00e9 \t\x1b") == "caf\u00e9 \t\x1b"  # valid UTF-8 is kept
    assert escape_label("x\ud800y") == "x\\ud800y"  # a lone surrogate is no UTF-8
    agg = Aggregator(by_field="k")
    agg.add(_ev('e"v\n', {"k": 'say "hi"\\\n'}))
    text = render_metrics(agg.snapshot(), [])
    assert 'pyprobes_events_total{event="e\\"v\\n",key="say \\"hi\\"\\\\\\n"} 1\n' in text
    text.encode("utf-8")
    for line in text.splitlines():  # one sample per line: no raw newline got through
        assert re.fullmatch(r'(#.*|pyprobes_\w+\{(\w+="([^"\\]|\\.)*",?)*\} \S+)', line), line


def test_keys_as_labels() -> None:
    assert key_label("GET") == "GET"
    assert key_label(None) == "None"
    assert key_label(404) == "404"
    assert len(key_label("x" * 10_000)) == 512
    agg = Aggregator(by_field="k")
    for k in (1, "1", [1, 2], {"b": 1, "a": 2}):
        agg.add(_ev("e", {"k": k}))
    s = _samples(render_metrics(agg.snapshot(), []))
    # 1 and "1" are one label value: their counts are one series, never two alike
    assert s['pyprobes_events_total{event="e",key="1"}'] == "2"
    assert s['pyprobes_events_total{event="e",key="[1, 2]"}'] == "1"
    assert s['pyprobes_events_total{event="e",key="{\\"a\\": 2, \\"b\\": 1}"}'] == "1"


def test_keys_beyond_the_budget_go_to_one_overflow_series_for_good() -> None:
    budget = KeyBudget(2)
    agg = Aggregator(count=True, by_field="k", hist_field="$duration")
    for k, n in [("a", 3), ("b", 2), ("c", 1), ("d", 1)]:
        for _ in range(n):
            agg.add(_ev("w", {"k": k}, duration_ns=1_000))
    s = _samples(render_metrics(agg.snapshot(), [], budget=budget))
    assert s['pyprobes_events_total{event="w",key="a"}'] == "3"
    assert s['pyprobes_events_total{event="w",key="b"}'] == "2"
    assert s[f'pyprobes_events_total{{event="w",key="{OVERFLOW_KEY}"}}'] == "2"
    assert s[f'pyprobes_duration_seconds_count{{event="w",key="{OVERFLOW_KEY}"}}'] == "2"
    assert 'pyprobes_events_total{event="w",key="c"}' not in s
    # c grows past a and b: it stays in the overflow series (series only ever grow)
    for _ in range(10):
        agg.add(_ev("w", {"k": "c"}, duration_ns=1_000))
    s2 = _samples(render_metrics(agg.snapshot(), [], budget=budget))
    assert s2['pyprobes_events_total{event="w",key="a"}'] == "3"
    assert s2[f'pyprobes_events_total{{event="w",key="{OVERFLOW_KEY}"}}'] == "12"
    assert s2[f'pyprobes_duration_seconds_count{{event="w",key="{OVERFLOW_KEY}"}}'] == "12"
    assert set(s2) == set(s)
    with pytest.raises(ValueError):
        KeyBudget(0)


def test_stats_are_a_summary_and_gauges() -> None:
    agg = Aggregator(stats_field="$duration")
    for d in (1_000, 2_000, 3_000_000):
        agg.add(_ev("w", duration_ns=d))
    s = _samples(render_metrics(agg.snapshot(), []))
    assert s['pyprobes_duration_stats_seconds_count{event="w"}'] == "3"
    assert s['pyprobes_duration_stats_seconds_sum{event="w"}'] == "0.003003"
    assert s['pyprobes_duration_min_seconds{event="w"}'] == "0.000001"
    assert s['pyprobes_duration_max_seconds{event="w"}'] == "0.003"
    p50 = float(s['pyprobes_duration_stats_seconds{event="w",quantile="0.5"}'])
    assert p50 == pytest.approx(2e-6, rel=0.011)  # the sketch's 1 % (see Stats)
    other = Aggregator(stats_field="n")
    other.add(_ev("e", {"n": 2.5}))
    s = _samples(render_metrics(other.snapshot(), []))
    assert s['pyprobes_value_stats_count{event="e",field="n"}'] == "1"
    assert s['pyprobes_value_max{event="e",field="n"}'] == "2.5"


def test_summary_rows_of_one_event_are_one_series_and_skips_are_counted() -> None:
    rows = [SummaryRow("w", 3, 0, 0), SummaryRow("w", 4, 1, 0)]
    agg = Aggregator(hist_field="n")
    agg.add(_ev("w", {"n": "text"}))
    s = _samples(render_metrics(agg.snapshot(), rows))
    assert s['pyprobes_probe_hits_total{event="w"}'] == "7"
    assert s['pyprobes_probe_misses_total{event="w"}'] == "1"
    assert s['pyprobes_values_skipped_total{event="w",field="n"}'] == "1"


def test_numbers() -> None:
    assert ns_as_seconds(0) == "0"
    assert ns_as_seconds(1) == "0.000000001"
    assert ns_as_seconds(1_500_000_000) == "1.5"
    assert ns_as_seconds(-2) == "-0.000000002"
    assert [format_number(v) for v in (3, 0.25, float("inf"), float("-inf"))] == [
        "3",
        "0.25",
        "+Inf",
        "-Inf",
    ]
    assert format_number(float("nan")) == "NaN"


def test_no_aggregations_only_the_counters() -> None:
    text = render_metrics(None, [SummaryRow("x", 1, 0, 0)])
    assert _samples(text) == {
        'pyprobes_probe_hits_total{event="x"}': "1",
        'pyprobes_probe_misses_total{event="x"}': "0",
        'pyprobes_events_lost_total{event="x"}': "0",
    }
    assert render_metrics(None, []) == ""


def test_a_linear_histogram_is_a_histogram_with_the_buckets_of_its_bounds() -> None:
    agg = Aggregator(lhist_field="n", lhist_bounds=(-10, 20, 10), by_field="k")
    for k, n in [("a", -11), ("a", -10), ("a", 0), ("a", 25), ("b", 19), ("a", 9.5)]:
        agg.add(_ev("req", {"k": k, "n": n}))
    s = _samples(render_metrics(agg.snapshot(), []))
    head = 'pyprobes_value_bucket{event="req",field="n",key="a",le='
    # le="B" counts the values below B (bpftrace's buckets are [B - STEP, B))
    assert [s[f'{head}"{le}"}}'] for le in ("-10", "0", "10", "20", "+Inf")] == [
        "1",
        "2",
        "4",
        "4",
        "5",
    ]
    assert s['pyprobes_value_sum{event="req",field="n",key="a"}'] == str(-11 - 10 + 0 + 25 + 9)
    assert s['pyprobes_value_count{event="req",field="n",key="a"}'] == "5"
    assert s['pyprobes_value_bucket{event="req",field="n",key="b",le="10"}'] == "0"
    assert s['pyprobes_value_bucket{event="req",field="n",key="b",le="20"}'] == "1"
    text = render_metrics(agg.snapshot(), [])
    assert "# TYPE pyprobes_value histogram\n" in text
    les = [k for k in s if k.startswith("pyprobes_value_bucket") and 'key="a"' in k]
    assert len(les) == 5  # MIN, the 3 buckets' tops, +Inf: the same layout for every series


def test_a_linear_duration_histogram_is_in_seconds() -> None:
    agg = Aggregator(lhist_field="$duration", lhist_bounds=(0, 2_000_000, 1_000_000))
    for d in (5, 1_000_000, 3_000_000_000):
        agg.add(_ev("w", duration_ns=d))
    s = _samples(render_metrics(agg.snapshot(), []))
    assert s['pyprobes_duration_seconds_bucket{event="w",le="0"}'] == "0"
    assert s['pyprobes_duration_seconds_bucket{event="w",le="0.001"}'] == "1"
    assert s['pyprobes_duration_seconds_bucket{event="w",le="0.002"}'] == "2"
    assert s['pyprobes_duration_seconds_bucket{event="w",le="+Inf"}'] == "3"
    assert s['pyprobes_duration_seconds_sum{event="w"}'] == "3.001000005"
