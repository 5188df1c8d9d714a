"""Aggregations as JSON-able data and back, for the attach protocol (aggregates, not events).

An agent that runs a client's probes as aggregations only sends what it gathered since the
last message; the client merges it into its own ``Aggregator``. The data comes from another
process, so ``aggregator_from_data`` trusts nothing: every size is bounded, every field
type-checked, and anything else raises ValueError (the client counts the message bad).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

from pyprobes.output.aggregate import (
    DURATION_FIELD,
    Aggregator,
    AggregatorConfig,
    ContainerKey,
    CountBy,
    EventAggregates,
    canonical_key,
)
from pyprobes.output.histogram import LinearHistogram, Log2Histogram
from pyprobes.output.stats import Stats

MAX_EVENTS = 4096
MAX_KEYS = 100_000
MAX_BUCKETS = 128
MAX_TEXT = 4096


# --- to data --------------------------------------------------------------------------------


def _key(key: Hashable) -> object:
    if isinstance(key, ContainerKey):
        return {"json": key.json}
    if isinstance(key, float) and not math.isfinite(key):
        return {"float": repr(key)}  # nan, inf, -inf: not JSON numbers
    return {"v": key}


def _hist(h: Log2Histogram) -> dict[str, object]:
    return {
        "unit": h.unit,
        "buckets": [sorted(b.items()) for b in h._buckets],
        "count": h.count,
        "total": h.total,
        "max": h.max,
    }


def _lhist(h: LinearHistogram) -> dict[str, object]:
    return {
        "unit": h.unit,
        "bounds": list(h.bounds),
        "buckets": sorted(h.counts().items()),
        "count": h.count,
        "total": h.total,
    }


def _stats(s: Stats) -> dict[str, object]:
    return {
        "accuracy": s.relative_accuracy,
        "pos": sorted(s._pos.items()),
        "neg": sorted(s._neg.items()),
        "zeros": s._zeros,
        "count": s.count,
        "sum": s.sum,
        "min": s.min,
        "max": s.max,
    }


def aggregator_data(agg: Aggregator) -> list[dict[str, object]]:
    """What ``agg`` holds, per event, as JSON-able data (read it from a snapshot)."""
    out: list[dict[str, object]] = []
    for name in agg.events:
        ea = agg.get(name)
        assert ea is not None
        d: dict[str, object] = {"event": name, "hits": ea.hits, "skipped": dict(ea.skipped)}
        if ea.by is not None:
            d["by"] = [[_key(k), n] for k, n in ea.by.most_common()]
        if ea.hist is not None:
            d["hist"] = _hist(ea.hist)
        if ea.hist_by:
            d["hist_by"] = [[_key(k), _hist(h)] for k, h in ea.hist_by.items()]
        if ea.lhist is not None:
            d["lhist"] = _lhist(ea.lhist)
        if ea.lhist_by:
            d["lhist_by"] = [[_key(k), _lhist(h)] for k, h in ea.lhist_by.items()]
        if ea.stats is not None:
            d["stats"] = _stats(ea.stats)
        out.append(d)
    return out


# --- from data (untrusted) ------------------------------------------------------------------


def _int(v: object, low: int = 0) -> int:
    if type(v) is not int or v < low:
        raise ValueError(f"expected an int >= {low}, not {v!r:.40}")
    return v


def _num(v: object) -> int | float:
    if type(v) is int or (type(v) is float and math.isfinite(v)):
        return v
    raise ValueError(f"expected a finite number, not {v!r:.40}")


def _text(v: object) -> str:
    if type(v) is not str or len(v) > MAX_TEXT:
        raise ValueError("expected a bounded string")
    return v


def _list(v: object, limit: int) -> list[Any]:
    if type(v) is not list or len(v) > limit:
        raise ValueError(f"expected a list of at most {limit} items")
    return v


def _key_back(d: object) -> Hashable:
    if type(d) is not dict or len(d) != 1:
        raise ValueError("a key is an object of one field")
    ((kind, value),) = d.items()
    if kind == "json":
        return ContainerKey(_text(value))
    if kind == "float":
        if value not in ("nan", "inf", "-inf"):
            raise ValueError("a float key is nan, inf or -inf")
        return float(value)  # canonical_key makes every NaN the one NaN key
    if kind == "v" and (value is None or type(value) in (str, int, float, bool)):
        if type(value) is str:
            _text(value)
        return value  # type: ignore[no-any-return]
    raise ValueError("unknown key form")


def _pairs(v: object) -> dict[int, int]:
    out: dict[int, int] = {}
    for pair in _list(v, MAX_BUCKETS * 64):
        index, n = _list(pair, 2)
        out[_int(index, -(1 << 20))] = _int(n, 1)
    return out


def _hist_back(d: object, unit: str) -> Log2Histogram:
    if type(d) is not dict or d.get("unit") != unit:
        raise ValueError(f"expected a {unit} histogram")
    buckets = tuple(_pairs(b) for b in _list(d.get("buckets"), 8))
    for b in buckets:
        if len(b) > MAX_BUCKETS or any(i < 1 for i in b):
            raise ValueError("bad histogram buckets")
    return Log2Histogram.from_buckets(
        unit, buckets, _int(d.get("count")), _int(d.get("total")), _int(d.get("max"))
    )


def _lhist_back(d: object, unit: str, bounds: tuple[int, int, int] | None) -> LinearHistogram:
    if type(d) is not dict or d.get("unit") != unit or bounds is None:
        raise ValueError(f"expected a {unit} linear histogram")
    got = d.get("bounds")
    if type(got) is not list or tuple(got) != bounds:
        raise ValueError(f"expected a linear histogram of {bounds}")
    buckets = _pairs(d.get("buckets"))
    total = d.get("total")
    if type(total) is not int:
        raise ValueError("bad linear histogram total")
    return LinearHistogram.from_buckets(bounds, unit, buckets, _int(d.get("count")), total)


def _stats_back(d: object) -> Stats:
    if type(d) is not dict:
        raise ValueError("expected stats")
    accuracy = _num(d.get("accuracy"))
    if not 0 < accuracy < 1:
        raise ValueError("bad stats accuracy")
    s = Stats(float(accuracy))
    s._pos, s._neg = _pairs(d.get("pos")), _pairs(d.get("neg"))
    s._zeros, s.count = _int(d.get("zeros")), _int(d.get("count"))
    s.sum = _num(d.get("sum"))
    low, high = d.get("min"), d.get("max")
    s.min = None if low is None else _num(low)
    s.max = None if high is None else _num(high)
    return s


def aggregator_from_data(config: AggregatorConfig, data: object) -> Aggregator:
    """An Aggregator of ``config`` holding what ``aggregator_data`` gave (ValueError if the
    data is not that)."""
    agg = Aggregator.from_config(config)
    hist_unit = "nsecs" if config.histogram_field == DURATION_FIELD else "value"  # as add()
    for d in _list(data, MAX_EVENTS):
        if type(d) is not dict:
            raise ValueError("an event's aggregates are an object")
        ea = EventAggregates(_text(d.get("event")), hits=_int(d.get("hits")))
        skipped = d.get("skipped", {})
        if not isinstance(skipped, Mapping) or len(skipped) > 8:
            raise ValueError("bad skipped counts")
        ea.skipped = {_text(k): _int(n) for k, n in skipped.items()}
        if "by" in d:
            ea.by = CountBy()
            for key, n in _list(d["by"], MAX_KEYS):
                ea.by.add(_key_back(key), _int(n, 1))
        if "hist" in d:
            ea.hist = _hist_back(d["hist"], hist_unit)
        for key, h in _list(d.get("hist_by", []), MAX_KEYS):
            ea.hist_by[canonical_key(_key_back(key))] = _hist_back(h, hist_unit)
        if "lhist" in d:
            ea.lhist = _lhist_back(d["lhist"], hist_unit, config.lhist_bounds)
        for key, h in _list(d.get("lhist_by", []), MAX_KEYS):
            ea.lhist_by[canonical_key(_key_back(key))] = _lhist_back(
                h, hist_unit, config.lhist_bounds
            )
        if "stats" in d:
            ea.stats = _stats_back(d["stats"])
        agg.put(ea)
    return agg
