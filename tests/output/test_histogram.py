"""output.histogram: log2 histograms (bpftrace's hist()) and linear ones (its lhist())."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from output_helpers import hist_of, lhist_of

from pyprobes.output import LinearHistogram, Log2Histogram
from pyprobes.output.histogram import linear_bucket, linear_value

# -- Log2Histogram -----------------------------------------------------------------------


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
    h = hist_of([0, 1, 2, 3, 4, 7, 8])
    assert h.buckets("nsecs") == [(0, 1, 2), (2, 3, 2), (4, 7, 2), (8, 15, 1)]


def test_buckets_leave_out_leading_empties_but_keep_inner_ones() -> None:
    assert hist_of([4, 64]).buckets("nsecs") == [
        (4, 7, 1),
        (8, 15, 0),
        (16, 31, 0),
        (32, 63, 0),
        (64, 127, 1),
    ]


def test_durations_are_bucketed_exactly_in_each_time_unit() -> None:
    h = hist_of([999, 2_000, 3_999, 5_000_000])
    # usecs are integer-divided before bucketing, as bcc -u does: 999ns is 0us.
    assert h.buckets("usecs")[:2] == [(0, 1, 1), (2, 3, 2)]
    assert h.buckets("msecs") == [(0, 1, 3), (2, 3, 0), (4, 7, 1)]
    assert h.units == ("nsecs", "usecs", "msecs")


def test_render_is_the_funclatency_table() -> None:
    assert hist_of([1, 2, 3, 4, 5, 6, 7]).render("nsecs") == (
        "     nsecs               : count     distribution\n"
        "         0 -> 1          : 1        |**********                              |\n"
        "         2 -> 3          : 2        |********************                    |\n"
        "         4 -> 7          : 4        |****************************************|\n"
        "avg = 4.00 nsecs, total = 28 nsecs, count = 7\n"
    )


def test_render_in_a_larger_unit_scales_avg_and_total() -> None:
    text = hist_of([1_500_000, 2_500_000]).render("msecs")
    assert text.splitlines()[0].startswith("     msecs ")
    assert text.splitlines()[-1] == "avg = 2.00 msecs, total = 4.00 msecs, count = 2"


def test_averages_keep_three_significant_digits() -> None:
    """Issue 17.4: a sub-unit mean is not printed as ``avg = 0.0 msecs``."""
    assert hist_of([10_000] * 3).render("msecs").splitlines()[-1] == (
        "avg = 0.0100 msecs, total = 0.0300 msecs, count = 3"
    )
    assert hist_of([123_456]).render("usecs").splitlines()[-1].startswith("avg = 123.5 usecs")


def test_auto_unit_follows_the_distribution_not_the_maximum() -> None:
    """Issue 17.4: 4,600,406 of 4,601,377 durations fell in one ``0 -> 1 msecs`` bucket
    because a few slow calls chose the unit; the bulk decides now."""
    fast_with_outliers = hist_of([2_000] * 999 + [300_000_000])
    assert fast_with_outliers.auto_unit() == "nsecs"
    rows = fast_with_outliers.buckets("nsecs")
    assert rows[0] == (1024, 2047, 999)
    assert hist_of([5_000]).auto_unit() == "nsecs"
    assert hist_of([50_000]).auto_unit() == "usecs"
    assert hist_of([5_000_000]).auto_unit() == "usecs"
    assert hist_of([50_000] * 96 + [1] * 4).auto_unit() == "usecs"  # 4 % below 8us: still usecs
    assert hist_of([500_000_000]).auto_unit() == "msecs"
    assert hist_of([500_000_000]).render().splitlines()[0].lstrip().startswith("msecs")
    assert hist_of([5], unit="bytes").render().lstrip().startswith("bytes")


def test_small_counts_still_get_a_star_and_wide_values_widen_columns() -> None:
    lines = hist_of([1] * 1000 + [4]).render("nsecs").splitlines()
    assert lines[2].endswith(": 0        |                                        |")
    assert lines[3].endswith(": 1        |*                                       |")
    wide = hist_of([10**12]).render("nsecs").splitlines()
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
    ha, hb = hist_of(a), hist_of(b)
    merged = ha.merge(hb)
    assert merged == hist_of(a + b)
    assert ha == hist_of(a) and hb == hist_of(b)  # inputs untouched
    assert merged.count == len(a) + len(b) and merged.total == sum(a) + sum(b)


# -- LinearHistogram ---------------------------------------------------------------------


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
    h = lhist_of([-5, 0, 3, 15, 15, 15, 99, 100, 250])
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
    assert lhist_of([-7, -7, 4], -10, 10, 5).render() == (
        "[-10, -5)              2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
        "[-5, 0)                0 |                                                    |\n"
        "[0, 5)                 1 |@@@@@@@@@@@@@@@@@@@@@@@@@@                          |\n"
    )
    assert LinearHistogram(0, 10, 1).render() == ""


def test_lhist_labels_use_k_and_m_only_when_the_step_is_a_multiple_of_1024() -> None:
    h = lhist_of([1025, 3 << 20], 0, 4 << 20, 1 << 20)
    assert h.render().splitlines()[0].startswith("[0, 1M)  ")
    assert h.render().splitlines()[-1].startswith("[3M, 4M)  ")
    k = lhist_of([2048], 1024, 8192, 1024)
    assert k.render().startswith("[2K, 3K)               1 |")
    plain = lhist_of([1024], 1000, 2000, 8)
    assert plain.render().startswith("[1024, 1032)           1 |")


def test_lhist_bars_truncate_in_float_as_bpftrace() -> None:
    # 15/26*52 is 30 in C float arithmetic, 29.999... in double: bpftrace draws 30
    h = lhist_of([5] * 15 + [15] * 26)
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
    ha, hb = lhist_of(a, -100, 300, 20), lhist_of(b, -100, 300, 20)
    merged = ha.merge(hb)
    assert merged == lhist_of(a + b, -100, 300, 20)
    assert ha == lhist_of(a, -100, 300, 20) and hb == lhist_of(b, -100, 300, 20)
    assert merged.count == len(a) + len(b) and merged.total == sum(a) + sum(b)
    assert merged.copy() == merged and merged.copy() is not merged
