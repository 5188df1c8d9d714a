"""Our sys.monitoring tool id: taken when the first probe registers, freed with the last."""

from __future__ import annotations

import sys

from pyprobes.engine.errors import ToolIdInUseError, UnsupportedPythonError

TOOL_NAME = "pyprobes"
#: Ids 0-2 belong to debuggers, coverage.py and cProfile; 5 is the optimizer's, our last resort.
CANDIDATE_IDS = (3, 4, 5)
_KNOWN = {0: "DEBUGGER", 1: "COVERAGE", 2: "PROFILER", 5: "OPTIMIZER"}


def check_supported() -> None:
    """Raise UnsupportedPythonError on an interpreter without sys.monitoring."""
    if not hasattr(sys, "monitoring"):
        raise UnsupportedPythonError(
            f"pyprobes needs sys.monitoring (CPython 3.12 or newer); this is"
            f" {sys.implementation.name} {sys.version.split()[0]}"
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
    """Free the id; callbacks and events must already be cleared (3.12/3.13 keep them)."""
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
