"""Side-effect-free, bounded capture of fetch args: read values without running their code.

``fetch`` walks a fetch path reading only what needs no code of the probed
program: instance ``__dict__`` entries, ``__slots__`` members, plain
(non-descriptor) class attributes and C-level getset attributes of builtin types
(``$exception.args``). Properties, methods, other descriptors, ``__getattr__``
and custom ``__getattribute__`` are never run: reaching one is a fault.
Subscripts work only on exact builtin dict, list, tuple, str and bytes.

``render`` turns any value into bounded JSON-compatible data. Builtin values are
rendered directly; exceptions as ``module.Type(arg, ...)`` from ``BaseException``'s own
``args`` slot, their arguments rendered by the same rules (``exception_text``); other
objects become ``"<module.Type at 0x...>"`` without
calling their ``__repr__``, ``__eq__``, ``__len__`` or anything else. Only the
explicit ``:repr`` and ``:str`` types run code (the object's own ``__repr__`` or
``__str__``), because the user asked for it.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from typing import Final

from pyprobes.engine.reads import CaptureFault, class_mro, get_attr, get_item, type_name
from pyprobes.lang.model import Attr, FetchArg, Index, Root

type JSON = bool | int | float | str | list[JSON] | dict[str, JSON] | None

FAULT: Final = "(fault)"
TRUNCATED: Final = "..."
DEFAULT_MAX_LEN: Final = 256
DEFAULT_MAX_DEPTH: Final = 4
DEFAULT_MAX_ITEMS: Final = 32
DEFAULT_MAX_NODES: Final = 512

# str(int) refuses more than 4300 digits; stay well below, and render larger as hex.
_MAX_INT_DIGITS: Final = 4000
_CONTAINERS: Final = (list, tuple, set, frozenset, dict)
_SIZED: Final = (str, bytes, bytearray, list, tuple, dict, set, frozenset)
_EXC_ARGS: Final = BaseException.__dict__["args"]  # the C getset: reads the slot, runs nothing


def fetch(arg: FetchArg, resolve_root: Callable[[str], object]) -> object:
    """Walk ``arg.path`` from ``resolve_root(root)``; raise CaptureFault on any refused step."""
    root = arg.path[0] if arg.path else None
    if not isinstance(root, Root):
        raise CaptureFault("a fetch path starts with a name")
    try:
        value = resolve_root(root.name)
    except KeyError:
        raise CaptureFault(f"no variable '{root.name}' here") from None
    for step in arg.path[1:]:
        try:
            if isinstance(step, Attr):
                value = get_attr(value, step.name)
            elif isinstance(step, Index):
                value = get_item(value, step.key)
            else:
                raise CaptureFault("a name can only start a fetch path")
        except CaptureFault:
            raise
        except (LookupError, AttributeError, TypeError, ValueError) as err:
            raise CaptureFault(f"{arg.expr}: {type(err).__name__}: {err}") from err
    return value


class _Renderer:
    """Renders one value within the limits; counts nodes so wide-and-deep data stays small."""

    def __init__(self, max_len: int, max_depth: int, max_items: int, max_nodes: int) -> None:
        self.max_len = max(max_len, 0)
        self.max_depth = max_depth
        self.max_items = max(max_items, 0)
        self.nodes_left = max_nodes

    def text(self, value: str) -> str:
        text = value if len(value) <= self.max_len else value[: self.max_len] + TRUNCATED
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        return text

    def integer(self, value: int) -> JSON:
        if value.bit_length() <= min(self.max_len, _MAX_INT_DIGITS) * 3:
            return value
        return hex(value)[: self.max_len] + TRUNCATED

    def value(self, value: object, depth: int = 0) -> JSON:
        self.nodes_left -= 1
        if self.nodes_left < 0:
            return TRUNCATED
        cls = type(value)
        if value is None or cls is bool:
            return value  # type: ignore[return-value]
        if cls is int:
            return self.integer(value)  # type: ignore[arg-type]
        if cls is float:
            return _float(value)  # type: ignore[arg-type]
        if cls is str:
            return self.text(value)  # type: ignore[arg-type]
        if cls is bytes or cls is bytearray:
            data = bytes(value[: self.max_len])  # type: ignore[index]
            marker = TRUNCATED if len(value) > self.max_len else ""  # type: ignore[arg-type]
            return repr(data) + marker
        if cls in _CONTAINERS:
            return self.container(value, depth)
        if BaseException in class_mro(cls):
            return self.exception(value, depth)  # type: ignore[arg-type]
        return opaque(value)

    def exception(self, exc: BaseException, depth: int) -> str:
        """``Type(arg, ...)``: BaseException's own ``args`` slot (a subclass's property or
        ``__repr__`` never runs), each argument rendered within the limits."""
        args = _EXC_ARGS.__get__(exc, BaseException)
        parts: list[str] = []
        for arg in itertools.islice(args, self.max_items):
            rendered = self.value(arg, depth + 1)
            if type(arg) is str and type(rendered) is str:
                parts.append(repr(rendered))
            elif type(rendered) is str:
                parts.append(rendered)
            else:
                parts.append(json.dumps(rendered, sort_keys=True))
        if len(args) > self.max_items:
            parts.append(f"{TRUNCATED}(+{len(args) - self.max_items} more)")
        text = f"{type_name(type(exc))}({', '.join(parts)})"
        return text if len(text) <= self.max_len else text[: self.max_len] + TRUNCATED

    def container(self, value: object, depth: int) -> JSON:
        assert isinstance(value, list | tuple | set | frozenset | dict)
        cls = type(value)
        if depth >= self.max_depth:
            return f"<{cls.__name__} of {len(value)} items>"
        more = len(value) - self.max_items
        if cls is dict:
            assert isinstance(value, dict)
            out: dict[str, JSON] = {}
            for key, item in itertools.islice(value.items(), self.max_items):
                name = self.key(key, depth)
                while name in out:
                    name += "'"
                out[name] = self.value(item, depth + 1)
            if more > 0:
                out[TRUNCATED] = f"(+{more} more)"
            return out
        items = [self.value(item, depth + 1) for item in itertools.islice(value, self.max_items)]
        if cls is set or cls is frozenset:
            items.sort(key=lambda item: json.dumps(item, sort_keys=True))
        if more > 0:
            items.append(f"{TRUNCATED}(+{more} more)")
        return items

    def key(self, key: object, depth: int) -> str:
        rendered = self.value(key, depth + 1)
        return rendered if type(rendered) is str else json.dumps(rendered, sort_keys=True)


def _float(value: float) -> JSON:
    """Finite floats as numbers; nan and infinities as "nan", "inf", "-inf" (strict JSON)."""
    return value if math.isfinite(value) else repr(value)


def opaque(value: object) -> str:
    """``<module.Type at 0x...>``: names an object without running any of its code."""
    return f"<{type_name(type(value))} at {id(value):#x}>"


def _convert(value: object, kind: str, renderer: _Renderer) -> JSON:
    """Apply a fetch arg's ``:TYPE``."""
    cls = type(value)
    if kind == "repr":
        return renderer.text(str(repr(value)))
    if kind == "str":
        return renderer.text(str.__str__(str(value)))
    if kind == "type":
        return type_name(cls)
    if kind == "len":
        if cls not in _SIZED:
            raise CaptureFault(f":len of {type_name(cls)} refused (only builtin containers)")
        return len(value)  # type: ignore[arg-type]
    if kind in ("int", "float"):
        if cls not in (bool, int, float, str, bytes):
            raise CaptureFault(f":{kind} of {type_name(cls)} refused (only builtin numbers)")
        if cls in (str, bytes) and len(value) > _MAX_INT_DIGITS:  # type: ignore[arg-type]
            raise CaptureFault("number text too long")
        if kind == "int":
            return renderer.integer(int(value))  # type: ignore[call-overload]
        return _float(float(value))  # type: ignore[arg-type]
    raise CaptureFault(f"unknown type '{kind}'")


def exception_text(exc: BaseException | None, max_len: int = 200) -> str | None:
    """A bounded one-line form of an exception that runs none of its code (None for None)."""
    if exc is None:
        return None
    rendered = render(exc, max_len=max_len, max_depth=2, max_items=8, max_nodes=64)
    return rendered if type(rendered) is str else FAULT


def render(
    value: object,
    type: str | None = None,
    *,
    max_len: int = DEFAULT_MAX_LEN,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_items: int = DEFAULT_MAX_ITEMS,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> JSON:
    """Bounded JSON-compatible form of ``value`` after ``:TYPE``; ``(fault)`` if anything raises."""
    renderer = _Renderer(max_len, max_depth, max_items, max_nodes)
    try:
        return renderer.value(value) if type is None else _convert(value, type, renderer)
    except Exception:
        return FAULT


def fetch_and_render(
    arg: FetchArg,
    resolve_root: Callable[[str], object],
    *,
    max_len: int = DEFAULT_MAX_LEN,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_items: int = DEFAULT_MAX_ITEMS,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> JSON:
    """Fetch and render one fetch arg; never raises (any failure is ``"(fault)"``)."""
    try:
        value = fetch(arg, resolve_root)
    except Exception:
        return FAULT
    return render(
        value,
        arg.type,
        max_len=max_len,
        max_depth=max_depth,
        max_items=max_items,
        max_nodes=max_nodes,
    )
