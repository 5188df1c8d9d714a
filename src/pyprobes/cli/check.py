"""``pyprobes check``: parse and resolve specs without running (or importing) anything."""

from __future__ import annotations

import argparse
import os
import sys
from types import CodeType

from pyprobes.cli import program
from pyprobes.cli.options import add_aggregation_options, check_fields, make_aggregator
from pyprobes.engine import InvalidProbeError, blacklist, find_code_by_qualname, module_exists
from pyprobes.engine.resolve import locate_in_code, locate_line, module_roots, resolve_in_module
from pyprobes.output import Aggregator
from pyprobes.spec import ProbeSpec, Target, parse_spec
from pyprobes.tracer import programs
from pyprobes.tracer.targets import (
    MAIN,
    check_module_known,
    def_line,
    module_matches,
    placements_in_module,
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
    p.set_defaults(func=check)


def _module_code(name: str) -> object:
    """The module's code object, compiled from its source without running it (or None)."""
    import importlib.util

    mod = sys.modules.get(name)
    spec = getattr(mod, "__spec__", None) if mod is not None else None
    if spec is None:
        if not module_exists(name):
            return None
        parent = name.rpartition(".")[0]
        if parent and parent not in sys.modules:
            return None  # finding it would import the parent package
        spec = importlib.util.find_spec(name)
    loader = getattr(spec, "loader", None)
    get_code = getattr(loader, "get_code", None)
    try:
        return get_code(name) if get_code is not None else None
    except Exception:
        return None


def _located(fn: CodeType, t: Target, module: str) -> CodeType:
    """Validate the offset or relative line in ``fn`` exactly as registration does (the
    engine's own locate_in_code and blacklist), so check and run give the same verdicts."""
    line = def_line(fn) + t.rel_line if t.rel_line else None
    loc = locate_in_code(fn, t.offset or 0, line, module, False)
    assert loc.code is not None
    blacklist.check(loc.code)
    return loc.code


def _is_extension(name: str) -> bool:
    """Whether the module is compiled (C): found, with no Python source or bytecode."""
    import importlib.machinery
    import importlib.util

    parent = name.rpartition(".")[0]
    if parent and parent not in sys.modules:
        return False  # finding it would import the parent package
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    loader = getattr(spec, "loader", None)
    return isinstance(loader, importlib.machinery.ExtensionFileLoader) or loader is (
        importlib.machinery.BuiltinImporter
    )


def _function_at(fn: CodeType, t: Target) -> str:
    where = f"{fn.co_filename}:{def_line(fn)}"
    if t.rel_line is not None:
        where = f"{fn.co_filename}:{def_line(fn) + t.rel_line}"
    return f"{fn.co_qualname} at {where}"


def _describe_main(spec: ProbeSpec, code: CodeType) -> str:
    """What a ``__main__:`` spec resolves to in the program's compiled (never run) code."""
    t = spec.target
    if t.has_wildcards:
        n = len(placements_in_module(spec, MAIN, code))
        return f"wildcard: {n} function(s) of the program ({code.co_filename}) match"
    if t.abs_line is not None:
        return f"line {t.abs_line} of the program ({code.co_filename})"
    assert t.qualname is not None
    fn = find_code_by_qualname([code], t.qualname)
    if fn is None:
        from pyprobes.engine import SymbolNotFoundError

        raise SymbolNotFoundError(
            f"the program ({code.co_filename}) defines no function {t.qualname!r}"
        )
    _located(fn, t, MAIN)
    return _function_at(fn, t)


def describe(spec: ProbeSpec, main: CodeType | None = None) -> str:
    """One line: the spec, then what it resolves to (or raise ProbeError); ``main`` is the
    program's code, for ``__main__:`` specs."""
    t = spec.target
    head = f"{spec.kind}:{spec.group}/{spec.event} {t}"
    if t.module == MAIN:
        if main is not None:
            return f"{head} -> {_describe_main(spec, main)}"
        return f"{head} -> the program's own code, resolved when 'pyprobes run' compiles it"
    if t.path is not None:
        return f"{head} -> line {t.abs_line} of {t.path}"
    assert t.module is not None
    if t.has_wildcards:
        matching = [n for n in sys.modules if module_matches(t, n)]
        return f"{head} -> wildcard: {len(matching)} loaded module(s) match; later imports too"
    check_module_known(spec)
    code = _module_code(t.module)
    loaded = sys.modules.get(t.module)
    if t.abs_line is not None:
        roots = (
            module_roots(loaded)
            if loaded is not None
            else [code]
            if isinstance(code, CodeType)
            else []
        )
        if roots:
            locate_line(roots, t.abs_line, f"module {t.module}", t.module)
        return f"{head} -> line {t.abs_line} of module {t.module}"
    assert t.qualname is not None
    fn = find_code_by_qualname([code], t.qualname) if isinstance(code, CodeType) else None
    if fn is None and loaded is not None:
        fn, _ = resolve_in_module(loaded, t.qualname)  # a builtin is refused here, as by run
    if fn is None and code is None:
        if _is_extension(t.module):
            raise InvalidProbeError(
                f"{t.module} is a compiled (C) module: its functions have no bytecode to probe"
            )
        return f"{head} -> pending until {t.module} is imported"
    if fn is None:
        from pyprobes.engine import SymbolNotFoundError

        raise SymbolNotFoundError(f"module {t.module!r} defines no function {t.qualname!r}")
    fn = _located(fn, t, t.module)
    return f"{head} -> {_function_at(fn, t)}"


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
        return _main_module_code(args.module)
    return None


def _main_module_code(name: str) -> CodeType | None:
    """The code 'python -m name' runs (a package's ``__main__``), found and compiled without
    importing anything; None where that would import a parent package first."""
    import importlib.machinery
    import importlib.util

    if "." in name and name.rpartition(".")[0] not in sys.modules:
        return None
    try:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            name = f"{name}.__main__"
            spec = importlib.machinery.PathFinder.find_spec(
                name, list(spec.submodule_search_locations)
            )
        get_code = getattr(getattr(spec, "loader", None), "get_code", None)
        code = get_code(name) if get_code is not None else None
    except (ImportError, SyntaxError, ValueError, OSError):
        return None
    return code if isinstance(code, CodeType) else None


def check(args: argparse.Namespace) -> int:
    """Print what each spec would probe and how its hits would run under ``pyprobes run``
    with these aggregation options; stop at the first bad one."""
    main = _program_context(args)
    specs = check_fields(args, [parse_spec(text) for text in args.specs])
    aggregator = make_aggregator(args)
    for spec in specs:
        print(f"{describe(spec, main)} [{hit_path(spec, aggregator)}]")
    return 0


def hit_path(spec: ProbeSpec, aggregator: Aggregator | None) -> str:
    """``program`` when run's hits of ``spec`` run as a probe program in the core (only
    aggregations asked for), else ``python: why``."""
    if aggregator is None:
        return "python: events are written (no --hist, --count, --by or --stats)"
    plan = programs.plan(spec, aggregator.config)
    return "program" if plan.program is not None else f"python: {plan.reason}"
