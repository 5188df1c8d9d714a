"""Which probes run as programs in the core, and how their results join the aggregations.

A probe whose filter, ``--by`` key, ``--hist``/``--lhist`` field and (when it writes events)
fetch args each read an argument or local, ``$duration``, ``$retval``, ``$exception`` or
``$thread``, with attribute and literal subscript steps after it (``req.headers['host']``),
becomes an ``engine.program.Program``: the core runs it per hit with no Python call. Anything else
(a ``:TYPE``, ``$args``, ``$caller``, ``$stack``, a filter that compares two names) takes the
Python path, per probe; ``plan`` says why.

The results are folded into the ``Aggregator`` as the Python path's events would have been:
keys and values are rendered by the capture rules (``spec.render``) when read, not per hit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from pyprobes.engine import program as prog
from pyprobes.lang import ProbeSpec, exception_text, render
from pyprobes.lang.model import Attr, FetchArg, Index, Root
from pyprobes.output import Aggregator, AggregatorConfig, Stats
from pyprobes.output.aggregate import DURATION_FIELD
from pyprobes.output.records import function_of

#: Durations are bucketed in ns, us and ms, as Log2Histogram shows them.
DURATION_SCALES = (1, 1_000, 1_000_000)
MAX_KEYS = 10_000
MAX_FIELDS = 8
_SPECIAL = {
    "$duration": prog.Var("duration"),
    "$retval": prog.Var("retval"),
    "$thread": prog.Var("thread"),
    "$exception": prog.Var("exception"),
}
_RETURN_ONLY = frozenset({"$duration", "$retval", "$exception"})
PLACEMENT_KEYS = frozenset({"$function", "$probe"})


@dataclass(frozen=True, slots=True)
class Plan:
    """A spec as a program, or the reason it takes the Python path (``program`` None)."""

    program: prog.Program | None
    reason: str = ""
    keyed: bool = False  # --by has a value on this spec's events
    hist_unit: str = "value"
    #: ``$function``/``$probe`` keys are the same for every hit of a placement: the program
    #: keeps no key and the placement's own is given when its results are folded.
    placement_key: str | None = None
    #: Its results feed aggregations (collect() folds them); False: it only records events.
    aggregates: bool = True
    #: The key is ``$exception`` as an event's own field (exception_text), not a fetch arg's.
    exception_key: bool = False


class _NoProgram(Exception):
    """Why a spec cannot be a program."""


def _var_of(spec: ProbeSpec, fa: FetchArg) -> prog.Var | None:
    """What a fetch arg reads, as a Var (None: a return-only value at an entry)."""
    if fa.type is not None:
        raise _NoProgram(f"fetch arg {fa.name} is converted (:{fa.type})")
    root, *steps = fa.path
    if not isinstance(root, Root):
        raise _NoProgram(f"fetch arg {fa.name} does not start with a name")
    path: list[prog.Step] = []
    for step in steps:
        if isinstance(step, Attr):
            path.append(("attr", step.name))
        elif isinstance(step, Index):
            path.append(("item", step.key))
        else:
            raise _NoProgram(f"fetch arg {fa.name} has a step programs do not read")
    if root.name.startswith("$"):
        var = _special(spec, root.name)
        if var is None:
            return None
        return prog.Var(var.kind, var.name, tuple(path))
    return prog.Var("local", root.name, tuple(path))


def _field(spec: ProbeSpec, name: str) -> prog.Var | None:
    """The Var of an aggregation field, None if the spec's events have no such field."""
    for fa in spec.fetchargs:
        if fa.name == name:
            return _var_of(spec, fa)
    if name.startswith("$"):
        return _special(spec, name)
    return None  # no event has it: the Python path ignores it too


def _special(spec: ProbeSpec, name: str) -> prog.Var | None:
    if name in _RETURN_ONLY and not spec.is_return:
        return None
    var = _SPECIAL.get(name)
    if var is None:
        raise _NoProgram(f"{name} is read by the Python path")
    return var


def _map_cond(spec: ProbeSpec, c: prog.Cond) -> prog.Cond:
    """The filter's plan with its fetch-arg placeholders replaced by what they fetch."""
    if isinstance(c, prog.Cmp | prog.Truth):
        var = c.var
        if var.kind == "local":
            mapped = _field(spec, var.name)
            if mapped is None:
                raise _NoProgram(f"the filter reads {var.name}, which no fetch arg names")
            var = mapped
        elif var.kind in ("duration", "retval") and not spec.is_return:
            raise _NoProgram(f"the filter reads ${var.kind} at an entry")
        if isinstance(c, prog.Cmp):
            return prog.Cmp(c.op, var, c.const)
        return prog.Truth(var)
    if isinstance(c, prog.Not):
        return prog.Not(_map_cond(spec, c.part))
    parts = tuple(_map_cond(spec, p) for p in c.parts)
    return prog.AllOf(parts) if isinstance(c, prog.AllOf) else prog.AnyOf(parts)


def _fields(spec: ProbeSpec) -> tuple[prog.Var, ...]:
    """The Vars an event record of ``spec`` holds: its fetch args, in order."""
    if len(spec.fetchargs) > MAX_FIELDS:
        raise _NoProgram(f"a record holds at most {MAX_FIELDS} fetch args")
    out = []
    for fa in spec.fetchargs:
        var = _var_of(spec, fa)
        if var is None:
            raise _NoProgram(f"{fa.root} at an entry is read by the Python path")
        out.append(var)
    return tuple(out)


def plan(spec: ProbeSpec, config: AggregatorConfig | None, *, events: bool = False) -> Plan:
    """The program for ``spec``'s hits under ``config`` (None: no aggregations), recording
    its events too when ``events``, or why there is none."""
    config = config if config is not None else AggregatorConfig()
    hist_field = config.histogram_field  # --hist or --lhist (never both)
    aggregates = bool(hist_field or config.count or config.by_field or config.stats_field)
    try:
        fields = _fields(spec) if events else ()
        stats = _field(spec, config.stats_field) if config.stats_field is not None else None
        cond = None
        if spec.filter is not None:
            if spec.filter.plan is None:
                raise _NoProgram("the filter has a form programs do not run")
            cond = _map_cond(spec, spec.filter.plan)
        placement_key = None
        if config.by_field in PLACEMENT_KEYS and not _fetches(spec, config.by_field):
            key, placement_key = None, config.by_field
        else:
            key = _field(spec, config.by_field) if config.by_field is not None else None
        exception_key = config.by_field == "$exception" and not _fetches(spec, "$exception")
        hist = _field(spec, hist_field) if hist_field is not None else None
    except _NoProgram as why:
        return Plan(None, str(why))
    unit = "nsecs" if hist_field == DURATION_FIELD else "value"  # as Aggregator.add
    linear = config.lhist_bounds is not None
    return Plan(
        prog.Program(
            filter=cond,
            key=key,
            hist=hist,
            hist_scales=DURATION_SCALES if unit == "nsecs" and not linear else (1,),
            max_keys=MAX_KEYS,
            fields=fields,
            stats=stats,
            lhist=config.lhist_bounds,
        ),
        keyed=key is not None or placement_key is not None,
        hist_unit=unit,
        placement_key=placement_key,
        aggregates=aggregates,
        exception_key=exception_key,
    )


def _fetches(spec: ProbeSpec, name: str | None) -> bool:
    return any(fa.name == name for fa in spec.fetchargs)


def placement_key_of(p: Plan, probe_text: str) -> str | None:
    """The key of every hit of one placement (``$function``, ``$probe``), else None."""
    if p.placement_key == "$function":
        return function_of(probe_text)
    if p.placement_key == "$probe":
        return probe_text
    return None


def key_text(value: object) -> str:
    """A key that is not a scalar, as the text fold_key reads back (run in the core's store)."""
    return json.dumps(render(value), sort_keys=True)


def exception_key_text(value: object) -> str:
    """An exception key as an event's ``$exception`` field holds it (``exception_text``)."""
    return json.dumps(exception_text(value) if isinstance(value, BaseException) else None)


def key_of(p: Plan) -> Callable[[object], str]:
    """The function that makes a text of the keys of ``p``'s program that are not scalars."""
    return exception_key_text if p.exception_key else key_text


def fold_key(key: object, var: prog.Var | None) -> object:
    """A program's key as the Python path's event field would hold it."""
    if isinstance(key, tuple):  # (type name, key_text(value))
        return json.loads(key[1])
    if var is not None and var.kind == "thread":
        return key  # an event's thread name is not rendered
    return render(key)


def add_results(
    aggregator: Aggregator, event: str, p: Plan, results: prog.Results, probe_text: str = ""
) -> None:
    """Fold what one program (placed at ``probe_text``) gathered into ``event``'s aggregations."""
    assert p.program is not None
    key_var = p.program.key if p.keyed else None
    fixed = placement_key_of(p, probe_text)
    aggregator.add_totals(
        event,
        [
            (
                fixed if fixed is not None else fold_key(k, key_var) if p.keyed else None,
                slot.count,
                slot.buckets,
                slot.total,
                slot.max,
                slot.skipped,
            )
            for k, slot in results.slots.items()
        ],
        keyed=p.keyed,
        hist_unit=p.hist_unit,
        stats=_stats_of(results.stats),
    )


def _stats_of(parts: prog.StatsParts | None) -> tuple[Stats, int] | None:
    """A program's stats as output.Stats, and how many values it skipped."""
    if parts is None:
        return None
    stats = Stats.from_parts(
        count=parts.count,
        sum=parts.sum,
        min=parts.min,
        max=parts.max,
        zeros=parts.zeros,
        pos=parts.pos,
        neg=parts.neg,
    )
    return stats, parts.skipped
