"""Where a spec's target goes: engine probe placements, wildcards, ``__main__``, relative lines.

A placement is the engine addressing (``addr``/``symbol_name``/``filename`` + offset/line) and
the text the events show as ``probe``. Simple targets use the engine's own symbol resolution
(pending until import, re-armed on reload); wildcard targets, targets in the program's own
``__main__`` and relative lines are resolved here against code trees, before the code runs.
"""

from __future__ import annotations

import fnmatch
import inspect
import linecache
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.machinery import ExtensionFileLoader, ModuleSpec, PathFinder
from types import CodeType

from pyprobes.engine.blacklist import check
from pyprobes.engine.errors import InvalidProbeError, ProbeBlacklistedError, SymbolNotFoundError
from pyprobes.engine.probes import Kprobe, Kretprobe, Probe
from pyprobes.engine.resolve import (
    Location,
    find_code_by_qualname,
    find_module_spec,
    iter_code_tree,
    module_exists,
    module_roots,
    split_symbol,
)
from pyprobes.lang import ProbeSpec, Target
from pyprobes.lang.diagnostics import did_you_mean

MAIN = "__main__"


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
    """Whether a wildcard qualname ``pattern`` takes ``code``: every named function matches
    by its ``co_qualname``, nested ones (``make.<locals>.inner``) included, except that a
    pattern with a ``.`` takes nested functions only when it spells ``<`` (``Class.*`` is
    the methods, not what is defined inside them); lambdas, comprehensions and generator
    expressions (``<lambda>``, ``<genexpr>``) only for a pattern with ``<`` in it; module
    and class bodies never."""
    name = code.co_qualname
    if not code.co_flags & inspect.CO_NEWLOCALS:
        return False  # a module or class body, which runs once as it is defined
    if code.co_name == "__annotate__" and "__annotate__" not in pattern:
        return False  # PEP 649 (3.14+): made by the compiler for annotations, not the user's
    if "<" not in pattern:
        if code.co_name.startswith("<"):
            return False  # lambdas and comprehensions only when asked for
        if "." in pattern and "<locals>" in name:
            return False  # a dotted pattern names a level: nested functions when it says so
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


def probe_for(
    spec: ProbeSpec,
    pl: Placement,
    on_entry: Callable[..., object] | None = None,
    on_return: Callable[..., object] | None = None,
) -> Probe:
    """The engine probe a session registers for one placement of ``spec``: ``on_entry`` is
    a ``p`` probe's pre_handler, ``on_return`` an ``r`` probe's handler (none, for resolving
    only)."""
    if spec.is_return:
        return Kretprobe(
            symbol_name=pl.symbol_name,
            addr=pl.addr,
            filename=pl.filename,
            handler=on_return,
            maxactive=spec.pool_size,
        )
    return Kprobe(
        symbol_name=pl.symbol_name,
        addr=pl.addr,
        filename=pl.filename,
        offset=pl.offset,
        line=pl.line,
        pre_handler=on_entry,
    )


#: A module's code compiled from its source without running it, or None where that cannot be
#: had without importing something.
ModuleCode = Callable[[str], CodeType | None]


def _module_spec(name: str) -> ModuleSpec | None:
    """The ModuleSpec of ``name``: its own once imported, else as the finders would give it
    (nothing imported: ``engine.resolve.find_module_spec``)."""
    mod = sys.modules.get(name)
    if mod is not None:
        found = getattr(mod, "__spec__", None)
        return found if isinstance(found, ModuleSpec) else None
    try:
        return find_module_spec(name)
    except (ImportError, ValueError):
        return None


def _code_of(module_spec: ModuleSpec | None, name: str) -> CodeType | None:
    get_code = getattr(getattr(module_spec, "loader", None), "get_code", None)
    try:
        code = get_code(name) if get_code is not None else None
    except Exception:
        return None
    return code if isinstance(code, CodeType) else None


def module_code(name: str) -> CodeType | None:
    """A module's code, compiled from its source without running it (a ``ModuleCode``); None
    for a module not found, or a submodule of a package not imported yet (whose submodules
    run only once it is)."""
    parent = name.rpartition(".")[0]
    if name not in sys.modules and parent and parent not in sys.modules:
        return None
    return _code_of(_module_spec(name), name)


def main_module_code(name: str) -> CodeType | None:
    """The code ``python -m name`` runs (a package's ``__main__``), found and compiled without
    importing anything; None where that would import a parent package first."""
    if "." in name and name.rpartition(".")[0] not in sys.modules:
        return None
    module_spec = _module_spec(name)
    if module_spec is not None and module_spec.submodule_search_locations is not None:
        name = f"{name}.__main__"
        try:
            module_spec = PathFinder.find_spec(name, list(module_spec.submodule_search_locations))
        except (ImportError, ValueError, OSError):
            return None
    return _code_of(module_spec, name)


def _native_module(name: str) -> bool:
    """Whether ``name`` is a builtin or C extension module (found without importing it)."""
    if name in sys.builtin_module_names:
        return True
    if "." in name and name not in sys.modules:
        return False  # a submodule of a package not imported: not looked for (as run)
    return isinstance(getattr(_module_spec(name), "loader", None), ExtensionFileLoader)


def _no_bytecode(name: str) -> InvalidProbeError:
    return InvalidProbeError(
        f"module {name!r} is built in or a C extension, not Python source; builtins and C"
        " functions have no bytecode to probe"
    )


@dataclass(frozen=True, slots=True)
class Resolved:
    """One probe a spec would place, and where it would arm (None: pending until import);
    ``code`` keeps the location's code (held weakly by it) alive."""

    placement: Placement
    location: Location | None
    code: CodeType | None = None

    @classmethod
    def of(cls, pl: Placement, loc: Location | None) -> Resolved:
        """``pl`` resolved to ``loc``."""
        return cls(pl, loc, loc.code if loc is not None else None)


def resolve_spec(
    spec: ProbeSpec,
    module_code: ModuleCode,
    main: CodeType | None = None,
) -> list[Resolved]:
    """What ``spec`` would probe, by the path a TraceSession arms it (``arm``, ``arm_main``,
    then imports), registering nothing: each placement's probe is resolved by the engine as
    registering it, or arming it when its module is imported, would be; raises the
    ProbeError that would. Modules not imported are resolved on ``module_code`` (compiled,
    not run); ``__main__`` specs on ``main`` (none without it)."""
    from pyprobes.engine import registry  # the engine's resolution (it selects the core)

    t = spec.target
    if t.module == MAIN:
        if main is None:
            return []
        return [_resolve(spec, pl) for pl in placements_in_module(spec, MAIN, main)]
    static = static_placement(spec)
    if static is not None:
        probe = probe_for(spec, static)
        loc = registry.resolve_probe(probe)
        if loc is None and static.symbol_name is not None:
            name = split_symbol(static.symbol_name)[0]
            code = module_code(name)
            if code is None and _native_module(name):
                raise _no_bytecode(name)
            if code is not None:
                loc = registry.resolve_probe_on_code(probe, name, code)
        return [Resolved.of(static, loc)]
    check_module_known(spec)
    placements = placements_now(spec)
    assert t.module is not None
    if not any(c in t.module for c in "*?[") and t.module not in sys.modules:
        code = module_code(t.module)
        if code is None and _native_module(t.module):
            raise _no_bytecode(t.module)
        if code is not None:
            placements += placements_in_module(spec, t.module, code)
    return [_resolve(spec, pl) for pl in placements]


def _resolve(spec: ProbeSpec, pl: Placement) -> Resolved:
    from pyprobes.engine import registry

    return Resolved.of(pl, registry.resolve_probe(probe_for(spec, pl)))


__all__ = [
    "MAIN",
    "InvalidProbeError",
    "ModuleCode",
    "Placement",
    "Resolved",
    "check_module_known",
    "count_matches",
    "def_line",
    "main_module_code",
    "matches_in_tree",
    "module_code",
    "module_matches",
    "place_in_code",
    "placements_in_module",
    "placements_now",
    "probe_for",
    "resolve_spec",
    "static_placement",
]
