"""Aggregations: log2 histograms, counts by key, stats sketch, and the per-event Aggregator."""

from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from output_helpers import make_event

from pyprobes.output import Aggregator, CountBy, Event, LinearHistogram, Log2Histogram, Stats
from pyprobes.output.aggregate import linear_bucket, linear_value

# -- Log2Histogram -----------------------------------------------------------------------


def _hist(values: list[int], unit: str = "nsecs") -> Log2Histogram:
    h = Log2Histogram(unit)
    for v in values:
        h.add(v)
    return h


def test_bucket_edges_match_bcc() -> None:
    assert [Log2Histogram.bucket_of(v) for v in (0, 1, 2, 3, 4, 7, 8, 15, 16)] == [
        1,
        1,
        2,
        2,
        3,
        3,
        4,
        4,
        5,
    ]
    assert [Log2Histogram.bucket_bounds(i) for i in (1, 2, 3, 4)] == [
        (0, 1),
        (2, 3),
        (4, 7),
        (8, 15),
    ]
    h = _hist([0, 1, 2, 3, 4, 7, 8])
    assert h.buckets("nsecs") == [(0, 1, 2), (2, 3, 2), (4, 7, 2), (8, 15, 1)]


def test_buckets_leave_out_leading_empties_but_keep_inner_ones() -> None:
    assert _hist([4, 64]).buckets("nsecs") == [
        (4, 7, 1),
        (8, 15, 0),
        (16, 31, 0),
        (32, 63, 0),
        (64, 127, 1),
    ]


def test_durations_are_bucketed_exactly_in_each_time_unit() -> None:
    h = _hist([999, 2_000, 3_999, 5_000_000])
    # usecs are integer-divided before bucketing, as bcc -u does: 999ns is 0us.
    assert h.buckets("usecs")[:2] == [(0, 1, 1), (2, 3, 2)]
    assert h.buckets("msecs") == [(0, 1, 3), (2, 3, 0), (4, 7, 1)]
    assert h.units == ("nsecs", "usecs", "msecs")


def test_render_is_the_funclatency_table() -> None:
    assert _hist([1, 2, 3, 4, 5, 6, 7]).render("nsecs") == (
        "     nsecs               : count     distribution\n"
        "         0 -> 1          : 1        |**********                              |\n"
        "         2 -> 3          : 2        |********************                    |\n"
        "         4 -> 7          : 4        |****************************************|\n"
        "avg = 4.00 nsecs, total = 28 nsecs, count = 7\n"
    )


def test_render_in_a_larger_unit_scales_avg_and_total() -> None:
    text = _hist([1_500_000, 2_500_000]).render("msecs")
    assert text.splitlines()[0].startswith("     msecs ")
    assert text.splitlines()[-1] == "avg = 2.00 msecs, total = 4.00 msecs, count = 2"


def test_averages_keep_three_significant_digits() -> None:
    """Issue 17.4: a sub-unit mean is not printed as ``avg = 0.0 msecs``."""
    assert _hist([10_000] * 3).render("msecs").splitlines()[-1] == (
        "avg = 0.0100 msecs, total = 0.0300 msecs, count = 3"
    )
    assert _hist([123_456]).render("usecs").splitlines()[-1].startswith("avg = 123.5 usecs")


def test_auto_unit_follows_the_distribution_not_the_maximum() -> None:
    """Issue 17.4: 4,600,406 of 4,601,377 durations fell in one ``0 -> 1 msecs`` bucket
    because a few slow calls chose the unit; the bulk decides now."""
    fast_with_outliers = _hist([2_000] * 999 + [300_000_000])
    assert fast_with_outliers.auto_unit() == "nsecs"
    rows = fast_with_outliers.buckets("nsecs")
    assert rows[0] == (1024, 2047, 999)
    assert _hist([5_000]).auto_unit() == "nsecs"
    assert _hist([50_000]).auto_unit() == "usecs"
    assert _hist([5_000_000]).auto_unit() == "usecs"
    assert _hist([50_000] * 96 + [1] * 4).auto_unit() == "usecs"  # 4 % below 8us: still usecs
    assert _hist([500_000_000]).auto_unit() == "msecs"
    assert _hist([500_000_000]).render().splitlines()[0].lstrip().startswith("msecs")
    assert _hist([5], unit="bytes").render().lstrip().startswith("bytes")


def test_small_counts_still_get_a_star_and_wide_values_widen_columns() -> None:
    lines = _hist([1] * 1000 + [4]).render("nsecs").splitlines()
    assert lines[2].endswith(": 0        |                                        |")
    assert lines[3].endswith(": 1        |*                                       |")
    wide = _hist([10**12]).render("nsecs").splitlines()
    assert wide[1].strip().startswith("549755813888 -> 1099511627775")


def test_empty_histogram_says_no_data() -> None:
    assert "no data" in Log2Histogram().render()
    assert Log2Histogram().mean is None


def test_histogram_rejects_what_it_cannot_count() -> None:
    h = Log2Histogram()
    with pytest.raises(ValueError):
        h.add(-1)
    with pytest.raises(TypeError):
        h.add(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        h.add(True)
    with pytest.raises(ValueError, match="allowed are nsecs, usecs, msecs"):
        h.render("secs")
    with pytest.raises(ValueError):
        h.merge(Log2Histogram("bytes"))


values = st.lists(st.integers(min_value=0, max_value=10**15), max_size=50)


@given(values, values)
def test_histogram_merge_equals_adding_everything_to_one(a: list[int], b: list[int]) -> None:
    ha, hb = _hist(a), _hist(b)
    merged = ha.merge(hb)
    assert merged == _hist(a + b)
    assert ha == _hist(a) and hb == _hist(b)  # inputs untouched
    assert merged.count == len(a) + len(b) and merged.total == sum(a) + sum(b)


# -- LinearHistogram ---------------------------------------------------------------------


def _lhist(values: list[int], lo: int = 0, hi: int = 100, step: int = 10) -> LinearHistogram:
    h = LinearHistogram(lo, hi, step)
    for v in values:
        h.add(v)
    return h


def test_linear_buckets_are_bpftraces() -> None:
    assert [linear_bucket(v, 0, 100, 10) for v in (-1, 0, 9, 10, 99, 100, 10**9)] == [
        0,
        1,
        1,
        2,
        10,
        11,
        11,
    ]
    assert [linear_bucket(v, -20, 20, 20) for v in (-21, -20, -1, 0, 19, 20)] == [0, 1, 1, 2, 2, 3]


def test_linear_values_are_ints_and_the_floor_of_finite_floats() -> None:
    assert [linear_value(v) for v in (3, -3, 2.9, -0.5, 2**63 - 1, -(2**63))] == [
        3,
        -3,
        2,
        -1,
        2**63 - 1,
        -(2**63),
    ]
    for v in (True, 2**63, -(2**63) - 1, 1e300, math.inf, math.nan, "1", None, [1]):
        assert linear_value(v) is None


def test_lhist_render_is_bpftraces_table() -> None:
    # what bpftrace prints for @ = lhist($x, 0, 100, 10) over these values
    h = _lhist([-5, 0, 3, 15, 15, 15, 99, 100, 250])
    assert h.render() == (
        "(..., 0)               1 |@@@@@@@@@@@@@@@@@                                   |\n"
        "[0, 10)                2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@                  |\n"
        "[10, 20)               3 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
        "[20, 30)               0 |                                                    |\n"
        "[30, 40)               0 |                                                    |\n"
        "[40, 50)               0 |                                                    |\n"
        "[50, 60)               0 |                                                    |\n"
        "[60, 70)               0 |                                                    |\n"
        "[70, 80)               0 |                                                    |\n"
        "[80, 90)               0 |                                                    |\n"
        "[90, 100)              1 |@@@@@@@@@@@@@@@@@                                   |\n"
        "[100, ...)             2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@                  |\n"
    )
    # leading and trailing empty buckets are left out; negative bounds
    assert _lhist([-7, -7, 4], -10, 10, 5).render() == (
        "[-10, -5)              2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
        "[-5, 0)                0 |                                                    |\n"
        "[0, 5)                 1 |@@@@@@@@@@@@@@@@@@@@@@@@@@                          |\n"
    )
    assert LinearHistogram(0, 10, 1).render() == ""


def test_lhist_labels_use_k_and_m_only_when_the_step_is_a_multiple_of_1024() -> None:
    h = _lhist([1025, 3 << 20], 0, 4 << 20, 1 << 20)
    assert h.render().splitlines()[0].startswith("[0, 1M)  ")
    assert h.render().splitlines()[-1].startswith("[3M, 4M)  ")
    k = _lhist([2048], 1024, 8192, 1024)
    assert k.render().startswith("[2K, 3K)               1 |")
    plain = _lhist([1024], 1000, 2000, 8)
    assert plain.render().startswith("[1024, 1032)           1 |")


def test_lhist_bars_truncate_in_float_as_bpftrace() -> None:
    # 15/26*52 is 30 in C float arithmetic, 29.999... in double: bpftrace draws 30
    h = _lhist([5] * 15 + [15] * 26)
    assert h.render().splitlines()[0] == "[0, 10)               15 |" + "@" * 30 + " " * 22 + "|"


def test_a_duration_lhist_is_shown_in_the_largest_unit_dividing_its_bounds() -> None:
    h = LinearHistogram(0, 10_000_000, 1_000_000, unit="nsecs")
    for d in (1_500_000, 3, 10**8):
        h.add(d)
    assert h.display_unit() == ("msecs", 1_000_000)
    assert h.render().splitlines()[0].startswith("[0, 1)   ")
    assert h.render().splitlines()[-1].startswith("[10, ...)   ")
    assert LinearHistogram(0, 5_000, 500, unit="nsecs").display_unit() == ("nsecs", 1)
    assert LinearHistogram(0, 5_000, 1_000, unit="nsecs").display_unit() == ("usecs", 1_000)


def test_lhist_rejects_bad_bounds_and_what_it_cannot_count() -> None:
    for bad, why in (
        ((0, 10, 0), "STEP must be positive"),
        ((10, 10, 1), "MIN must be below MAX"),
        ((0, 25, 10), r"multiple of STEP \(10\): e.g. MAX 30"),
        ((0, 1001, 1), "1001 buckets; at most 1000"),
        ((0, 2**63, 1), "within"),
        ((0, 10.0, 1), "ints"),
    ):
        with pytest.raises(ValueError, match=why):
            LinearHistogram(*bad)  # type: ignore[arg-type]
    h = LinearHistogram(0, 10, 1)
    for wrong in (1.5, True, "1"):
        with pytest.raises(TypeError):
            h.add(wrong)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        h.add(2**63)
    with pytest.raises(ValueError, match="cannot merge"):
        h.merge(LinearHistogram(0, 10, 2))
    with pytest.raises(ValueError, match="buckets are 0 to 11"):
        LinearHistogram.from_buckets((0, 10, 1), "value", {12: 1}, 1, 0)


lvalues = st.lists(st.integers(min_value=-500, max_value=500), max_size=50)


@given(lvalues, lvalues)
def test_lhist_merge_equals_adding_everything_to_one(a: list[int], b: list[int]) -> None:
    ha, hb = _lhist(a, -100, 300, 20), _lhist(b, -100, 300, 20)
    merged = ha.merge(hb)
    assert merged == _lhist(a + b, -100, 300, 20)
    assert ha == _lhist(a, -100, 300, 20) and hb == _lhist(b, -100, 300, 20)
    assert merged.count == len(a) + len(b) and merged.total == sum(a) + sum(b)
    assert merged.copy() == merged and merged.copy() is not merged


# -- CountBy -----------------------------------------------------------------------------


def test_countby_orders_by_count_then_key() -> None:
    c = CountBy()
    for key in ["b", "a", "c", "a", "c", "a", "c"]:
        c.add(key)
    assert c.most_common() == [("a", 3), ("c", 3), ("b", 1)]
    assert c.render("reqs") == "@reqs['a']: 3\n@reqs['c']: 3\n@reqs['b']: 1\n"
    assert c.total == 7 and c["a"] == 3 and c["zzz"] == 0


def test_countby_makes_containers_and_nan_hashable_and_canonical() -> None:
    c = CountBy()
    c.add([1, 2])
    c.add([1, 2])
    c.add({"b": 1, "a": 2})
    c.add({"a": 2, "b": 1})
    c.add(float("nan"))
    c.add(float("nan"))
    c.add("[1, 2]")  # a string that looks like the list is a different key
    assert len(c) == 4
    assert c[[1, 2]] == 2 and c[{"a": 2, "b": 1}] == 2 and c[math.nan] == 2
    assert c["[1, 2]"] == 1
    assert c.render() == ('@[[1, 2]]: 2\n@[nan]: 2\n@[{"a": 2, "b": 1}]: 2\n' + "@['[1, 2]']: 1\n")


@given(st.lists(st.integers(0, 5) | st.text(max_size=2)), st.lists(st.integers(0, 5)))
def test_countby_merge_equals_adding_everything(a: list[object], b: list[object]) -> None:
    ca, cb, call = CountBy(), CountBy(), CountBy()
    for k in a:
        ca.add(k)
        call.add(k)
    for k in b:
        cb.add(k)
        call.add(k)
    assert ca.merge(cb) == call


# -- Stats -------------------------------------------------------------------------------


def _stats(vals: list[float]) -> Stats:
    s = Stats()
    for v in vals:
        s.add(v)
    return s


numbers = st.lists(
    st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**12), 10**12),
    min_size=1,
    max_size=200,
)


@given(numbers)
def test_stats_quantiles_within_documented_relative_error(vals: list[float]) -> None:
    s = _stats(vals)
    ordered = sorted(vals)
    for q in (0.0, 0.5, 0.9, 0.99, 1.0):
        exact = ordered[math.floor(q * (len(vals) - 1))]
        est = s.quantile(q)
        assert est is not None
        assert abs(est - exact) <= s.relative_accuracy * abs(exact) * (1 + 1e-9) + 1e-300
    assert (s.count, s.min, s.max) == (len(vals), min(vals), max(vals))


def test_stats_percentiles_on_a_known_distribution() -> None:
    s = _stats(list(range(1, 1001)))
    assert s.p50 == pytest.approx(500, rel=0.01)
    assert s.p90 == pytest.approx(900, rel=0.01)
    assert s.p99 == pytest.approx(990, rel=0.01)
    assert (s.sum, s.mean, s.min, s.max) == (500500, 500.5, 1, 1000)


@given(st.lists(st.integers(-(10**9), 10**9)), st.lists(st.integers(-(10**9), 10**9)))
def test_stats_merge_equals_adding_everything(a: list[int], b: list[int]) -> None:
    sa, sb = _stats(list(a)), _stats(list(b))
    assert sa.merge(sb) == _stats(list(a + b))
    assert sa == _stats(list(a))


def test_stats_memory_is_bounded_by_the_dynamic_range() -> None:
    s = Stats()
    for i in range(100_000):
        s.add(1_000 + i * 99_990)  # 1 us .. 10 s in ns
    buckets = len(s._pos) + len(s._neg)
    assert buckets <= math.log(1e7) / math.log(s._gamma) + 2


def test_stats_rejects_non_numbers_and_renders_one_line() -> None:
    s = Stats()
    for bad in (math.nan, math.inf, 10**400):
        with pytest.raises(ValueError):
            s.add(bad)
    for wrong in ("1", True, None):
        with pytest.raises(TypeError):
            s.add(wrong)  # type: ignore[arg-type]
    assert s.render() == "count=0 (no data)\n"
    line = _stats([1, 2, 3, 4]).render()
    assert line.startswith("count=4 sum=10 min=1 max=4 mean=2.5 p50=")
    assert line.count("\n") == 1 and "p90=" in line and "p99=" in line
    with pytest.raises(ValueError):
        _stats([1]).merge(Stats(relative_accuracy=0.05))


# -- Aggregator --------------------------------------------------------------------------


def _ev(
    name: str = "r_f",
    kind: str = "r",
    args: dict[str, object] | None = None,
    duration_ns: int | None = 1_000,
    retval: object = None,
) -> Event:
    duration = duration_ns if kind == "r" else None
    return make_event(kind, args, event=name, retval=retval, duration_ns=duration)


def test_hist_of_duration_uses_duration_ns_and_ignores_entries() -> None:
    agg = Aggregator(hist_field="$duration")
    agg.add(_ev(duration_ns=1_000))
    agg.add(_ev(duration_ns=3_000))
    agg.add(_ev(name="p_f", kind="p"))
    assert agg.events == ["r_f"]
    got = agg.get("r_f")
    assert got is not None and got.hist is not None
    assert got.hist == _hist([1_000, 3_000])
    assert not got.skipped


def test_a_fetch_arg_wins_over_the_special_field() -> None:
    agg = Aggregator(stats_field="$duration")
    agg.add(_ev(args={"$duration": 7}, duration_ns=1_000))
    got = agg.get("r_f")
    assert got is not None and got.stats is not None and got.stats.sum == 7


def test_count_by_retval_and_by_arg() -> None:
    by_ret = Aggregator(by_field="$retval")
    for r in [200, 404, 200, [1]]:
        by_ret.add(_ev(retval=r))
    got = by_ret.get("r_f")
    assert got is not None and got.by is not None
    assert got.by.most_common()[0] == (200, 2)
    by_arg = Aggregator(count=True, by_field="method")
    for m in ["GET", "POST", "GET"]:
        by_arg.add(_ev(name="p_req", kind="p", args={"method": m}))
    text = by_arg.render()
    assert text == "@p_req: 3\n@p_req['GET']: 2\n@p_req['POST']: 1\n"


def test_non_numeric_values_are_skipped_never_raised() -> None:
    agg = Aggregator(hist_field="n", stats_field="n")
    for n in [5, "five", None, -3, math.nan, 2.5, [1], True]:
        agg.add(_ev(args={"n": n}))
    got = agg.get("r_f")
    assert got is not None and got.hist is not None and got.stats is not None
    assert got.hist.count == 2  # 5 and 2.5 (as 2); -3 cannot go in a log2 histogram
    assert got.stats.count == 3  # 5, -3, 2.5
    assert got.skipped == {"n": 6}
    assert "6 n values skipped (not numeric)" in agg.render()


def test_snapshot_and_reset() -> None:
    agg = Aggregator(count=True, hist_field="$duration")
    agg.add(_ev())
    agg.add(_ev())
    snap = agg.snapshot_and_reset()
    assert agg.events == [] and agg.render() == "(no events)\n"
    agg.add(_ev())
    snap_agg = snap.get("r_f")
    live = agg.get("r_f")
    assert snap_agg is not None and snap_agg.hits == 2
    assert live is not None and live.hits == 1
    assert snap.config == agg.config


def test_snapshot_reads_without_resetting() -> None:
    """--metrics-port reads cumulative values: the aggregator keeps counting after a read."""
    agg = Aggregator(count=True, by_field="k", hist_field="$duration", stats_field="$duration")
    agg.add(_ev(args={"k": "a"}, duration_ns=1_000))
    agg.add(_ev(args={"k": "b"}, duration_ns=5_000))
    before = agg.render()
    snap = agg.snapshot()
    assert agg.render() == before == snap.render()
    assert snap.config == agg.config
    agg.add(_ev(args={"k": "a"}, duration_ns=9_000))
    live, old = agg.get("r_f"), snap.get("r_f")
    assert live is not None and old is not None
    assert (live.hits, old.hits) == (3, 2)  # the snapshot is independent of later adds
    assert old.hist_by["a"].count == 1 and live.hist_by["a"].count == 2
    assert old.stats is not None and old.stats.count == 2


def test_concurrent_adds_and_snapshots_are_whole_and_growing() -> None:
    agg = Aggregator(count=True, by_field="k")
    per_thread, n_threads = 2_000, 3
    start = threading.Barrier(n_threads + 1)

    def feed(i: int) -> None:
        start.wait()
        for _ in range(per_thread):
            agg.add(_ev(args={"k": i}))

    threads = [threading.Thread(target=feed, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    start.wait()
    seen = 0
    while any(t.is_alive() for t in threads):
        got = agg.snapshot().get("r_f")
        if got is not None:
            assert got.by is not None and got.by.total == got.hits  # each event read whole
            assert got.hits >= seen
            seen = got.hits
    for t in threads:
        t.join()
    got = agg.snapshot().get("r_f")
    assert got is not None and got.hits == per_thread * n_threads


def test_aggregator_merge_equals_feeding_one() -> None:
    a = Aggregator(count=True, by_field="k", hist_field="$duration", stats_field="$duration")
    b = Aggregator.from_config(a.config)
    one = Aggregator.from_config(a.config)
    for i in range(40):
        ev = _ev(name=f"e{i % 3}", args={"k": i % 4}, duration_ns=i * 1_000)
        (a if i % 2 else b).add(ev)
        one.add(ev)
    merged = a.merge(b)
    assert merged.events == one.events
    for name in one.events:
        assert merged.get(name) == one.get(name)
    assert merged.render() == one.render()
    with pytest.raises(ValueError):
        a.merge(Aggregator(count=True))


def test_render_shows_every_aggregation_per_event() -> None:
    agg = Aggregator(count=True, hist_field="$duration", stats_field="$duration")
    agg.add(_ev(duration_ns=1_200_000))
    text = agg.render()
    assert text.startswith("@r_f: 1\nr_f $duration:\n     usecs ")
    assert "avg = 1200.0 usecs, total = 1200.0 usecs, count = 1" in text
    assert "r_f $duration: count=1 sum=1.2ms min=1.2ms max=1.2ms" in text


def test_concurrent_adds_and_snapshots_lose_nothing() -> None:
    agg = Aggregator(count=True)
    per_thread, n_threads = 2_000, 4
    start = threading.Barrier(n_threads + 1)

    def feed() -> None:
        start.wait()
        for _ in range(per_thread):
            agg.add(_ev())

    threads = [threading.Thread(target=feed) for _ in range(n_threads)]
    for t in threads:
        t.start()
    start.wait()
    total = 0
    while any(t.is_alive() for t in threads):
        got = agg.snapshot_and_reset().get("r_f")
        total += got.hits if got else 0
    for t in threads:
        t.join()
    got = agg.snapshot_and_reset().get("r_f")
    total += got.hits if got else 0
    assert total == per_thread * n_threads


def test_by_keys_and_event_names_are_escaped_for_the_terminal() -> None:
    """Issue 18.4: --by keys and event names come from the program (or an attached one)."""
    hostile = "\x1b]0;x\x07\x9b2J\u202e\ud800"
    agg = Aggregator(count=True, by_field="s", hist_field="$duration", stats_field="$duration")
    agg.add(_ev(hostile, args={"s": hostile}))
    agg.add(_ev(hostile, args={"s": [hostile]}))
    text = agg.render()
    assert text.replace("\n", "").isprintable(), text
    assert "@\\x1b]0;x\\x07\\x9b2J\\u202e\\ud800[" in text
    assert "\\u009b" in text  # the list key, as JSON


def test_lhist_per_event_and_per_key_with_skips_rendered_in_order() -> None:
    agg = Aggregator(lhist_field="n", lhist_bounds=(0, 30, 10), by_field="k", count=True)
    for k, n in [("a", 5), ("a", 25.5), ("b", -1), ("a", 40), ("b", "x"), ("a", True)]:
        agg.add(_ev(args={"k": k, "n": n}))
    got = agg.get("r_f")
    assert got is not None and got.lhist is None and got.hist is None
    assert got.lhist_by["a"] == _lhist([5, 25, 40], 0, 30, 10)
    assert got.lhist_by["b"] == _lhist([-1], 0, 30, 10)
    assert got.skipped == {"n": 2}
    assert agg.render() == (
        "@r_f: 6\n"
        "@r_f['a']: 4\n"
        "@r_f['b']: 2\n"
        "r_f['a'] n:\n"
        "[0, 10)                1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
        "[10, 20)               0 |                                                    |\n"
        "[20, 30)               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
        "[30, ...)              1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
        "r_f['b'] n:\n"
        "(..., 0)               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
        "r_f: 2 n values skipped (not numeric)\n"
    )
    snap = agg.snapshot()
    assert snap.render() == agg.render()
    assert agg.merge(agg).get("r_f").lhist_by["a"].count == 6  # type: ignore[union-attr]


def test_lhist_of_durations_titles_its_unit_and_refuses_a_log2_hist_beside_it() -> None:
    agg = Aggregator(lhist_field="$duration", lhist_bounds=(0, 10_000, 1_000))
    agg.add(_ev(duration_ns=1_500))
    agg.add(_ev(name="p_f", kind="p"))  # no $duration: not counted, not skipped
    assert agg.render().startswith("r_f $duration (usecs):\n[1, 2)                 1 |@@@")
    assert agg.events == ["r_f"]
    with pytest.raises(ValueError, match="cannot be asked at once"):
        Aggregator(hist_field="n", lhist_field="n", lhist_bounds=(0, 10, 1))
    with pytest.raises(ValueError, match="both a field and its bounds"):
        Aggregator(lhist_field="n")
