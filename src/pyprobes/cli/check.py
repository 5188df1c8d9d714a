"""``pyprobes check``: parse and resolve specs without running (or importing) anything."""

from __future__ import annotations

import argparse
import sys

from pyprobes.engine import find_code_by_qualname, module_exists
from pyprobes.spec import ProbeSpec, parse_spec
from pyprobes.tracer.targets import MAIN, check_module_known, def_line, module_matches


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``check`` subcommand."""
    p = sub.add_parser(
        "check",
        help="parse and resolve probe specs",
        description="Parse and resolve each SPEC, importing nothing the program would not;"
        " print what each would probe; exit non-zero on the first bad one.",
    )
    p.add_argument("specs", nargs="+", metavar="SPEC")
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


def describe(spec: ProbeSpec) -> str:
    """One line: the spec, then what it resolves to (or raise ProbeError)."""
    t = spec.target
    head = f"{spec.kind}:{spec.group}/{spec.event} {t}"
    if t.module == MAIN:
        return f"{head} -> the program's own code, resolved when 'pyprobes run' compiles it"
    if t.path is not None:
        return f"{head} -> line {t.abs_line} of {t.path}"
    assert t.module is not None
    if t.has_wildcards:
        loaded = [n for n in sys.modules if module_matches(t, n)]
        return f"{head} -> wildcard: {len(loaded)} loaded module(s) match; later imports too"
    check_module_known(spec)
    code = _module_code(t.module)
    if t.abs_line is not None:
        return f"{head} -> line {t.abs_line} of module {t.module}"
    if code is None:
        return f"{head} -> pending until {t.module} is imported"
    assert t.qualname is not None
    fn = find_code_by_qualname([code], t.qualname)  # type: ignore[list-item]
    if fn is None and t.module in sys.modules:
        from pyprobes.engine.resolve import resolve_in_module

        fn, _ = resolve_in_module(sys.modules[t.module], t.qualname)
    if fn is None:
        from pyprobes.engine import SymbolNotFoundError

        raise SymbolNotFoundError(f"module {t.module!r} defines no function {t.qualname!r}")
    where = f"{fn.co_filename}:{def_line(fn)}"
    if t.rel_line is not None:
        where = f"{fn.co_filename}:{def_line(fn) + t.rel_line}"
    return f"{head} -> {fn.co_qualname} at {where}"


def check(args: argparse.Namespace) -> int:
    """Print what each spec would probe; stop at the first bad one."""
    for text in args.specs:
        spec = parse_spec(text)
        print(describe(spec))
    return 0
