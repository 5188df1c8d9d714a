"""Our sys.monitoring tool id: taken when the first probe registers, freed with the last."""

from __future__ import annotations

import sys
import sysconfig
from collections.abc import Callable

from pyprobes.engine.errors import ToolIdInUseError, UnsupportedPythonError

TOOL_NAME = "pyprobes"
#: Ids 0-2 belong to debuggers, coverage.py and cProfile; 5 is the optimizer's, our last resort.
CANDIDATE_IDS = (3, 4, 5)
_KNOWN = {0: "DEBUGGER", 1: "COVERAGE", 2: "PROFILER", 5: "OPTIMIZER"}


def check_supported(config_var: Callable[[str], object] = sysconfig.get_config_var) -> None:
    """Raise UnsupportedPythonError on an interpreter without sys.monitoring, or free-threaded.

    Free-threaded builds (3.13t, 3.14t) are refused rather than half-supported: both dispatch
    cores rely on the GIL (single dict and list operations as atomic steps in the Python core,
    static tables and counters in the C core), and the C core would re-enable the GIL for the
    whole program on import, which changes the program that is being probed.
    """
    if not hasattr(sys, "monitoring"):
        raise UnsupportedPythonError(
            f"pyprobes needs sys.monitoring (CPython 3.12 or newer); this is"
            f" {sys.implementation.name} {sys.version.split()[0]}"
        )
    if config_var("Py_GIL_DISABLED"):
        raise UnsupportedPythonError(
            f"pyprobes does not support the free-threaded build of CPython (this is"
            f" {sys.version.split()[0]} with Py_GIL_DISABLED): its dispatch cores rely on the"
            f" GIL; run the program on the default (GIL) build of CPython"
        )


def holders() -> str:
    """Who holds each sys.monitoring tool id, for error messages."""
    parts = []
    for tid in range(6):
        name = sys.monitoring.get_tool(tid)
        label = f"{tid} ({_KNOWN[tid]})" if tid in _KNOWN else str(tid)
        parts.append(f"{label}: {name!r}" if name is not None else f"{label}: free")
    return ", ".join(parts)


def acquire() -> int:
    """Claim a free tool id among CANDIDATE_IDS, or raise ToolIdInUseError naming the holders."""
    check_supported()
    for tid in CANDIDATE_IDS:
        if sys.monitoring.get_tool(tid) is not None:
            continue
        try:
            sys.monitoring.use_tool_id(tid, TOOL_NAME)
        except ValueError:
            continue  # another tool took it between get_tool and use_tool_id
        return tid
    raise ToolIdInUseError(
        f"no sys.monitoring tool id is free for pyprobes (it needs one of"
        f" {', '.join(map(str, CANDIDATE_IDS))}); holders: {holders()}"
    )


def release(tid: int) -> None:
    """Free the id. The registry has cleared the local events and callbacks it set: on 3.12 and
    3.13 ``free_tool_id`` leaves them in place. (3.14+ clears them itself, gh-116750, so
    ``clear_tool_id`` adds nothing here; ``get_local_events`` still reports the old masks
    there, though the events no longer fire: seen on 3.14.10 and 3.15.2.)"""
    if sys.monitoring.get_tool(tid) == TOOL_NAME:
        sys.monitoring.set_events(tid, 0)
        sys.monitoring.free_tool_id(tid)


def find_ours() -> int | None:
    """The tool id pyprobes holds right now, if any."""
    if not hasattr(sys, "monitoring"):
        return None
    for tid in range(6):
        if sys.monitoring.get_tool(tid) == TOOL_NAME:
            return tid
    return None
