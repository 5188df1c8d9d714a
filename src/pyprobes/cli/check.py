"""``pyprobes check``: parse and resolve specs without running (or importing) anything."""

from __future__ import annotations

import argparse
import os
import sys
from types import CodeType

from pyprobes.cli import program
from pyprobes.cli.options import (
    add_aggregation_options,
    check_fields,
    make_aggregator,
    wants_events,
)
from pyprobes.cli.otlp import OTLP_RECORDS_PATH, add_otlp_options
from pyprobes.engine.resolve import module_exists
from pyprobes.lang import ProbeSpec, parse_spec
from pyprobes.output import RENDERERS, Aggregator
from pyprobes.tracer import programs
from pyprobes.tracer.records import RingSource
from pyprobes.tracer.targets import (
    MAIN,
    Resolved,
    def_line,
    main_module_code,
    module_code,
    module_matches,
    resolve_spec,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``check`` subcommand."""
    p = sub.add_parser(
        "check",
        help="parse and resolve probe specs",
        description="Parse and resolve each SPEC, running and importing nothing; print what"
        " each would probe; exit non-zero on the first bad one. With --script or -m, resolve"
        " as 'pyprobes run' would run that program: its directory (or, for -m, the current"
        " one) goes first on sys.path, so its own modules are found, and __main__: specs are"
        " resolved on its code (compiled, not run).",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--script", metavar="SCRIPT", help="resolve in the context of 'pyprobes run SCRIPT'"
    )
    where.add_argument(
        "-m", dest="module", metavar="MODULE", help="resolve in the context of 'pyprobes run -m'"
    )
    p.add_argument("specs", nargs="+", metavar="SPEC")
    add_aggregation_options(p)
    p.add_argument(
        "--format",
        choices=sorted(RENDERERS),
        help="the events' format under 'pyprobes run' (default text): which probes record"
        " their events in the core depends on it",
    )
    add_otlp_options(p)
    p.set_defaults(func=check)


def _function_at(r: Resolved) -> str:
    loc, code = r.location, r.code
    assert loc is not None and code is not None
    line = loc.line if loc.line is not None else def_line(code)
    return f"{loc.qualname} at {loc.filename}:{line}"


def describe(spec: ProbeSpec, main: CodeType | None = None) -> str:
    """One line: the spec, then what it resolves to (or raise ProbeError); ``main`` is the
    program's code, for ``__main__:`` specs. Resolved by the path 'pyprobes run' arms it
    (tracer.targets.resolve_spec), so both give the same verdicts."""
    t = spec.target
    head = f"{spec.kind}:{spec.group}/{spec.event} {t}"
    found = resolve_spec(spec, module_code, main)
    if t.module == MAIN:
        if main is None:
            return f"{head} -> the program's own code, resolved when 'pyprobes run' compiles it"
        prog = f"the program ({main.co_filename})"
        if t.has_wildcards:
            return f"{head} -> wildcard: {len(found)} function(s) of {prog} match"
        if t.abs_line is not None:
            return f"{head} -> line {t.abs_line} of {prog}"
    elif t.path is not None:
        return f"{head} -> line {t.abs_line} of {t.path}"
    elif t.has_wildcards:
        assert t.module is not None
        if any(c in t.module for c in "*?["):
            loaded = [n for n in sys.modules if module_matches(t, n)]
            return f"{head} -> wildcard: {len(loaded)} loaded module(s) match; later imports too"
        return f"{head} -> wildcard: {len(found)} function(s) of module {t.module} match"
    elif t.abs_line is not None:
        return f"{head} -> line {t.abs_line} of module {t.module}"
    if not found or found[0].location is None:
        return f"{head} -> pending until {t.module} is imported"
    return f"{head} -> {_function_at(found[0])}"


def _program_context(args: argparse.Namespace) -> CodeType | None:
    """Put the program's directory first on sys.path, as 'pyprobes run' would run it, and
    return its code if it can be had without running or importing anything."""
    if args.script is not None:
        try:
            prog = program.load_script(args.script, [])
        except SyntaxError as exc:
            raise program.ProgramError(
                f"{args.script}: line {exc.lineno}: {exc.msg} (it cannot be compiled)"
            ) from None
        sys.path.insert(0, prog.path0)
        return prog.code
    if args.module is not None:
        sys.path.insert(0, os.getcwd())  # as python -m does
        if not module_exists(args.module):
            raise program.ProgramError(f"No module named {args.module}", 1)
        return main_module_code(args.module)
    return None


def check(args: argparse.Namespace) -> int:
    """Print what each spec would probe and how its hits would run under ``pyprobes run``
    with these aggregation options; stop at the first bad one."""
    main = _program_context(args)
    specs = check_fields(args, [parse_spec(text) for text in args.specs])
    aggregator = make_aggregator(args)
    for spec in specs:
        fmt = args.format or "text"
        if args.otlp:
            path = otlp_path(spec, aggregator, fmt, wants_events(args))
        else:
            path = hit_path(spec, aggregator, fmt)
        print(f"{describe(spec, main)} [{path}]")
    return 0


def otlp_path(
    spec: ProbeSpec, aggregator: Aggregator | None, output_format: str, events: bool
) -> str:
    """How run's hits of ``spec`` would run under --otlp: recorded by a program, whose
    records become spans (and events, written from the ring), else the Python path."""
    if events and not RingSource.takes(output_format):
        return f"python: {output_format} events are written by the Python path"
    plan = programs.plan(spec, aggregator.config if aggregator is not None else None, events=True)
    return OTLP_RECORDS_PATH if plan.program is not None else f"python: {plan.reason}"


def hit_path(spec: ProbeSpec, aggregator: Aggregator | None, output_format: str = "text") -> str:
    """How run's hits of ``spec`` would run: ``program`` (a probe program in the core: only
    aggregations asked for), ``program, events recorded in the core`` (events written from
    the core's ring of records), else ``python: why``. As run decides it."""
    if aggregator is not None:
        plan = programs.plan(spec, aggregator.config)
        return "program" if plan.program is not None else f"python: {plan.reason}"
    if not RingSource.takes(output_format):
        return f"python: {output_format} events are written by the Python path"
    plan = programs.plan(spec, None, events=True)
    if plan.program is None:
        return f"python: {plan.reason}"
    return "program, events recorded in the core"
