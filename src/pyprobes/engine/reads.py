"""Reading attributes and items without running any code of the object's type.

``get_attr`` reads only what needs no code of the probed program: instance ``__dict__``
entries, ``__slots__`` members, plain (non-descriptor) class attributes and C-level getset
attributes of builtin types (``$exception.args``). Properties, methods, other descriptors,
``__getattr__`` and custom ``__getattribute__`` are never run: reaching one is a fault.
``get_item`` subscripts exact builtin dict, list, tuple, str and bytes only. The probe
language's captures (``lang.capture``) and the core's probe programs (``engine.program``)
both read through these, so a fetch path means the same on either.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Final

from pyprobes.engine.errors import ProbeError

IndexKey = str | int | float | bool | None

_MISSING: Final = object()
_SUBSCRIPTABLE: Final = (list, tuple, str, bytes)


def is_dunder(name: str) -> bool:
    """Whether ``name`` is a ``__special__`` name, which fetch paths refuse."""
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


class CaptureFault(ProbeError, LookupError):
    """A fetch path step was refused or failed: the fetch arg renders as ``(fault)``."""

    slug = "capture-fault"


def class_mro(cls: type) -> tuple[type, ...]:
    """``cls.__mro__`` read through ``type``'s own slot, so no metaclass code runs."""
    mro: tuple[type, ...] = type.__dict__["__mro__"].__get__(cls, type)
    return mro


def _class_dict(cls: type) -> Mapping[str, object]:
    """``cls.__dict__`` read through ``type``'s own slot."""
    namespace: Mapping[str, object] = type.__dict__["__dict__"].__get__(cls, type)
    return namespace


def _lookup(mro: tuple[type, ...], name: str) -> object:
    """The raw class attribute ``name`` along ``mro``, or ``_MISSING``; never calls ``__get__``."""
    for cls in mro:
        namespace = _class_dict(cls)
        if name in namespace:
            return namespace[name]
    return _MISSING


def _type_has(cls: type, name: str) -> bool:
    return _lookup(class_mro(cls), name) is not _MISSING


def type_name(cls: type) -> str:
    """``module.QualName`` of a type (builtins unprefixed), read without running its code."""
    module = type.__dict__["__module__"].__get__(cls, type)
    qualname = type.__dict__["__qualname__"].__get__(cls, type)
    qualname = qualname if type(qualname) is str else "?"
    if type(module) is not str or module == "builtins":
        return qualname
    return f"{module}.{qualname}"


def _refuse(obj: object, name: str, raw: object) -> CaptureFault:
    kind = type(raw)
    if issubclass(kind, property):
        what = "a property"
    elif kind is types.FunctionType or kind is types.BuiltinFunctionType:
        what = "a method"
    else:
        what = f"a descriptor ({type_name(kind)})"
    return CaptureFault(
        f"attribute '{name}' of {type_name(type(obj))} is {what}; refused (reading it may run code)"
    )


def _read_data_descriptor(obj: object, name: str, raw: object) -> object:
    """Read a ``__slots__`` member or a getset of a builtin type; refuse any other descriptor."""
    kind = type(raw)
    if kind is types.MemberDescriptorType:
        assert isinstance(raw, types.MemberDescriptorType)
        return raw.__get__(obj, type(obj))
    if kind is types.GetSetDescriptorType:
        assert isinstance(raw, types.GetSetDescriptorType)
        # Only builtin types' getsets are known to be plain reads; an extension
        # module's (Cython properties, say) can run arbitrary code.
        if type.__dict__["__module__"].__get__(raw.__objclass__, type) == "builtins":
            return raw.__get__(obj, type(obj))
    raise _refuse(obj, name, raw)


def _instance_dict(obj: object, mro: tuple[type, ...]) -> dict[str, object] | None:
    """The instance ``__dict__`` if the type has the ordinary C-level one, else None."""
    raw = _lookup(mro, "__dict__")
    if type(raw) is types.GetSetDescriptorType or type(raw) is types.MemberDescriptorType:
        namespace: object = raw.__get__(obj, type(obj))
        if dict in class_mro(type(namespace)):  # a subclass too: read with dict.get, below
            return namespace  # type: ignore[return-value]
    return None


def _is_descriptor(raw: object) -> bool:
    return _type_has(type(raw), "__get__")


def _is_data_descriptor(raw: object) -> bool:
    return _type_has(type(raw), "__set__") or _type_has(type(raw), "__delete__")


def get_attr(obj: object, name: str) -> object:
    """``obj.name`` without running any code of the object's type; CaptureFault if refused."""
    if is_dunder(name):
        raise CaptureFault(f"dunder attribute '{name}' is refused")
    cls = type(obj)
    mro = class_mro(cls)
    # A __getattribute__ written in Python means what the program sees is not what
    # is stored (lazy proxies): the static view would mislead, so refuse.
    if type(_lookup(mro, "__getattribute__")) is not types.WrapperDescriptorType:
        raise CaptureFault(f"{type_name(cls)} customizes __getattribute__; refused")
    raw = _lookup(mro, name)
    if type in mro:
        assert isinstance(obj, type)
        if raw is not _MISSING and _is_data_descriptor(raw):
            raise _refuse(obj, name, raw)
        own = _lookup(class_mro(obj), name)
        if own is not _MISSING:
            if _is_descriptor(own):
                raise _refuse(obj, name, own)
            return own
    else:
        if raw is not _MISSING and _is_data_descriptor(raw):
            return _read_data_descriptor(obj, name, raw)
        namespace = _instance_dict(obj, mro)
        if namespace is not None:
            found = dict.get(namespace, name, _MISSING)  # (as object.__getattribute__ reads)
            if found is not _MISSING:
                return found
    if raw is _MISSING:
        note = (
            " (its __getattr__ is not run)" if _lookup(mro, "__getattr__") is not _MISSING else ""
        )
        raise CaptureFault(f"{type_name(cls)} object has no attribute '{name}'{note}")
    if _is_descriptor(raw):
        raise _refuse(obj, name, raw)
    return raw


def get_item(obj: object, key: IndexKey) -> object:
    """``obj[key]`` on exact builtin dict, list, tuple, str and bytes only."""
    cls = type(obj)
    if cls is dict:
        assert isinstance(obj, dict)
        # The literal key hashes in C; only a stored user-object key with the very
        # same hash could have its __eq__ run, an accepted residual risk.
        return obj[key]
    if cls in _SUBSCRIPTABLE:
        assert isinstance(obj, list | tuple | str | bytes)
        if type(key) is not int and type(key) is not bool:
            raise CaptureFault(f"{type_name(cls)} indices must be integers, not {key!r}")
        assert isinstance(key, int)
        return obj[key]
    raise CaptureFault(
        f"subscript of {type_name(cls)} refused (only exact dict, list, tuple, str and bytes)"
    )
