"""The cold state both dispatch cores share: sites, pending post handlers, pools, hooks, faults.

``pycore`` (the pure-Python reference) and ``ccore`` (the C core) each import this module;
neither imports the other. Here:

- ``Site`` and ``build_site``: a code object's dispatch table, built from its enabled probes
  (pycore dispatches on it; ccore hands its fields to ``_speedups.make_site``), and
  ``CoreTables``, a core's cold tables (tool id, a Site per code object, PY_UNWIND and the
  re-arming of DISABLEd places at commit).
- ``pending_insn`` and ``pending_line``: the post handlers waiting for a frame's next
  instruction or line (filled and drained by both cores' callbacks; the C core is handed them).
- The return-probe pool protocol (``RetStateLike``) and the set of live pools of both cores,
  under the gc hook (reclaim after a full collection) and the fork hooks (activations and
  pending posts of threads that do not exist in a child are ended there).
- ``fault``: a handler raised (counted, given to the probe's fault handler, else reported once).
- ``call_args``: a jprobe's call rebuilt from the bound parameters.

Threads: the callbacks read these tables on any thread without a lock (a Site is replaced
whole, never mutated; the pending dicts and the pool set change by single dict and set
operations, atomic under the GIL); everything else runs under the registry lock.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any, Protocol

from pyprobes.engine import quirks
from pyprobes.engine.context import CO_VARARGS, CO_VARKEYWORDS, KretprobeInstance, ProbeContext
from pyprobes.engine.probes import Kprobe, Kretprobe, Probe
from pyprobes.engine.resolve import ENTRY, LINE, OFFSET, Location

_M = sys.monitoring
_E = _M.events
_log = logging.getLogger("pyprobes")

#: CO_GENERATOR | CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR
GEN_FLAGS = 0x20 | 0x80 | 0x100 | 0x200
#: 3.12 and 3.13: when the last tool with LINE at an instruction answers DISABLE, that
#: execution of the instruction reports no INSTRUCTION event to any tool (3.14 reports it).
_LINE_DISABLE_EATS_INSTRUCTION = sys.version_info < (3, 14)
_REARMED = _E.LINE | _E.INSTRUCTION  # the events a callback of ours may answer DISABLE for


# --- sites --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Site:
    """Everything the callbacks need to know about one probed code object."""

    entry: tuple[Probe, ...] = ()
    offsets: dict[int, tuple[Kprobe, ...]] = field(default_factory=dict)
    lines: dict[int, tuple[Kprobe, ...]] = field(default_factory=dict)
    returns: tuple[Kretprobe, ...] = ()
    post_insn: bool = False  # a post handler waits for the next instruction: never DISABLE
    post_line: bool = False  # a post handler waits for the next line: never DISABLE

    @property
    def events(self) -> int:
        """The local events this site needs."""
        ev = 0
        if self.entry:
            ev |= _E.PY_START
        if self.offsets or self.post_insn:
            ev |= _E.INSTRUCTION
        if self.lines:
            ev |= _E.LINE
        if self.returns or self.post_insn or self.post_line:
            ev |= _E.PY_RETURN
        if self.post_insn or self.post_line:
            ev |= _E.PY_YIELD
        if quirks.LOCAL_UNWIND and self.watches_exit:
            ev |= _E.PY_UNWIND  # 3.15+: only this code reports its unwinds
        return ev

    @property
    def watches_exit(self) -> bool:
        """True if frames of this code must be seen leaving by an exception (PY_UNWIND)."""
        return bool(self.returns) or self.post_insn or self.post_line


def build_site(items: Sequence[tuple[Probe, Location]]) -> Site:
    """The dispatch table of one code object from its enabled probes, in registration order."""
    entry: list[Probe] = []
    offsets: dict[int, list[Kprobe]] = {}
    lines: dict[int, list[Kprobe]] = {}
    returns: list[Kretprobe] = []
    post_insn = post_line = False
    offset_lines: set[int] = set()
    for probe, loc in items:
        has_post = isinstance(probe, Kprobe) and getattr(probe, "post_handler", None) is not None
        if loc.where == ENTRY:
            entry.append(probe)
            post_insn |= has_post
            if isinstance(probe, Kretprobe):
                returns.append(probe)
        elif loc.where == OFFSET:
            offsets.setdefault(loc.offset, []).append(probe)  # type: ignore[arg-type]
            post_insn |= has_post
            line = _line_at(loc)
            if line is not None:
                offset_lines.add(line)
        elif loc.where == LINE:
            assert loc.line is not None
            lines.setdefault(loc.line, []).append(probe)  # type: ignore[arg-type]
            post_line |= has_post
    if lines and _LINE_DISABLE_EATS_INSTRUCTION:
        # Our LINE callback must not answer DISABLE on the line of an offset probe: that would
        # eat the probe's INSTRUCTION event at the line's first instruction, once per restart.
        # An empty group there keeps LINE on and runs nothing.
        for line in offset_lines:
            lines.setdefault(line, [])
    return Site(
        entry=tuple(entry),
        offsets={k: tuple(v) for k, v in offsets.items()},
        lines={k: tuple(v) for k, v in lines.items()},
        returns=tuple(returns),
        post_insn=post_insn,
        post_line=post_line,
    )


def _line_at(loc: Location) -> int | None:
    """The source line of the instruction at ``loc.offset`` (None: collected, or no line)."""
    code = loc.code
    if code is None:
        return None
    for start, end, line in code.co_lines():
        if start <= loc.offset < end:
            return line
    return None


def wants_restart(old: Site | None, site: Site) -> bool:
    """True if ``site`` wants a location that ``old`` may have answered with DISABLE."""
    return (
        old is None
        or not site.offsets.keys() <= old.offsets.keys()
        or not site.lines.keys() <= old.lines.keys()
        or (site.post_insn and not old.post_insn)
        or (site.post_line and not old.post_line)
    )


class CoreTables:
    """A core's cold state (each core keeps one; the C core beside its C tables): the tool id
    its callbacks are on, a ``Site`` per probed code object (by id: hashing a code object
    re-hashes its bytecode), the code objects that need PY_UNWIND, those a callback answered
    DISABLE for, and what the next ``commit()`` must do for all of them. Changed under the
    registry lock; ``disabled_codes`` is also added to by the callbacks, on any thread."""

    def __init__(self, callbacks: dict[int, Callable[..., object]]) -> None:
        self.callbacks = callbacks
        self.tool = -1
        self.sites: dict[int, Site] = {}
        self.exit_codes: set[int] = set()
        self.disabled_codes: set[int] = set()  # filled by the callbacks when they DISABLE
        self.rearm: dict[int, CodeType] = {}  # codes whose DISABLEd places the next commit undoes
        self.global_events = 0

    def install(self, tool_id: int) -> None:
        """Register the callbacks on a tool id the registry holds."""
        self.tool = tool_id
        self.global_events = 0
        for event, cb in self.callbacks.items():
            _M.register_callback(tool_id, event, cb)

    def uninstall(self) -> bool:
        """Remove callbacks and global events and empty the tables (False: not installed)."""
        if self.tool < 0:
            return False
        _M.set_events(self.tool, 0)
        for event in self.callbacks:
            _M.register_callback(self.tool, event, None)
        self.sites.clear()
        self.exit_codes.clear()
        self.disabled_codes.clear()
        self.rearm.clear()
        self.tool = -1
        self.global_events = 0
        return True

    def file(self, code: CodeType, site: Site | None) -> None:
        """Keep ``site`` as the table of ``code`` (None: drop it); a location answered with
        DISABLE that the new table wants makes the next commit re-arm that code."""
        cid = id(code)
        if site is None:
            self.sites.pop(cid, None)
            self.exit_codes.discard(cid)
            self.rearm.pop(cid, None)
            return
        if cid in self.disabled_codes and wants_restart(self.sites.get(cid), site):
            self.rearm[cid] = code
        self.sites[cid] = site
        if site.watches_exit:
            self.exit_codes.add(cid)
        else:
            self.exit_codes.discard(cid)

    def forget(self, cid: int) -> None:
        """Drop what is kept for a code object that was collected."""
        self.sites.pop(cid, None)
        self.exit_codes.discard(cid)
        self.disabled_codes.discard(cid)
        self.rearm.pop(cid, None)

    def commit(self) -> None:
        """Apply what a batch of ``file`` calls needs beyond each code (PY_UNWIND, re-arms)."""
        if self.tool < 0:
            return
        # Before 3.15 PY_UNWIND is global only: on while any code needs it (16-90 ns per
        # unwound frame anywhere); from 3.15 each such code has it locally (Site.events).
        want = _E.PY_UNWIND if self.exit_codes and not quirks.LOCAL_UNWIND else 0
        if want != self.global_events:
            _M.set_events(self.tool, want)
            self.global_events = want
        # Not restart_events(): that is global, and gives back to every other tool the places
        # it answered DISABLE for. Turning our LINE/INSTRUCTION off and on again on one code
        # re-arms our own DISABLEd places there only (seen on 3.12.1, 3.13.0, 3.14.10, 3.15.2);
        # entry and return events stay on throughout, so no activation is cut in two.
        for cid, code in list(self.rearm.items()):
            self.rearm.pop(cid, None)
            self.disabled_codes.discard(cid)
            site = self.sites.get(cid)
            if site is None:
                continue
            events = site.events
            _M.set_local_events(self.tool, code, events & ~_REARMED)
            _M.set_local_events(self.tool, code, events)


# --- pending post handlers ------------------------------------------------------------------

Pending = dict[int, tuple[FrameType, list[Kprobe], ProbeContext]]
#: id(frame) -> (frame, kprobes whose post handler waits, context): for the next instruction
pending_insn: Pending = {}
#: ... and for the next line
pending_line: Pending = {}


def drop_posts_of(code: CodeType) -> None:
    """Forget the post handlers waiting in frames of ``code`` (its site no longer wants them)."""
    for pending in (pending_insn, pending_line):
        for fid, (frame, _, _) in list(pending.items()):
            if frame.f_code is code:
                pending.pop(fid, None)


def clear_pending() -> None:
    """Forget every waiting post handler (the core is uninstalled)."""
    pending_insn.clear()
    pending_line.clear()


# --- faults ---------------------------------------------------------------------------------


def fault(probe: Probe, ctx: ProbeContext, exc: BaseException) -> None:
    """A handler raised: give it to the fault handler, else report once; never re-raise."""
    probe._counters.nfault += 1
    fh = getattr(probe, "fault_handler", None)  # (deleted from the probe: as None)
    if fh is not None:
        try:
            if fh(probe, ctx, exc):
                return
        except KeyboardInterrupt:
            raise
        except BaseException as exc2:
            exc = exc2
    if not getattr(probe, "_fault_reported", False):
        probe._fault_reported = True
        try:
            _log.warning(
                "pyprobes: a handler of %r raised %r; the program did not see it, further"
                " faults of this probe are only counted (nfault)",
                probe,
                exc,
                exc_info=exc,
            )
        except Exception:
            pass


def call_args(code: CodeType, args: dict[str, object]) -> tuple[list[Any], dict[str, Any]]:
    """Rebuild the call's positional and keyword arguments from the bound parameters."""
    names = code.co_varnames
    n_pos = code.co_argcount
    n_kw = code.co_kwonlyargcount
    pos = [args[n] for n in names[:n_pos]]
    kw = {n: args[n] for n in names[n_pos : n_pos + n_kw]}
    i = n_pos + n_kw
    if code.co_flags & CO_VARARGS:
        pos.extend(args[names[i]])  # type: ignore[arg-type]
        i += 1
    if code.co_flags & CO_VARKEYWORDS:
        kw.update(args[names[i]])  # type: ignore[call-overload]
    return pos, kw


# --- return-probe pools: the protocol, the gc hook, the fork hooks ----------------------------


class RetStateLike(Protocol):
    """What the cold code (gc hook, fork hooks, nactive) needs of a return-probe state: pycore's
    RetState and the C core's (``pyprobes._speedups.RetState``) both provide it."""

    def reclaim(self) -> int: ...
    def flush(self) -> None: ...
    def activations(self) -> list[tuple[int, KretprobeInstance]]: ...
    def end(self, fid: int, ri: KretprobeInstance) -> bool: ...
    @property
    def nactive(self) -> int: ...


_ret_states: set[RetStateLike] = set()  # the live pools of both cores
_fork_running: set[int] | None = None


def track_ret_state(state: RetStateLike) -> None:
    """Put a new pool under the gc and fork hooks."""
    _ret_states.add(state)
    _update_gc_hook()


def drop_ret_state(state: RetStateLike | None) -> None:
    """Forget a pool: its activations end without handlers (unregister, disable)."""
    if state is None:
        return
    _ret_states.discard(state)
    state.flush()
    _update_gc_hook()


def nactive(state: RetStateLike | None) -> int:
    """Instances in use, after reclaiming activations that can never end."""
    if state is None:
        return 0
    state.reclaim()
    return state.nactive


def _gc_hook(phase: str, info: dict[str, int]) -> None:
    # After a full collection, dropped generators are gone: release their frames promptly.
    if phase == "stop" and info.get("generation") == 2:
        for state in list(_ret_states):
            try:
                state.reclaim()
            except Exception:
                pass


def _update_gc_hook() -> None:
    if _ret_states:
        if _gc_hook not in gc.callbacks:
            gc.callbacks.append(_gc_hook)
    elif _gc_hook in gc.callbacks:
        gc.callbacks.remove(_gc_hook)


def _before_fork() -> None:
    # Remember which frames run on other threads: in the child those threads do not exist.
    global _fork_running
    _fork_running = None
    if not any(s.activations() for s in list(_ret_states)) and not (pending_insn or pending_line):
        return
    me = threading.get_ident()
    running: set[int] = set()
    for tid, top in sys._current_frames().items():
        if tid == me:
            continue
        f: FrameType | None = top
        while f is not None:
            running.add(id(f))
            f = f.f_back
    _fork_running = running


def _after_fork_child() -> None:
    global _fork_running
    running, _fork_running = _fork_running, None
    if running is None:
        return
    me = threading.get_ident()
    for state in list(_ret_states):
        for fid, ri in state.activations():
            frame = ri.frame
            # (ri.frame is None: the C core's plain-function activation, keyed without one)
            on_dead_thread = fid in running or (
                ri.thread_id != me and (frame is None or not frame.f_code.co_flags & GEN_FLAGS)
            )
            if on_dead_thread:
                state.end(fid, ri)
    for pending in (pending_insn, pending_line):
        for fid in list(pending):
            if fid in running:
                pending.pop(fid, None)


def _after_fork_parent() -> None:
    global _fork_running
    _fork_running = None


os.register_at_fork(
    before=_before_fork, after_in_child=_after_fork_child, after_in_parent=_after_fork_parent
)
