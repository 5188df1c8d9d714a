"""The C dispatch core: pycore's interface, with the hot path in ``pyprobes._speedups``.

Like coverage.py's CTracer beside its PyTracer, this core does exactly what ``pycore`` does
(the readable reference, held equal by the same test suite, run once per core, and by a
differential test), faster. What runs per event is C: the callbacks, the lookup from code
object and offset or line to the probes there, the context object (its costly fields read
lazily; the arguments read and, for jprobes, rebuilt into a call), the handler calls with
fault containment, the counters and the return-probe pools.
What is cold stays in Python, and is the code both cores share (``engine.shared``; this module
does not import pycore): building a code object's ``Site`` (``build_site``), the cold tables
(``CoreTables``: ``set_local_events``, PY_UNWIND and restarts), the fault report (``fault``),
the pending post handlers (the two shared dicts, which the C callbacks fill and drain), and
the gc and fork hooks (over the shared set of both cores' pools).

Counters: a probe's ``nhit``, ``nmissed`` and ``nfault`` are kept in C (one increment per hit
instead of an int allocation), in the ``_speedups.Counters`` that ``new_counters`` gives the
registry for each probe it registers here; ``Probe``'s properties read them as plain ints.
Nothing is installed on any class: importing this module leaves the probe classes as they are.
Handlers: read at every hit, as pycore reads them, from a cache that is refreshed whenever a
probe's ``__dict__`` changes (a dict watcher, and ``Probe.__setattr__`` telling the counters
object of a handler store, which 3.13 does not report to dict watchers).

Threads: as in pycore, callbacks take no lock. A C ``Site`` is built whole and swapped into the
C table in one step under the GIL, and the C code gives the GIL up only where Python code runs
(handlers, helpers, destructors), holding strong references across those points.

Where the C core differs from pycore, on purpose (none of it changes what a handler sees):

- A plain function's return-probe activation is keyed by its interpreter frame instead of a
  frame object, so no frame object is made per call (``ri.frame`` stays None); generators and
  coroutines are keyed by frame object, as in pycore. An activation whose end went unseen is
  reclaimed when its interpreter frame is reused or is on no thread's stack (pycore: when its
  frame object is referenced by the pool alone).
- ``publish`` turns new local events on before it installs the table that needs them (pycore
  installs first: a thread entering in between starts an activation whose return it does not
  see, which pycore's reclaim later frees).
- A kept context's ``frame`` is resolved at the end of the hit (the return context: as pycore's,
  which always holds its frame) or is None (the others: as pycore's sealed context).
- An internal error of the core (out of memory) is reported as unraisable, never raised into
  the program.
- A kretprobe's pool is the one the site was built with (pycore reads ``rp._rstate`` at each
  hit); a dropped pool is marked dead, which the callbacks read as pycore reads None.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from types import CodeType

from pyprobes import _speedups
from pyprobes.engine import program, quirks, shared
from pyprobes.engine.context import KretprobeInstance, ProbeContext, _line_of
from pyprobes.engine.probes import Kretprobe, Probe
from pyprobes.engine.resolve import Location
from pyprobes.engine.shared import Site, build_site, nactive, track_ret_state

__all__ = [
    "NAME",
    "commit",
    "drop_ret_state",
    "forget",
    "install",
    "nactive",
    "new_counters",
    "new_ret_state",
    "program_handler",
    "publish",
    "record_ring",
    "set_own_threads",
    "uninstall",
]

NAME = "c"

_M = sys.monitoring
_E = _M.events

# --- state: the shared cold tables (their Sites decide events and restarts); the hot ones C ---

_CALLBACKS: dict[int, Callable[..., object]] = {
    _E.PY_START: _speedups.on_start,
    _E.INSTRUCTION: _speedups.on_instruction,
    _E.LINE: _speedups.on_line,
    _E.PY_RETURN: _speedups.on_return,
    _E.PY_YIELD: _speedups.on_yield,
    _E.PY_UNWIND: _speedups.on_unwind,
}
_tables = shared.CoreTables(_CALLBACKS)

_speedups.setup(
    ProbeContext=ProbeContext,
    KretprobeInstance=KretprobeInstance,
    DISABLE=_M.DISABLE,
    fault=shared.fault,
    line_of=_line_of,
    pending_insn=shared.pending_insn,
    pending_line=shared.pending_line,
    disabled_codes=_tables.disabled_codes,
    close_emits_nothing=quirks.CLOSE_EMITS_NOTHING,
)


def _tsc_is_the_clock() -> bool:
    """Whether the kernel keeps CLOCK_MONOTONIC on an invariant TSC (see ENTRY CLOCK in C)."""
    if os.environ.get("PYPROBES_ENTRY_CLOCK", "").strip().lower() == "monotonic":
        return False
    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            if f.read().strip() != "tsc":
                return False
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return {"constant_tsc", "nonstop_tsc"} <= set(line.split())
    except OSError:
        pass
    return False


#: How kretprobe entries are stamped: "tsc" (read as CLOCK_MONOTONIC ns) or "monotonic".
ENTRY_CLOCK = _speedups.set_entry_clock("tsc" if _tsc_is_the_clock() else "monotonic")

# --- the interface the registry uses -----------------------------------------------------


def new_counters() -> _speedups.Counters:
    """The counters of a probe being registered: C ints, incremented by the callbacks."""
    return _speedups.Counters()


def install(tool_id: int) -> None:
    """Register the callbacks on a tool id the registry holds (quirks measured on it)."""
    _speedups.set_close_emits_nothing(quirks.CLOSE_EMITS_NOTHING)
    _tables.install(tool_id)


def uninstall() -> None:
    """Remove callbacks and global events; every site must have been unpublished before."""
    if _tables.uninstall():
        _speedups.clear_sites()
        shared.clear_pending()


def _c_site(site: Site) -> _speedups.Site:
    return _speedups.make_site(
        entry=site.entry,
        offsets=site.offsets,
        lines=site.lines,
        returns=site.returns,
        post_insn=site.post_insn,
        post_line=site.post_line,
        watches_exit=site.watches_exit,
    )


def publish(code: CodeType, items: Sequence[tuple[Probe, Location]]) -> None:
    """Arm exactly ``items`` (enabled probes, in registration order) on ``code``."""
    cid = id(code)
    old = _tables.sites.get(cid)
    if not items:
        if old is None:
            return
        _M.set_local_events(_tables.tool, code, 0)
        _tables.file(code, None)
        _speedups.set_site(code, None)
        shared.drop_posts_of(code)
        return
    site = build_site(items)
    events = site.events
    before = old.events if old is not None else 0
    if events & ~before:
        # New events first, then the table that uses them: a thread entering the function in
        # between must not start an activation whose PY_RETURN is not reported yet (pycore
        # has that window; its reclaim of unreferenced frames hides it).
        _M.set_local_events(_tables.tool, code, before | events)
    # The C table before the cold one: a LINE/INSTRUCTION callback that ran on the old table
    # (or none) and answered DISABLE has recorded it by now, so file() sees it and the next
    # commit restarts events; after set_site no callback disables what the new table wants.
    _speedups.set_site(code, _c_site(site))
    _tables.file(code, site)
    if not site.watches_exit:
        shared.drop_posts_of(code)
    if not events & ~before or before & ~events:
        _M.set_local_events(_tables.tool, code, events)


def forget(cid: int) -> None:
    """Drop what is kept for a code object that was collected."""
    _tables.forget(cid)
    _speedups.forget(cid)


commit = _tables.commit


def new_ret_state(rp: Kretprobe, maxactive: int) -> _speedups.RetState:
    """A fresh pool for a kretprobe being armed (under the shared gc and fork hooks)."""
    state = _speedups.RetState(rp, maxactive)
    track_ret_state(state)
    return state


def drop_ret_state(state: _speedups.RetState | None) -> None:
    """Forget a pool: its activations end without handlers (unregister, disable)."""
    if state is None:
        return
    state.kill()  # the callbacks read a dead state as pycore reads ``rp._rstate is None``
    shared.drop_ret_state(state)


def set_own_threads(idents: Iterable[int]) -> None:
    """The threads on which no probe fires (pyprobes' own), checked in C at each hit."""
    _speedups.set_own_threads(tuple(idents))


def program_handler(
    prog: program.Program, key_of: program.KeyOf | None = None, ring: object = None, probe: int = 0
) -> object:
    """A handler that runs ``prog`` in C at each hit (the dispatch knows its type)."""
    return _speedups.Program(
        program.lower(prog),
        prog,
        key_of or program.default_key_of,
        program.results_from_raw,
        ring,  # type: ignore[arg-type]
        probe,
    )


def record_ring(
    capacity: int,
    render: Callable[[object], object],
    exception_text: Callable[[BaseException], object],
    wake: Callable[[], object] | None = None,
    link_key: str | None = None,
) -> object:
    """The C ring programs write event records into; it also renders them as JSON Lines."""
    return _speedups.Ring(capacity, render, exception_text, wake, link_key)
