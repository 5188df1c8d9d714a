"""output.stats: count, sum, min, max, mean and the quantile sketch of --stats."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyprobes.output import Stats

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
