"""Symbol resolution: from what a probe names to a code object and a place in it.

Nothing here imports a module or runs the program's code: attributes are read statically
(``__dict__`` along the MRO), modules not imported yet are looked up with their finders only.
"""

from __future__ import annotations

import difflib
import dis
import functools
import gc
import importlib.machinery
import os
import sys
import types
import weakref
from collections.abc import Iterable, Iterator
from types import CodeType, FunctionType

from pyprobes.engine.errors import InvalidProbeError, SymbolNotFoundError

ENTRY, OFFSET, LINE = "entry", "offset", "line"

#: Instructions that run before PY_START or never raise INSTRUCTION events.
_PROLOGUE = frozenset({"RESUME", "COPY_FREE_VARS", "MAKE_CELL", "RETURN_GENERATOR"})
_UNPROBEABLE = frozenset({"RESUME", "END_FOR", "CACHE", "EXTENDED_ARG"})


class Location:
    """A resolved probe point: a code object (held weakly) and where in it.

    ``where`` is ENTRY (offset 0, PY_START), OFFSET (an instruction) or LINE.
    """

    __slots__ = (
        "_code",
        "filename",
        "line",
        "module",
        "offset",
        "qualname",
        "via_wrapped",
        "where",
    )

    def __init__(
        self,
        code: CodeType,
        where: str,
        offset: int,
        line: int | None,
        module: str,
        via_wrapped: bool = False,
    ) -> None:
        self._code = weakref.ref(code)
        self.where = where
        self.offset = offset
        self.line = line
        self.module = module
        self.via_wrapped = via_wrapped
        self.qualname = code.co_qualname
        self.filename = code.co_filename

    @property
    def code(self) -> CodeType | None:
        """The code object, or None once it was collected."""
        return self._code()

    @property
    def symbol(self) -> str:
        """``module:qualname`` as the listing shows it."""
        mod = self.module or os.path.basename(self.filename)
        return f"{mod}:{self.qualname}"

    def __repr__(self) -> str:
        at = f"+{self.offset}" if self.where != LINE else f" line {self.line}"
        return f"<Location {self.symbol}{at}>"


# --- code trees -------------------------------------------------------------------------


def iter_code_tree(root: CodeType) -> Iterator[CodeType]:
    """The code object and every code object nested in it, outermost first, in source order."""
    stack = [root]
    while stack:
        code = stack.pop()
        yield code
        nested = [c for c in code.co_consts if isinstance(c, CodeType)]
        stack.extend(reversed(nested))


def find_code_by_qualname(roots: Iterable[CodeType], qualname: str) -> CodeType | None:
    """The first code object (source order) whose ``co_qualname`` is ``qualname``."""
    for root in roots:
        for code in iter_code_tree(root):
            if code.co_qualname == qualname:
                return code
    return None


def _instructions(code: CodeType) -> tuple[dis.Instruction, ...]:
    return tuple(dis.get_instructions(code))


def _line(instr: dis.Instruction) -> int | None:
    pos = instr.positions
    return pos.lineno if pos is not None else None


def _split_lines(code: CodeType) -> tuple[frozenset[int], frozenset[int]]:
    """(lines with body instructions, lines with only prologue instructions) of one code."""
    body: set[int] = set()
    prologue: set[int] = set()
    in_prologue = True
    for ins in _instructions(code):
        line = _line(ins)
        if in_prologue:
            if line is not None:
                prologue.add(line)
            if ins.opname == "RESUME":
                in_prologue = False
            continue
        if line is not None and ins.opname not in _UNPROBEABLE:
            body.add(line)
    return frozenset(body), frozenset(prologue - body)


def find_line(roots: Iterable[CodeType], line: int) -> tuple[CodeType, str] | None:
    """The outermost code running ``line``: (code, LINE), or (code, ENTRY) for a def line."""
    roots = list(roots)
    for root in roots:
        for code in iter_code_tree(root):
            if line in _split_lines(code)[0]:
                return code, LINE
    for root in roots:
        for code in iter_code_tree(root):
            if line in _split_lines(code)[1]:
                return code, ENTRY
    return None


def _lines_near(roots: Iterable[CodeType], line: int) -> list[int]:
    lines: set[int] = set()
    for root in roots:
        for code in iter_code_tree(root):
            lines |= _split_lines(code)[0]
    return sorted(sorted(lines, key=lambda n: abs(n - line))[:4])


def check_offset(code: CodeType, offset: int) -> None:
    """Raise InvalidProbeError unless ``offset`` starts an instruction that can be probed."""
    instrs = _instructions(code)
    by_offset = {ins.offset: ins for ins in instrs}
    ins = by_offset.get(offset)
    if ins is None:
        before = max((o for o in by_offset if o < offset), default=None)
        after = min((o for o in by_offset if o > offset), default=None)
        near = ", ".join(str(o) for o in (before, after) if o is not None)
        raise InvalidProbeError(
            f"offset {offset} is not an instruction boundary of {code.co_qualname}"
            f" (nearest instructions start at {near}; see dis.dis)"
        )
    if ins.opname in _UNPROBEABLE or ins.opname in _PROLOGUE:
        nxt = [i.offset for i in instrs if i.offset > offset and i.opname not in _UNPROBEABLE]
        hint = f"; the next probeable instruction is at offset {nxt[0]}" if nxt else ""
        raise InvalidProbeError(
            f"offset {offset} of {code.co_qualname} is a {ins.opname} instruction, which"
            f" sys.monitoring cannot probe (use offset 0 for the function entry{hint})"
        )


# --- addresses ----------------------------------------------------------------------------


def unwrap(obj: object, qualname: str | None = None) -> tuple[CodeType, bool]:
    """The code object of a function-like object; follows ``__wrapped__`` (returns it, wrapped?)."""
    seen: set[int] = set()
    wrapped = False
    while True:
        if id(obj) in seen:
            raise InvalidProbeError(f"__wrapped__ chain of {obj!r} is circular")
        seen.add(id(obj))
        if isinstance(obj, CodeType):
            return obj, wrapped
        if isinstance(obj, types.MethodType):
            obj = obj.__func__
            continue
        if isinstance(obj, staticmethod | classmethod):
            obj = obj.__func__
            continue
        if isinstance(obj, property):
            if obj.fget is None:
                raise InvalidProbeError("the property has no getter to probe")
            obj = obj.fget
            continue
        if isinstance(obj, functools.cached_property):
            obj = obj.func
            continue
        inner = _static_attr(obj, "__wrapped__")
        if inner is not None:
            obj = inner
            wrapped = True
            continue
        if isinstance(obj, FunctionType):
            code = obj.__code__
            if qualname is not None and code.co_qualname != qualname:
                found = _search_closure(obj, qualname, depth=3)
                if found is not None:
                    return found, True
            return code, wrapped
        what = type(obj).__name__
        hint = ""
        if isinstance(obj, type):
            hint = f"; probe one of its methods, e.g. '{obj.__qualname__}.__init__'"
        elif isinstance(obj, types.BuiltinFunctionType | types.BuiltinMethodType):
            hint = "; builtins and C functions have no bytecode to probe"
        raise InvalidProbeError(f"{obj!r} is a {what}, not a Python function{hint}")


def _static_attr(obj: object, name: str) -> object | None:
    try:
        d = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return None
    return d.get(name) if isinstance(d, dict) else None


def _search_closure(func: FunctionType, qualname: str, depth: int) -> CodeType | None:
    """Find the user's function inside a wrapper made without functools.wraps."""
    if depth <= 0 or not func.__closure__:
        return None
    for cell in func.__closure__:
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if isinstance(value, FunctionType):
            if value.__code__.co_qualname == qualname:
                return value.__code__
            found = _search_closure(value, qualname, depth - 1)
            if found is not None:
                return found
    return None


# --- symbols ------------------------------------------------------------------------------


def split_symbol(symbol: str) -> tuple[str, str | None]:
    """``"pkg.mod:Qual.name"`` -> (module, qualname); ``"pkg.mod"`` -> (module, None)."""
    if not isinstance(symbol, str) or not symbol:
        raise InvalidProbeError(f"symbol_name must be a non-empty str, not {symbol!r}")
    mod, sep, qual = symbol.partition(":")
    if not mod or (sep and not qual) or ":" in qual:
        raise InvalidProbeError(
            f"symbol_name {symbol!r} is malformed: expected 'pkg.mod:Qual.name' or 'pkg.mod'"
        )
    return mod, (qual if sep else None)


def _lookup_static(ns: object, name: str) -> tuple[bool, object]:
    """Read an attribute without running code: a module's dict, or a class's dicts along the MRO."""
    if isinstance(ns, types.ModuleType):
        d = ns.__dict__
        return (name in d), d.get(name)
    if isinstance(ns, type):
        for klass in ns.__mro__:
            if name in klass.__dict__:
                return True, klass.__dict__[name]
        return False, None
    return False, None


def _names_of(ns: object) -> list[str]:
    if isinstance(ns, types.ModuleType):
        return list(ns.__dict__)
    if isinstance(ns, type):
        return [n for klass in ns.__mro__ for n in klass.__dict__]
    return []


def _did_you_mean(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=3)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def resolve_in_module(module: types.ModuleType, qualname: str) -> tuple[CodeType, bool]:
    """Resolve ``Qual.name`` (with ``<locals>`` parts) in an imported module."""
    parts = qualname.split(".")
    obj: object = module
    walked: list[str] = []
    for i, part in enumerate(parts):
        if part == "<locals>":
            if not walked:
                raise InvalidProbeError(f"qualified name {qualname!r} cannot start with <locals>")
            outer, _ = unwrap(obj, ".".join(walked))
            code = find_code_by_qualname([outer], qualname)
            if code is None:
                inner = [c.co_qualname for c in iter_code_tree(outer) if c is not outer]
                raise SymbolNotFoundError(
                    f"no function {qualname!r} is defined inside {'.'.join(walked)!r} in"
                    f" {module.__name__}{_did_you_mean(qualname, inner)}"
                )
            return code, False
        found, value = _lookup_static(obj, part)
        if not found:
            where = ".".join(walked) or f"module {module.__name__!r}"
            if walked:
                where = f"{module.__name__}:{where}"
            raise SymbolNotFoundError(
                f"{where} has no attribute {part!r}{_did_you_mean(part, _names_of(obj))}"
            )
        walked.append(part)
        obj = value
        if i < len(parts) - 1 and not isinstance(obj, type) and parts[i + 1] != "<locals>":
            raise SymbolNotFoundError(
                f"{module.__name__}:{'.'.join(walked)} is a {type(obj).__name__}, so it has"
                f" no attribute {parts[i + 1]!r} to probe"
            )
    return unwrap(obj, qualname)


def module_exists(name: str) -> bool:
    """True if ``name`` can be imported, found with the finders only (nothing is imported)."""
    return name in sys.modules or find_module_spec(name) is not None


def find_module_spec(name: str) -> importlib.machinery.ModuleSpec | None:
    """The spec the import system would use for ``name``, found with the finders only:
    nothing is imported, not even its parent packages (None if there is none; a module
    already imported has its own ``__spec__``)."""
    parent, _, _ = name.rpartition(".")
    path: list[str] | None = None
    if parent:
        pmod = sys.modules.get(parent)
        if pmod is not None:
            path = list(getattr(pmod, "__path__", None) or [])
        else:
            pspec = find_module_spec(parent)
            path = list(pspec.submodule_search_locations or []) if pspec is not None else []
        if not path:
            return None
    return _find_spec_without_import(name, path)


def _find_spec_without_import(
    name: str, path: list[str] | None
) -> importlib.machinery.ModuleSpec | None:
    if path is not None:
        return importlib.machinery.PathFinder.find_spec(name, path)
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        try:
            spec = find(name, None)
        except Exception:
            continue
        if spec is not None:
            return spec  # type: ignore[no-any-return]
    return None


def missing_module_error(name: str) -> SymbolNotFoundError:
    """The error for a module name that cannot be found, with close matches."""
    import pkgutil

    known = set(sys.modules)
    try:
        known |= {m.name for m in pkgutil.iter_modules()}
    except Exception:
        pass
    return SymbolNotFoundError(f"no module named {name!r}{_did_you_mean(name, known)}")


# --- roots for line probes ------------------------------------------------------------------


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except (OSError, ValueError):
        return False


def _running_codes(filename: str) -> list[CodeType]:
    """Module-level code objects of ``filename`` executing right now on some thread."""
    out: list[CodeType] = []
    for top in sys._current_frames().values():
        f: types.FrameType | None = top
        while f is not None:
            c = f.f_code
            if c.co_name == "<module>" and c not in out and _same_file(c.co_filename, filename):
                out.append(c)
            f = f.f_back
    return out


def _codes_in_namespace(ns: dict[str, object], filename: str, seen: set[int]) -> Iterator[CodeType]:
    for value in list(ns.values()):
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, type):
            yield from _codes_in_namespace(dict(value.__dict__), filename, seen)
            continue
        try:
            code, _ = unwrap(value)
        except (InvalidProbeError, TypeError):
            continue
        if _same_file(code.co_filename, filename):
            yield code


def module_roots(module: types.ModuleType) -> list[CodeType]:
    """Code objects of a module that still exist: its functions and methods, and running code."""
    filename = getattr(module, "__file__", None)
    if not filename:
        return []
    roots = _running_codes(filename)
    roots += list(_codes_in_namespace(dict(module.__dict__), filename, set()))
    return _outermost(roots)


def file_roots(path: str) -> list[CodeType]:
    """Code objects that exist for a source file: loaded modules, running frames, live functions."""
    roots = _running_codes(path)
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if isinstance(f, str) and _same_file(f, path):
            roots += module_roots(mod)
    if not roots:
        for obj in gc.get_objects():
            if isinstance(obj, FunctionType) and _same_file(obj.__code__.co_filename, path):
                roots.append(obj.__code__)
    return _outermost(roots)


def _outermost(codes: list[CodeType]) -> list[CodeType]:
    """Drop codes nested in others of the list; order by first line."""
    unique = list({id(c): c for c in codes}.values())
    nested: set[int] = set()
    for c in unique:
        for inner in iter_code_tree(c):
            if inner is not c:
                nested.add(id(inner))
    return sorted((c for c in unique if id(c) not in nested), key=lambda c: c.co_firstlineno)


def locate_line(roots: list[CodeType], line: int, what: str, module: str) -> Location:
    """Resolve an absolute line among ``roots`` or raise, naming nearby lines with code."""
    if not isinstance(line, int) or isinstance(line, bool) or line < 1:
        raise InvalidProbeError(f"line must be a positive int, not {line!r}")
    hit = find_line(roots, line)
    if hit is None:
        near = _lines_near(roots, line)
        hint = f"; lines with code near it: {', '.join(map(str, near))}" if near else ""
        raise InvalidProbeError(f"line {line} of {what} has no code to probe{hint}")
    code, where = hit
    if where == ENTRY:
        return Location(code, ENTRY, 0, None, module)
    return Location(code, LINE, -1, line, module)


def locate_in_code(
    code: CodeType, offset: int, line: int | None, module: str, via_wrapped: bool
) -> Location:
    """Resolve an offset or a line inside one function's code tree."""
    if line is not None:
        loc = locate_line([code], line, f"{code.co_qualname} ({code.co_filename})", module)
        target = loc.code
        assert target is not None
        return Location(target, loc.where, loc.offset, loc.line, module, via_wrapped)
    if offset == 0:
        return Location(code, ENTRY, 0, None, module, via_wrapped)
    check_offset(code, offset)
    return Location(code, OFFSET, offset, None, module, via_wrapped)


def module_name_of(code: CodeType) -> str:
    """The name of the loaded module a code object comes from, or ``""``."""
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if isinstance(f, str) and f == code.co_filename:
            return name
    return ""
