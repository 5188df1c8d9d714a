"""Aggregations as data for the attach protocol: a faithful round trip, and nothing trusted."""

from __future__ import annotations

import json

import pytest
from output_helpers import make_event

from pyprobes.output import Aggregator, Event
from pyprobes.output.aggregate_data import aggregator_data, aggregator_from_data

KEYS: list[object] = ["fig", 7, 2.5, True, None, float("nan"), float("inf"), [1, {"a": 2}]]


def _ev(name: str, key: object, duration: int, n: object = 3) -> Event:
    return make_event("r", {"k": key, "n": n}, event=name, duration_ns=duration)


def _fed(**config: object) -> Aggregator:
    agg = Aggregator(**config)  # type: ignore[arg-type]
    for i in range(300):
        agg.add(_ev("a" if i % 3 else "b", KEYS[i % len(KEYS)], 50 * i + 1, i - 100))
    agg.add(_ev("a", "x", 5, "not a number"))
    return agg


@pytest.mark.parametrize(
    "config",
    [
        {"hist_field": "$duration", "count": True},
        {"hist_field": "$duration", "count": True, "by_field": "k"},
        {"count": True, "by_field": "k", "stats_field": "n"},
        {"hist_field": "n", "stats_field": "$duration"},
        {"lhist_field": "$duration", "lhist_bounds": (0, 10_000, 1_000), "count": True},
        {"lhist_field": "n", "lhist_bounds": (-50, 150, 10), "by_field": "k"},
    ],
)
def test_round_trip_through_json_renders_the_same(config: dict[str, object]) -> None:
    agg = _fed(**config)
    wire = json.loads(json.dumps(aggregator_data(agg), allow_nan=False))
    back = aggregator_from_data(agg.config, wire)
    assert back.render() == agg.render()
    merged = Aggregator.from_config(agg.config)
    merged.absorb(back)
    merged.absorb(aggregator_from_data(agg.config, wire))
    assert merged.render() == agg.merge(agg).render()


@pytest.mark.parametrize(
    "bad",
    [
        {"event": "a", "hits": -1},
        {"event": "a", "hits": 1, "by": [[{"v": object.__name__, "x": 1}, 1]]},
        {"event": "a", "hits": 1, "by": [[{"eval": "1+1"}, 1]]},
        {
            "event": "a",
            "hits": 1,
            "hist": {"unit": "value", "buckets": [[[0, 1]]], "count": 1, "total": 1, "max": 1},
        },
        {
            "event": "a",
            "hits": 1,
            "hist": {"unit": "nsecs", "buckets": [], "count": 1, "total": 1, "max": 1},
        },
        {"event": "x" * 10_000, "hits": 1},
        {"event": "a", "hits": 1, "stats": {"accuracy": 2}},
    ],
)
def test_malformed_data_is_refused(bad: dict[str, object]) -> None:
    config = Aggregator(hist_field="$duration", count=True, by_field="k").config
    with pytest.raises(ValueError):
        aggregator_from_data(config, [bad])


_LH = {"unit": "value", "bounds": [0, 10, 1], "buckets": [[1, 2]], "count": 2, "total": 1}


@pytest.mark.parametrize(
    "bad",
    [
        {**_LH, "bounds": [0, 20, 1]},  # not the bounds asked for
        {**_LH, "buckets": [[12, 1]]},  # beyond the last bucket
        {**_LH, "buckets": [[1, 0]]},
        {**_LH, "total": 1.5},
        {**_LH, "unit": "nsecs"},
    ],
)
def test_malformed_linear_histograms_are_refused(bad: dict[str, object]) -> None:
    config = Aggregator(lhist_field="n", lhist_bounds=(0, 10, 1)).config
    aggregator_from_data(config, [{"event": "a", "hits": 2, "lhist": _LH}])  # the good one
    with pytest.raises(ValueError):
        aggregator_from_data(config, [{"event": "a", "hits": 1, "lhist": bad}])
