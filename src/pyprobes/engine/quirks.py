"""What this interpreter's sys.monitoring does where versions differ, measured, not assumed.

Two behaviours decide how return probes work, and both changed within a minor version's life:

- ``LOCAL_UNWIND``: whether ``PY_UNWIND`` can be set per code object (CPython 3.15,
  gh-142186). Before, it is global only, and every frame unwound anywhere reaches our callback
  while a return probe is armed; with it, only the probed code objects report their unwinds.
- ``CLOSE_EMITS_NOTHING``: whether closing or collecting a suspended generator emits no
  ``PY_UNWIND`` (gh-140373: 3.13.0 emits nothing; 3.12, and 3.14.10 and 3.15.2 as seen here,
  emit it; which patch releases carry the fix is not documented). When nothing comes, the
  engine reclaims such activations itself.

``measure(tool_id)`` finds both out once per process with our own tool id, before our
callbacks are installed (the registry calls it when it takes the id). Until then the values
are the version's best guess; no return probe can be armed before ``measure`` ran.
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from types import CodeType

_M = sys.monitoring
_E = _M.events

#: PY_UNWIND can be a local event (3.15+).
LOCAL_UNWIND = sys.version_info >= (3, 15)
#: A suspended generator closed or collected emits no PY_UNWIND (gh-140373).
CLOSE_EMITS_NOTHING = (3, 13) <= sys.version_info[:3] < (3, 14, 1)
_measured = False


def _probe_gen() -> Generator[int, None, None]:
    yield 1


def _can_set_local_unwind(tool_id: int, code: CodeType) -> bool:
    try:
        _M.set_local_events(tool_id, code, _E.PY_UNWIND)
    except ValueError:
        return False
    _M.set_local_events(tool_id, code, 0)
    return True


def _closing_reports_unwind(tool_id: int, code: CodeType, local: bool) -> bool:
    """Whether both ``close()`` and collection of a suspended generator emit PY_UNWIND."""
    seen: list[str] = []

    def on_unwind(c: CodeType, offset: int, exc: BaseException) -> None:
        # (while global, every unwind in the process comes here: one identity test)
        if c is code:
            seen.append(type(exc).__name__)

    _M.register_callback(tool_id, _E.PY_UNWIND, on_unwind)
    try:
        if local:
            _M.set_local_events(tool_id, code, _E.PY_UNWIND)
        else:
            _M.set_events(tool_id, _E.PY_UNWIND)
        try:
            g = _probe_gen()
            next(g)
            g.close()
            g = _probe_gen()
            next(g)
            del g  # the last reference: finalised now
        finally:
            if local:
                _M.set_local_events(tool_id, code, 0)
            else:
                _M.set_events(tool_id, 0)
    finally:
        _M.register_callback(tool_id, _E.PY_UNWIND, None)
    return len(seen) == 2


def measure(tool_id: int) -> None:
    """Find out LOCAL_UNWIND and CLOSE_EMITS_NOTHING with ``tool_id`` (ours, no callbacks yet)."""
    global LOCAL_UNWIND, CLOSE_EMITS_NOTHING, _measured
    if _measured:
        return
    code = _probe_gen.__code__
    LOCAL_UNWIND = _can_set_local_unwind(tool_id, code)
    CLOSE_EMITS_NOTHING = not _closing_reports_unwind(tool_id, code, LOCAL_UNWIND)
    _measured = True
