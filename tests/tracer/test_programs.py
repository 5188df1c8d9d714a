"""tracer.programs: specs that run as probe programs aggregate exactly as the Python path."""

from __future__ import annotations

import os
import sys

import pytest

from pyprobes.lang import parse_spec
from pyprobes.output import Aggregator, Event
from pyprobes.tracer import TraceSession
from pyprobes.tracer.programs import plan

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _prog_targets as targets

T = "_prog_targets"


def aggregate(specs: list[str], events: bool, **config: object) -> tuple[str, list[str]]:
    agg = Aggregator(**config)  # type: ignore[arg-type]
    seen: list[Event] = []
    session = TraceSession([parse_spec(s) for s in specs], seen.append, agg, events=events)
    session.arm()
    try:
        targets.run(400)
    finally:
        session.stop()
    session.collect()
    if not events:
        assert seen == []  # nothing is written
    assert targets.RAN == []  # no fetch path ran the program's code
    return agg.render(), [path for _, path in session.paths()]


CASES = [
    ([f"r:p {T}:price"], {"hist_field": "$duration", "count": True}),
    ([f"r:p {T}:price qty"], {"hist_field": "qty", "by_field": "$retval"}),
    ([f"r:p {T}:price item"], {"count": True, "by_field": "item"}),
    ([f"p:e {T}:price item qty if qty > 2 and item in ('fig', 7)"], {"by_field": "item"}),
    (
        [f"p:e {T}:price item qty if not qty < 1 or item is None"],
        {"count": True, "by_field": "qty"},
    ),
    ([f"r:p {T}:price qty if $retval >= 6"], {"hist_field": "$retval", "by_field": "$thread"}),
    ([f"p:e {T}:price item if item < 'g'"], {"count": True}),  # orders a str with an int: faults
    ([f"p:e {T}:price", f"r:p {T}:price"], {"hist_field": "$duration", "count": True}),
    # a wildcard broken down by function: the key is the placement's, no per-hit work
    ([f"r:p {T}:*"], {"hist_field": "$duration", "by_field": "$function"}),
    ([f"p:e {T}:* qty if qty > 3"], {"count": True, "by_field": "$probe"}),
    # a filter over an object it cannot compare: only `is None` holds, any other is a fault
    ([f"p:e {T}:price item if item != 5"], {"count": True, "by_field": "item"}),
    ([f"p:e {T}:price item if item not in ('fig', 7)"], {"count": True, "by_field": "item"}),
    ([f"p:e {T}:price item if item is not None"], {"count": True, "by_field": "item"}),
    ([f"p:e {T}:price item if item != None"], {"count": True, "by_field": "item"}),
    # $exception: as the event's field, as a fetch arg, in a filter, and through a path
    ([f"r:p {T}:price"], {"count": True, "by_field": "$exception"}),
    ([f"r:p {T}:price $exception"], {"count": True, "by_field": "$exception"}),
    ([f"r:p {T}:price if $exception is not None"], {"hist_field": "$duration"}),
    ([f"r:p {T}:price a=$exception.args[0]"], {"hist_field": "a", "by_field": "a"}),
    # fetch paths: attributes of every kind, subscripts, and what they refuse
    ([f"p:s {T}:ship k=order.kind"], {"count": True, "by_field": "k"}),
    ([f"p:s {T}:ship q=order.qty"], {"hist_field": "q", "by_field": "q"}),
    ([f"p:s {T}:ship m=order.meta['k']"], {"count": True, "by_field": "m"}),
    ([f"p:s {T}:ship t=order.tags[0] q=order.qty if t == 'x' or q > 3"], {"by_field": "q"}),
    ([f"p:s {T}:ship t=order.tags[-1]"], {"count": True, "by_field": "t"}),
    ([f"p:s {T}:ship q=order['qty']"], {"count": True, "by_field": "q"}),
    ([f"p:s {T}:ship m=order.meta"], {"count": True, "by_field": "m"}),
    ([f"p:s {T}:ship u=order.unset"], {"count": True, "by_field": "u"}),
    ([f"p:s {T}:ship t=order.total"], {"count": True, "by_field": "t"}),
    ([f"p:s {T}:ship t=order.method"], {"count": True, "by_field": "t"}),
    ([f"r:s {T}:ship r=$retval.qty if r is not None and r >= 2"], {"hist_field": "r"}),
    # --stats: ints, their sum exact; a field that is not always a number; with --by and
    # --hist of the same field; a float sum in the order of the hits
    ([f"r:p {T}:price qty"], {"stats_field": "qty"}),
    ([f"r:p {T}:price"], {"stats_field": "$retval", "by_field": "$exception"}),
    ([f"r:p {T}:price qty"], {"stats_field": "qty", "hist_field": "qty", "count": True}),
    ([f"p:e {T}:price item"], {"stats_field": "item"}),
    ([f"p:s {T}:ship w=order.meta['w']"], {"stats_field": "w", "by_field": "w"}),
    ([f"p:s {T}:ship n"], {"stats_field": "n", "count": True}),
    ([f"p:s {T}:ship k=order.meta['k']"], {"stats_field": "k"}),  # none a number stats take
    # --lhist: below MIN, at and above MAX, per --by key, a float's floor, values skipped
    ([f"r:p {T}:price qty"], {"lhist_field": "qty", "lhist_bounds": (0, 4, 1), "count": True}),
    (
        [f"r:p {T}:price qty"],
        {"lhist_field": "qty", "lhist_bounds": (-2, 6, 2), "by_field": "item"},
    ),
    ([f"r:p {T}:price"], {"lhist_field": "$duration", "lhist_bounds": (0, 10**9, 10**7)}),
    (
        [f"r:p {T}:*"],
        {"lhist_field": "$duration", "lhist_bounds": (0, 10**9, 10**8), "by_field": "$function"},
    ),
    ([f"p:s {T}:ship w=order.meta['w']"], {"lhist_field": "w", "lhist_bounds": (-1, 9, 1)}),
    ([f"p:e {T}:price item"], {"lhist_field": "item", "lhist_bounds": (0, 10, 5)}),
    (
        [f"r:p {T}:price qty"],
        {"lhist_field": "qty", "lhist_bounds": (0, 6, 3), "stats_field": "qty"},
    ),
]


@pytest.mark.parametrize(("specs", "config"), CASES)
def test_programs_aggregate_as_the_python_path(specs: list[str], config: dict[str, object]) -> None:
    by_python, paths = aggregate(specs, True, **config)
    assert all(p.startswith("python") for p in paths)
    by_program, paths = aggregate(specs, False, **config)
    assert paths == ["program"] * len(specs)
    if "$duration" in (config.get("hist_field"), config.get("lhist_field")):  # timings differ
        by_python = "\n".join(line for line in by_python.splitlines() if "|" not in line)
        by_program = "\n".join(line for line in by_program.splitlines() if "|" not in line)
        by_python = by_python.split("avg =")[0]
        by_program = by_program.split("avg =")[0]
    assert by_program == by_python


def test_what_takes_the_python_path_says_why() -> None:
    def why(spec: str, **config: object) -> str:
        from pyprobes.output import AggregatorConfig

        return plan(parse_spec(spec), AggregatorConfig(**config)).reason  # type: ignore[arg-type]

    assert why(f"r {T}:price", stats_field="$duration") == ""
    assert "converted (:int)" in why(f"r {T}:price q=qty:int", by_field="q")
    assert "Python path" in why(f"r {T}:price", by_field="$caller")
    assert why(f"r {T}:price e=$exception.args[0]", by_field="e") == ""
    assert "form" in why(f"p {T}:price item qty if item == qty", count=True)
    assert why(f"r {T}:price", hist_field="$duration") == ""
