"""Where a spec's target goes: engine probe placements, wildcards, ``__main__``, relative lines.

A placement is the engine addressing (``addr``/``symbol_name``/``filename`` + offset/line) and
the text the events show as ``probe``. Simple targets use the engine's own symbol resolution
(pending until import, re-armed on reload); wildcard targets, targets in the program's own
``__main__`` and relative lines are resolved here against code trees, before the code runs.
"""

from __future__ import annotations

import fnmatch
import linecache
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import CodeType

from pyprobes.engine import (
    InvalidProbeError,
    ProbeBlacklistedError,
    SymbolNotFoundError,
    find_code_by_qualname,
    iter_code_tree,
    module_exists,
    module_roots,
)
from pyprobes.engine.blacklist import check
from pyprobes.spec import ProbeSpec, Target
from pyprobes.spec.diagnostics import did_you_mean

MAIN = "__main__"
CO_OPTIMIZED = 0x1  # inspect.CO_OPTIMIZED: a function's code (not a module or class body)


@dataclass(frozen=True, slots=True)
class Placement:
    """One engine probe for a spec: how to address it and how events name it."""

    probe_text: str
    symbol_name: str | None = None
    addr: CodeType | None = None
    filename: str | None = None
    offset: int = 0
    line: int | None = None


def def_line(code: CodeType) -> int:
    """The line of the ``def`` of a function (after its decorators), from its source."""
    first = code.co_firstlineno
    for n in range(first, first + 50):
        text = linecache.getline(code.co_filename, n).lstrip()
        if not text:
            if n > first + 1 and not linecache.getline(code.co_filename, first):
                break
            continue
        if text.startswith(("def ", "async def ")):
            return n
    return first


def _function_text(module: str, code: CodeType, spec: ProbeSpec, offset: int) -> str:
    if spec.is_return:
        return f"{module}:{code.co_qualname}"
    return f"{module}:{code.co_qualname}+{offset}"


def place_in_code(module: str, code: CodeType, spec: ProbeSpec) -> Placement:
    """The placement of a (non-wildcard) function target on a known code object."""
    t = spec.target
    if t.rel_line is not None:
        line = def_line(code) + t.rel_line
        if t.rel_line == 0:
            return Placement(_function_text(module, code, spec, 0), addr=code)
        return Placement(f"{module}:{code.co_qualname}:{t.rel_line}", addr=code, line=line)
    offset = t.offset or 0
    return Placement(_function_text(module, code, spec, offset), addr=code, offset=offset)


def _wanted(code: CodeType, pattern: str) -> bool:
    name = code.co_qualname
    if code.co_name == "<module>" or not code.co_flags & CO_OPTIMIZED:
        return False  # a module or class body runs once: not a function
    if code.co_name == "__annotate__" and "__annotate__" not in pattern:
        return False  # PEP 649 (3.14+): made by the compiler for annotations, not the user's
    if code.co_name.startswith("<") and "<" not in pattern:
        return False  # lambdas, comprehensions and generator expressions only when asked for
    # Nested functions (``make.<locals>.inner``) are functions of the module: ``*`` has them.
    return fnmatch.fnmatchcase(name, pattern)


def matches_in_tree(module: str, roots: list[CodeType], spec: ProbeSpec) -> Iterator[Placement]:
    """Placements for every function in ``roots`` that a wildcard target matches."""
    pattern = spec.target.qualname or "*"
    seen: set[int] = set()
    for root in roots:
        for code in iter_code_tree(root):
            if id(code) in seen or not _wanted(code, pattern):
                continue
            seen.add(id(code))
            try:
                check(code)
            except ProbeBlacklistedError:
                continue
            yield place_in_code(module, code, spec)


def static_placement(spec: ProbeSpec) -> Placement | None:
    """A placement the engine resolves by itself (symbol or file), or None if it needs code."""
    t = spec.target
    if t.has_wildcards or t.module == MAIN:
        return None
    if t.abs_line is not None:
        if t.path is not None:
            return Placement(str(t), filename=t.path, line=t.abs_line)
        return Placement(str(t), symbol_name=t.module, line=t.abs_line)
    if t.rel_line is not None:
        return None
    assert t.module is not None and t.qualname is not None
    text = (
        f"{t.module}:{t.qualname}" if spec.is_return else f"{t.module}:{t.qualname}+{t.offset or 0}"
    )
    return Placement(text, symbol_name=f"{t.module}:{t.qualname}", offset=t.offset or 0)


def module_matches(target: Target, name: str) -> bool:
    """Whether a module name is one the target's module (pattern) names."""
    return target.module is not None and fnmatch.fnmatchcase(name, target.module)


def placements_in_module(spec: ProbeSpec, module: str, root: CodeType) -> list[Placement]:
    """Placements for a spec in a module's code tree (module code about to run)."""
    t = spec.target
    if t.has_wildcards:
        return list(matches_in_tree(module, [root], spec))
    if t.abs_line is not None:
        return [Placement(str(t), addr=root, line=t.abs_line)]
    assert t.qualname is not None
    code = find_code_by_qualname([root], t.qualname)
    if code is None:
        defined = {c.co_qualname for c in iter_code_tree(root) if c is not root}
        raise SymbolNotFoundError(
            f"{module} defines no function {t.qualname!r}{did_you_mean(t.qualname, defined)}"
        )
    return [place_in_code(module, code, spec)]


def placements_now(spec: ProbeSpec) -> list[Placement]:
    """Placements in modules already imported (wildcards and relative lines)."""
    t = spec.target
    out: list[Placement] = []
    for name, mod in list(sys.modules.items()):
        if mod is None or name == MAIN or not module_matches(t, name):
            continue
        roots = module_roots(mod)
        if t.has_wildcards:
            out.extend(matches_in_tree(name, roots, spec))
        else:
            assert t.qualname is not None
            code = find_code_by_qualname(roots, t.qualname)
            if code is None:
                raise SymbolNotFoundError(f"{name} has no function {t.qualname!r}")
            out.append(place_in_code(name, code, spec))
    return out


def count_matches(
    spec: ProbeSpec, main: CodeType | None = None, main_names: tuple[str, ...] = (MAIN,)
) -> int:
    """How many functions ``spec`` would probe now, placing nothing: 1 for a single target;
    for a wildcard, the distinct functions it matches in the modules already imported and,
    when it names the program's module, in ``main`` (its running module code)."""
    t = spec.target
    if not t.has_wildcards:
        return 1
    seen: set[int] = set()
    for name, mod in list(sys.modules.items()):
        if mod is None or name == MAIN or not module_matches(t, name):
            continue
        seen.update(id(pl.addr) for pl in matches_in_tree(name, module_roots(mod), spec))
    if main is not None and any(module_matches(t, n) for n in main_names):
        seen.update(id(pl.addr) for pl in matches_in_tree(MAIN, [main], spec))
    return len(seen)


def check_module_known(spec: ProbeSpec) -> None:
    """Raise SymbolNotFoundError for a plain module name that cannot be imported."""
    t = spec.target
    if t.module is None or t.module == MAIN or "*" in t.module or "?" in t.module:
        return
    if not module_exists(t.module):
        from pyprobes.engine.resolve import missing_module_error

        raise missing_module_error(t.module)


__all__ = [
    "MAIN",
    "InvalidProbeError",
    "Placement",
    "check_module_known",
    "count_matches",
    "def_line",
    "matches_in_tree",
    "module_matches",
    "place_in_code",
    "placements_in_module",
    "placements_now",
    "static_placement",
]
