"""Options shared by ``run`` and ``attach``: probe specs, output format, aggregations."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction

import pyprobes
from pyprobes.lang import (
    SPECIAL_VARS,
    FetchArg,
    ProbeSpec,
    Root,
    parse_spec,
    parse_spec_file,
)
from pyprobes.lang.diagnostics import did_you_mean
from pyprobes.lang.filter import DURATION_UNITS
from pyprobes.lang.vocab import RETURN_ONLY_VARS, return_only_message
from pyprobes.output import (
    RENDERERS,
    Aggregator,
    EventWriter,
    FileSink,
    Sink,
    StreamSink,
    get_renderer,
)
from pyprobes.output.aggregate import DURATION_FIELD
from pyprobes.output.histogram import check_linear
from pyprobes.output.sanitize import terminal_safe
from pyprobes.output.units import TIME_UNITS


class UsageError(Exception):
    """A bad command line: one line for stderr, exit status 2."""


def add_tracing_options(parser: argparse.ArgumentParser) -> None:
    """The probe, output and aggregation options."""
    parser.add_argument(
        "-e",
        "--probe",
        action="append",
        default=[],
        metavar="SPEC",
        help="a probe spec, e.g. 'r:slow json:loads $retval' (repeatable)",
    )
    parser.add_argument(
        "-f",
        "--probe-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a file of probe specs, one per line, # comments",
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="write events here (default stderr)")
    parser.add_argument("--format", choices=sorted(RENDERERS), help="event format (default text)")
    parser.add_argument(
        "--events",
        action="store_true",
        help="write events also with --hist/--count/--by/--stats (implied by -o and --format)",
    )
    add_aggregation_options(parser)
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop tracing after")
    parser.add_argument(
        "--interval",
        type=float,
        metavar="SECONDS",
        help="print and reset the aggregations every SECONDS",
    )


def add_aggregation_options(parser: argparse.ArgumentParser) -> None:
    """--hist, --unit, --count, --by, --stats: what to aggregate (run, attach and check)."""
    parser.add_argument(
        "--hist",
        nargs="?",
        const="$duration",
        metavar="FIELD",
        help="log2 histogram of FIELD (default $duration) per event",
    )
    parser.add_argument(
        "--unit",
        choices=[name for name, _ in TIME_UNITS],
        help="show the $duration histogram in this unit (default: chosen by the distribution)",
    )
    parser.add_argument(
        "--lhist",
        metavar="FIELD,MIN,MAX,STEP",
        help="linear histogram of FIELD: buckets of STEP from MIN to MAX, one below MIN and"
        " one from MAX up (ints; durations may have units: '$duration,0,10ms,1ms')",
    )
    parser.add_argument("--count", action="store_true", help="count events (per --by key)")
    parser.add_argument("--by", metavar="FIELD", help="count events per value of FIELD")
    parser.add_argument(
        "--stats", metavar="FIELD", help="count, sum, min, max, mean, p50, p90, p99 of FIELD"
    )


def aggregations_asked(args: argparse.Namespace) -> bool:
    """Whether --hist, --lhist, --count, --by or --stats was given."""
    return bool(args.hist or getattr(args, "lhist", None) or args.count or args.by or args.stats)


_LHIST_NUMBER = re.compile(r"([+-]?[0-9][0-9_]*(?:\.[0-9_]*)?)(ns|us|ms|s)?")


def _lhist_number(what: str, text: str, option: str) -> int:
    m = _LHIST_NUMBER.fullmatch(text.strip())
    if m is None or "__" in m.group(1) or m.group(1).rstrip("_") != m.group(1):
        raise UsageError(
            f"--lhist {option}: {what} must be an int (durations may have a unit ns, us, ms"
            f" or s), not {text.strip()!r}"
        )
    value = Fraction(m.group(1).replace("_", "")) * DURATION_UNITS[m.group(2) or "ns"]
    if value.denominator != 1:
        raise UsageError(f"--lhist {option}: {what} {text.strip()} is not a whole number")
    return value.numerator


def parse_lhist(text: str) -> tuple[str, tuple[int, int, int]]:
    """``FIELD,MIN,MAX,STEP`` as (field, (min, max, step)); UsageError says what is wrong."""
    parts = text.rsplit(",", 3)
    if len(parts) != 4 or not parts[0].strip():
        raise UsageError(
            f"--lhist {text}: give FIELD,MIN,MAX,STEP (e.g. --lhist '$duration,0,10ms,1ms')"
        )
    field = parts[0].strip()
    lo, hi, step = (
        _lhist_number(what, part, text)
        for what, part in zip(("MIN", "MAX", "STEP"), parts[1:], strict=True)
    )
    try:
        bounds = check_linear(lo, hi, step)
    except ValueError as exc:
        raise UsageError(f"--lhist {text}: {exc}") from None
    return field, bounds


def lhist_of(args: argparse.Namespace) -> tuple[str, tuple[int, int, int]] | None:
    """The --lhist asked for, parsed (UsageError if bad), or None."""
    text = getattr(args, "lhist", None)
    if text is None:
        return None
    if args.hist is not None:
        raise UsageError(
            "--hist and --lhist cannot be used together: give one histogram (log2 or linear)"
        )
    return parse_lhist(text)


def load_specs(args: argparse.Namespace) -> list[ProbeSpec]:
    """Parse every -e and -f spec; raises SpecError (a ValueError) on the first bad one."""
    specs = [parse_spec(text) for text in args.probe]
    for path in args.probe_file:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise UsageError(f"cannot read probe file {path!r}: {exc.strerror}") from None
        specs.extend(parse_spec_file(text))
    if not specs:
        raise UsageError("no probe given: use -e SPEC or -f FILE (see 'pyprobes check --help')")
    for name, value in (("--duration", args.duration), ("--interval", args.interval)):
        if value is not None and value <= 0:
            raise UsageError(f"{name} must be a positive number of seconds, not {value}")
    return specs


def fix_optional_field(args: argparse.Namespace, specs: list[ProbeSpec]) -> None:
    """``--hist SCRIPT`` means a histogram of $duration: give the word back to the program."""
    known = {fa.name for spec in specs for fa in spec.fetchargs} | set(SPECIAL_VARS)
    hist = args.hist
    if hist is None or hist in known or getattr(args, "module", None) is not None:
        return
    if getattr(args, "target", None) is not None or getattr(args, "args", None):
        args.args = [args.target, *args.args] if args.target is not None else list(args.args)
    args.target = hist
    args.hist = "$duration"


def wants_events(args: argparse.Namespace) -> bool:
    """Events are written unless only aggregations were asked for (as bpftrace prints only
    its maps): with --hist, --count, --by, --stats or --otlp (whose spans are the events),
    only -o, --format or --events adds them."""
    if not (aggregations_asked(args) or getattr(args, "otlp", None)):
        return True
    # getattr: ``check`` has --format but no -o or --events
    return bool(getattr(args, "output", None) or args.format or getattr(args, "events", False))


#: Fields every event has (derived from the record, nothing fetched): bpftrace's probefunc,
#: probe, and the thread and place of the hit.
EVENT_FIELDS = ("$function", "$probe", "$thread", "$location")
#: ``$`` variables a spec must fetch to aggregate on them: added to specs that lack them.
FETCHED_FIELDS = ("$caller", "$stack", "$args")


def check_fields(args: argparse.Namespace, specs: list[ProbeSpec]) -> list[ProbeSpec]:
    """Refuse a --by/--hist/--stats FIELD no probe can give (one line, with what would do);
    returns the specs, with ``$caller``/``$stack``/``$args`` fetched where a field needs it."""
    fetched = {fa.name for spec in specs for fa in spec.fetchargs}
    any_return = any(spec.is_return for spec in specs)
    lhist = lhist_of(args)
    lhist_field = lhist[0] if lhist is not None else None
    for option, name in (
        ("--by", args.by),
        ("--hist", args.hist),
        ("--lhist", lhist_field),
        ("--stats", args.stats),
    ):
        if name is None or name in fetched or name in EVENT_FIELDS:
            continue
        if name in RETURN_ONLY_VARS:
            if any_return:
                continue
            raise UsageError(f"{option} {name}: {return_only_message(name)}")
        if name in FETCHED_FIELDS:
            specs = [_fetching(spec, name) for spec in specs]
            continue
        known = [*sorted(fetched), *EVENT_FIELDS, *RETURN_ONLY_VARS, *FETCHED_FIELDS]
        what = "a $variable" if name.startswith("$") else "a fetch arg"
        raise UsageError(
            f"{option} {name}: no probe has {what} of that name{did_you_mean(name, known)};"
            f" use a fetch arg of a probe ({', '.join(sorted(fetched)) or 'none given'}) or"
            f" one of {', '.join(EVENT_FIELDS + FETCHED_FIELDS)}"
            + (f", {', '.join(sorted(RETURN_ONLY_VARS))}" if any_return else "")
        )
    return specs


def _fetching(spec: ProbeSpec, name: str) -> ProbeSpec:
    if any(fa.name == name for fa in spec.fetchargs):
        return spec
    arg = FetchArg(name=name, expr=name, path=(Root(name),))
    return dataclasses.replace(spec, fetchargs=(*spec.fetchargs, arg))


def make_aggregator(args: argparse.Namespace) -> Aggregator | None:
    """The aggregations asked for, or None."""
    if not aggregations_asked(args):
        return None
    if args.unit is not None and args.hist != DURATION_FIELD:
        raise UsageError(f"--unit {args.unit} applies to --hist of $duration only")
    lhist = lhist_of(args)
    return Aggregator(
        hist_unit=args.unit,
        hist_field=args.hist,
        count=bool(args.count or args.by),
        by_field=args.by,
        stats_field=args.stats,
        lhist_field=None if lhist is None else lhist[0],
        lhist_bounds=None if lhist is None else lhist[1],
    )


@contextmanager
def open_output(args: argparse.Namespace) -> Iterator[EventWriter]:
    """An event writer for ``-o``/``--format``; closed (drained, footer written) on exit."""
    sink: Sink = FileSink(args.output) if args.output else StreamSink(sys.stderr)
    try:
        writer = EventWriter(
            get_renderer(args.format or "text"), sink, thread_context=pyprobes.own_thread
        )
    except OSError as exc:
        raise UsageError(f"cannot write to {args.output!r}: {exc.strerror}") from None
    try:
        yield writer
    finally:
        writer.close()


def output_failure(args: argparse.Namespace, writer: EventWriter) -> str | None:
    """The one line that says why events were not written (ENOSPC, EPIPE...), or None."""
    exc = writer.error
    if exc is None or writer.forked:
        return None
    lost = writer.lost
    reason = terminal_safe(str(exc) or type(exc).__name__, 512)
    dest = terminal_safe(args.output, 512) if args.output else "stderr"
    return (
        f"pyprobes: writing events to {dest} failed: {reason};"
        f" {lost} event{'' if lost == 1 else 's'} lost"
    )
