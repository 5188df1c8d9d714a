"""Options shared by ``run`` and ``attach``: probe specs, output format, aggregations."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pyprobes.output import (
    RENDERERS,
    Aggregator,
    EventWriter,
    FileSink,
    Sink,
    StreamSink,
    get_renderer,
)
from pyprobes.output.sanitize import terminal_safe
from pyprobes.spec import SPECIAL_VARS, ProbeSpec, parse_spec, parse_spec_file


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
    parser.add_argument(
        "--format", choices=sorted(RENDERERS), default="text", help="event format (default text)"
    )
    parser.add_argument(
        "--hist",
        nargs="?",
        const="$duration",
        metavar="FIELD",
        help="log2 histogram of FIELD (default $duration) per event",
    )
    parser.add_argument("--count", action="store_true", help="count events (per --by key)")
    parser.add_argument("--by", metavar="FIELD", help="count events per value of FIELD")
    parser.add_argument(
        "--stats", metavar="FIELD", help="count, sum, min, max, mean, p50, p90, p99 of FIELD"
    )
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop tracing after")
    parser.add_argument(
        "--interval",
        type=float,
        metavar="SECONDS",
        help="print and reset the aggregations every SECONDS",
    )


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


def make_aggregator(args: argparse.Namespace) -> Aggregator | None:
    """The aggregations asked for, or None."""
    if not (args.hist or args.count or args.by or args.stats):
        return None
    return Aggregator(
        hist_field=args.hist,
        count=bool(args.count or args.by),
        by_field=args.by,
        stats_field=args.stats,
    )


@contextmanager
def open_output(args: argparse.Namespace) -> Iterator[EventWriter]:
    """An event writer for ``-o``/``--format``; closed (drained, footer written) on exit."""
    sink: Sink = FileSink(args.output) if args.output else StreamSink(sys.stderr)
    try:
        writer = EventWriter(get_renderer(args.format), sink)
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
