"""Which probed activation encloses which (``--otlp``: a span's parent), per thread and task.

Each return-probe activation gets a number at its entry and the number of the nearest
enclosing activation that is still running: the nearest frame up its ``f_back`` chain (the
probed frame itself first, for a second probe on the same function) that is a live probed
activation. The ``f_back`` chain is the thread's call stack, and for a coroutine or generator
the chain it runs in now (an awaited coroutine's caller is the coroutine awaiting it; a task's
first coroutine is called by the event loop), so a suspended generator encloses nothing and
an asyncio task's activations nest in that task only. An activation with no enclosing one is a
root: it takes the program's active OpenTelemetry span as its parent, read only when the
program (or pyprobes' exporter) has imported ``opentelemetry.trace``, never importing it.

Everything here runs on the probed threads, in the engine's handlers: a walk up the stack with
one dict lookup per frame, a counter, no lock (dict get/set/pop are atomic under the GIL).
A return recorded by a probe program (in the core's ring, with ``link_key=KEY``) takes its link
from ``ri.data`` and calls no ``leave``: its entry in the live table is stale once the instance
is recycled, and goes at the next walk that meets it or at the next sweep.
"""

from __future__ import annotations

import itertools
import sys
from types import FrameType
from typing import Any

from pyprobes.engine.context import KretprobeInstance, ProbeContext

#: One activation: (its number, the enclosing one's or 0, its root's, the program's trace id
#: and span id that the root took as its parent, or 0, 0). ``Event.activation`` carries it.
Link = tuple[int, int, int, int, int]

KEY = "pyprobes.activation"
#: The live table is swept of activations that ended without a return handler (generators
#: dropped unfinished, threads gone after fork) when it grows past this, then twice its size.
SWEEP_AT = 4096


def program_span() -> tuple[int, int]:
    """The program's active OpenTelemetry span as (trace id, span id), (0, 0) when none."""
    trace: Any = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return 0, 0
    try:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            return int(ctx.trace_id), int(ctx.span_id)
    except Exception:
        pass
    return 0, 0


class Activations:
    """The live probed activations of a session, by the id of their frame.

    Thread rules: ``enter`` and ``leave`` run on the probed threads; an entry is
    ``(instance, link)`` and counts only while ``instance.data`` still holds that link (an
    instance is recycled, with fresh data, when its activation ends), so a frame address
    reused after an activation ended unseen is never taken for it.
    """

    def __init__(self) -> None:
        self._next = itertools.count(1).__next__
        self._live: dict[int, tuple[KretprobeInstance, Link]] = {}
        self._sweep_at = SWEEP_AT

    def enter(self, ri: KretprobeInstance, frame: FrameType | None) -> Link:
        """Number a new activation of ``frame`` and link it to the one enclosing it."""
        live = self._live
        parent: Link | None = None
        f = frame
        while f is not None:
            entry = live.get(id(f))
            if entry is not None:
                if entry[0].data.get(KEY) is entry[1]:
                    parent = entry[1]
                    break
                if live.get(id(f)) is entry:
                    live.pop(id(f), None)
            f = f.f_back
        n = self._next()
        if parent is not None:
            link = (n, parent[0], parent[2], parent[3], 0)
        else:
            trace_id, span_id = program_span()
            link = (n, 0, n, trace_id, span_id)
        ri.data[KEY] = link
        if frame is not None:
            live[id(frame)] = (ri, link)
            if len(live) > self._sweep_at:
                self._sweep()
        return link

    def on_entry(self, ri: KretprobeInstance, ctx: ProbeContext) -> None:
        """A kretprobe's ``entry_handler``: number the activation starting now."""
        self.enter(ri, ctx.frame)

    def leave(self, ri: KretprobeInstance, frame: FrameType | None) -> Link | None:
        """The link of the activation ending now (None if it entered before tracking)."""
        link: Link | None = ri.data.get(KEY)
        if frame is not None:
            entry = self._live.get(id(frame))
            if entry is not None and entry[0] is ri:
                self._live.pop(id(frame), None)
        return link

    def _sweep(self) -> None:
        live = self._live
        for fid, entry in list(live.items()):
            if entry[0].data.get(KEY) is not entry[1] and live.get(fid) is entry:
                live.pop(fid, None)
        self._sweep_at = max(SWEEP_AT, 2 * len(live))

    def __len__(self) -> int:
        return len(self._live)
