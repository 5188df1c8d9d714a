"""output.aggregate: counts by key, and the per-event Aggregator."""

from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from output_helpers import hist_of, lhist_of, make_event

from pyprobes.output import Aggregator, CountBy, Event

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
    assert got.hist == hist_of([1_000, 3_000])
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
    assert got.lhist_by["a"] == lhist_of([5, 25, 40], 0, 30, 10)
    assert got.lhist_by["b"] == lhist_of([-1], 0, 30, 10)
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
