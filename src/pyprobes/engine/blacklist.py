"""The blacklist (kernel NOKPROBE_SYMBOL): pyprobes itself and functions marked ``@noprobe``."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from types import CodeType

from pyprobes.engine.errors import ProbeBlacklistedError

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_noprobe_codes: weakref.WeakSet[CodeType] = weakref.WeakSet()


def noprobe[F: Callable[..., object]](func: F) -> F:
    """Mark a function so that no probe can be put on it (or anything nested in it)."""
    code = getattr(func, "__code__", None)
    if isinstance(code, CodeType):
        _noprobe_codes.add(code)
    return func


def _is_ours(code: CodeType) -> bool:
    try:
        path = os.path.abspath(code.co_filename)
    except (TypeError, ValueError):
        return False
    return path.startswith(_PACKAGE_DIR + os.sep)


def check(code: CodeType, *, nested_in: CodeType | None = None) -> None:
    """Raise ProbeBlacklistedError if ``code`` may not be probed."""
    if _is_ours(code):
        raise ProbeBlacklistedError(
            f"{code.co_qualname} is part of pyprobes, which cannot probe itself"
        )
    for c in (code, nested_in):
        if c is not None and c in _noprobe_codes:
            raise ProbeBlacklistedError(
                f"{c.co_qualname} is marked @noprobe; remove the mark to probe it"
            )
