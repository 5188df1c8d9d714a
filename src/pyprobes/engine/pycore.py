"""The pure-Python hot path: sys.monitoring callbacks, per-code dispatch, return-probe pools.

This is the readable reference of the dispatch core (a C core may replace it, held equal by the
same tests). The registry builds everything cold; here each event is one dict lookup by
``id(code)`` to an immutable ``Site``, then the probes at that place, in registration order.

Threads: callbacks run on any thread, concurrently with registry changes. They never take a
lock: a ``Site`` is replaced whole, never mutated, and the only shared mutable state (pending
post handlers, return-probe pools) is changed with single dict/list operations, which are
atomic under the GIL. Counter increments (``p._counters.nhit += 1``, on a slots object)
involve no call and no backward jump, so under the GIL no other thread runs between their read
and their write.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any, Protocol

from pyprobes.engine import program, quirks
from pyprobes.engine.context import (
    CALLBACK_CODE_IDS,
    CO_VARARGS,
    CO_VARKEYWORDS,
    KretprobeInstance,
    ProbeContext,
)
from pyprobes.engine.probes import Counters, Jprobe, Kprobe, Kretprobe, Probe
from pyprobes.engine.resolve import ENTRY, LINE, OFFSET, Location
from pyprobes.engine.ring import RecordRing

NAME = "python"

_M = sys.monitoring
_E = _M.events
_DISABLE = _M.DISABLE
_log = logging.getLogger("pyprobes")

#: CO_GENERATOR | CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR
_GEN_FLAGS = 0x20 | 0x80 | 0x100 | 0x200
#: 3.12 and 3.13: when the last tool with LINE at an instruction answers DISABLE, that
#: execution of the instruction reports no INSTRUCTION event to any tool (3.14 reports it).
_LINE_DISABLE_EATS_INSTRUCTION = sys.version_info < (3, 14)
_RECLAIM_INTERVAL_NS = 1_000_000
_REARMED = _E.LINE | _E.INSTRUCTION  # the events a callback of ours may answer DISABLE for


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


class RetStateLike(Protocol):
    """What the cold code (gc hook, fork hooks, nactive) needs of a return-probe state: this
    module's RetState and the C core's (``pyprobes._speedups.RetState``) both provide it."""

    def reclaim(self) -> int: ...
    def flush(self) -> None: ...
    def activations(self) -> list[tuple[int, KretprobeInstance]]: ...
    def end(self, fid: int, ri: KretprobeInstance) -> bool: ...
    @property
    def nactive(self) -> int: ...


class RetState:
    """One registration of a kretprobe: its instance pool and its live activations.

    Replaced whole on unregister or disable, so that a callback still holding the old one
    cannot leak an activation into the new registration.
    """

    __slots__ = ("active", "free", "last_reclaim", "maxactive", "nalloc", "rp")

    def __init__(self, rp: Kretprobe, maxactive: int) -> None:
        self.rp = rp
        self.maxactive = maxactive
        # Instances are made when first needed (grow), so a large maxactive costs nothing
        # until calls overlap that much.
        self.free: list[KretprobeInstance] = []
        self.nalloc = 0
        self.active: dict[int, KretprobeInstance] = {}
        self.last_reclaim = 0

    def grow(self) -> KretprobeInstance | None:
        """One more instance for the pool, or None when ``maxactive`` are made already."""
        if self.nalloc >= self.maxactive:
            return None
        self.nalloc += 1
        return KretprobeInstance(self.rp)

    def recycle(self, ri: KretprobeInstance) -> None:
        """Return an instance to the pool, dropping what it referenced."""
        ri.frame = None
        ri._data = None
        self.free.append(ri)

    def activations(self) -> list[tuple[int, KretprobeInstance]]:
        """The live activations: (id of the frame, instance)."""
        return list(self.active.items())

    def end(self, fid: int, ri: KretprobeInstance) -> bool:
        """End the activation at ``fid`` without handler, if ``ri`` is still the one there."""
        if self.active.pop(fid, None) is ri:
            self.recycle(ri)
            return True
        return False

    def reclaim(self) -> int:
        """Flush activations that can never end (their frame is referenced by us alone)."""
        freed = 0
        for fid, ri in self.activations():
            if ri.frame is None or not _abandoned(ri):
                continue
            if self.end(fid, ri):
                freed += 1
        return freed

    def flush(self) -> None:
        """End every activation without running handlers."""
        for fid in list(self.active):
            ri = self.active.pop(fid, None)
            if ri is not None:
                self.recycle(ri)

    @property
    def nactive(self) -> int:
        return self.nalloc - len(self.free)


class _Holder:
    __slots__ = ("frame",)

    def __init__(self, frame: object) -> None:
        self.frame = frame


def _frame_refs(ri: KretprobeInstance | _Holder) -> int:
    return sys.getrefcount(ri.frame)


# What _frame_refs counts for a frame that only the instance references, measured rather than
# assumed: how many references a call and a stack slot take differs between versions (3.14
# borrows them where 3.12 and 3.13 take them). A live frame has one more: its interpreter frame's.
_OURS_ALONE = _frame_refs(_Holder(object()))


def _abandoned(ri: KretprobeInstance) -> bool:
    if _frame_refs(ri) <= _OURS_ALONE:
        return True
    frame = ri.frame
    if quirks.CLOSE_EMITS_NOTHING and frame is not None and frame.f_code.co_flags & _GEN_FLAGS:
        # A closed generator still referenced keeps its frame on 3.13; clear() tells:
        # it refuses suspended and running frames and only releases a finished one's locals.
        try:
            frame.clear()
        except RuntimeError:
            return False
        return True
    return False


# --- state --------------------------------------------------------------------------------


class CoreTables:
    """A core's cold state, the same for both cores (ccore keeps one too, beside its C tables):
    the tool id its callbacks are on, a ``Site`` per probed code object (by id: hashing a code
    object re-hashes its bytecode), the code objects that need PY_UNWIND, those a callback
    answered DISABLE for, and what the next ``commit()`` must do for all of them."""

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


_pending_insn: dict[int, tuple[FrameType, list[Kprobe], ProbeContext]] = {}
_pending_line: dict[int, tuple[FrameType, list[Kprobe], ProbeContext]] = {}
_ret_states: set[RetStateLike] = set()  # shared with the C core (ccore): the hooks below
_fork_running: set[int] | None = None


# --- handler calls ------------------------------------------------------------------------


def _fault(probe: Probe, ctx: ProbeContext, exc: BaseException) -> None:
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


# A handler attribute is read inside the guard: one deleted from the probe is a fault.


def _kprobe_pre(probe: Kprobe, ctx: ProbeContext) -> None:
    probe._counters.nhit += 1
    try:
        h = probe.pre_handler
        if h is not None:
            h(probe, ctx)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        _fault(probe, ctx, exc)


def _has_post(probe: Kprobe, ctx: ProbeContext) -> bool:
    try:
        return probe.post_handler is not None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        _fault(probe, ctx, exc)
        return False


def _jprobe(probe: Jprobe, ctx: ProbeContext) -> None:
    probe._counters.nhit += 1
    try:
        pos, kw = call_args(ctx.code, ctx.args)
        probe.entry(*pos, **kw)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        _fault(probe, ctx, exc)


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


def _kret_entry(rp: Kretprobe, ctx: ProbeContext) -> None:
    state: RetState | None = rp._rstate
    if state is None:
        return
    ri: KretprobeInstance | None
    try:
        ri = state.free.pop()
    except IndexError:
        ri = state.grow()
    if ri is None:
        now = time.perf_counter_ns()
        if now - state.last_reclaim < _RECLAIM_INTERVAL_NS:
            rp._counters.nmissed += 1
            return
        if not state.reclaim():
            state.last_reclaim = now  # throttle only scans that found nothing to free
        try:
            ri = state.free.pop()
        except IndexError:
            rp._counters.nmissed += 1
            return
    frame = ctx.frame
    ri.frame = frame
    ri.thread_id = threading.get_ident()
    ri.entry_time_ns = time.perf_counter_ns()
    try:
        eh = rp.entry_handler
        veto = eh is not None and bool(eh(ri, ctx))  # a bool() that raises is a fault too
    except KeyboardInterrupt:
        state.recycle(ri)
        raise
    except BaseException as exc:
        veto = True  # an entry that failed leaves no activation to pair
        try:
            _fault(rp, ctx, exc)
        except KeyboardInterrupt:  # (from the fault handler)
            state.recycle(ri)
            raise
    if veto:
        state.recycle(ri)
        return
    rp._counters.nhit += 1
    state.active[id(frame)] = ri


def _kret_exit(
    site: Site, code: CodeType, offset: int, frame: FrameType, retval: object, exc: Any
) -> None:
    fid = id(frame)
    ctx: ProbeContext | None = None
    for rp in site.returns:
        state: RetState | None = rp._rstate
        if state is None:
            continue
        ri = state.active.pop(fid, None)
        if ri is None:
            continue
        try:
            try:
                h = rp.handler
                if h is not None:
                    if ctx is None:
                        ctx = _exit_ctx(code, offset, frame, retval, exc)
                    h(ri, ctx)
            except KeyboardInterrupt:
                raise
            except BaseException as e:
                if ctx is None:
                    ctx = _exit_ctx(code, offset, frame, retval, exc)
                _fault(rp, ctx, e)
        finally:  # (KeyboardInterrupt from a handler or a fault handler included)
            state.recycle(ri)


def _exit_ctx(
    code: CodeType, offset: int, frame: FrameType, retval: object, exc: Any
) -> ProbeContext:
    ctx = ProbeContext(code, offset, frame=frame)
    ctx.retval = retval
    ctx.exception = exc
    return ctx


def _run_kprobes(
    probes: tuple[Kprobe, ...],
    ctx: ProbeContext,
    pending: dict[int, tuple[FrameType, list[Kprobe], ProbeContext]],
) -> None:
    posts: list[Kprobe] | None = None
    for p in probes:
        _kprobe_pre(p, ctx)
        if _has_post(p, ctx):
            if posts is None:
                posts = []
            posts.append(p)
    if posts is not None:
        _defer_posts(posts, ctx, pending)


def _defer_posts(
    posts: list[Kprobe],
    ctx: ProbeContext,
    pending: dict[int, tuple[FrameType, list[Kprobe], ProbeContext]],
) -> None:
    frame = ctx.frame
    if frame is not None:
        pending[id(frame)] = (frame, posts, ctx)


def _fire_posts(entry: tuple[FrameType, list[Kprobe], ProbeContext]) -> None:
    _, posts, ctx = entry
    for p in posts:
        try:
            h = p.post_handler
            if h is not None:
                h(p, ctx, 0)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            _fault(p, ctx, exc)


# --- callbacks ----------------------------------------------------------------------------


# Idents of pyprobes' own threads (the event writer, the agent, timers): no probe fires and
# nothing is counted there, they are not the program's hits. Replaced whole, never mutated.
_own_threads: frozenset[int] = frozenset()
_get_ident = threading.get_ident


def set_own_threads(idents: Iterable[int]) -> None:
    """The threads on which no probe fires (pyprobes' own)."""
    global _own_threads
    _own_threads = frozenset(idents)


def _on_start(code: CodeType, offset: int) -> Any:
    site = _sites.get(id(code))
    if site is None or (_own_threads and _get_ident() in _own_threads):
        return None
    ctx = ProbeContext(code, 0)
    posts: list[Kprobe] | None = None
    for probe in site.entry:
        kind = probe.kind
        if kind == "k":
            _kprobe_pre(probe, ctx)  # type: ignore[arg-type]
            if _has_post(probe, ctx):  # type: ignore[arg-type]
                if posts is None:
                    posts = []
                posts.append(probe)  # type: ignore[arg-type]
        elif kind == "r":
            _kret_entry(probe, ctx)  # type: ignore[arg-type]
        else:
            _jprobe(probe, ctx)  # type: ignore[arg-type]
    if posts is not None:
        _defer_posts(posts, ctx, _pending_insn)
    ctx.seal()
    return None


def _on_instruction(code: CodeType, offset: int) -> Any:
    site = _sites.get(id(code))
    if site is None:
        _disabled_codes.add(id(code))
        return _DISABLE
    if site.post_insn and _pending_insn:
        entry = _pending_insn.pop(id(sys._getframe(1)), None)
        if entry is not None:
            _fire_posts(entry)
    probes = site.offsets.get(offset)
    if probes is None:
        if site.post_insn:
            return None
        _disabled_codes.add(id(code))
        return _DISABLE
    if _own_threads and _get_ident() in _own_threads:
        return None
    ctx = ProbeContext(code, offset)
    _run_kprobes(probes, ctx, _pending_insn)
    ctx.seal()
    return None


def _on_line(code: CodeType, line: int) -> Any:
    site = _sites.get(id(code))
    if site is None:
        _disabled_codes.add(id(code))
        return _DISABLE
    if site.post_line and _pending_line:
        entry = _pending_line.pop(id(sys._getframe(1)), None)
        if entry is not None:
            _fire_posts(entry)
    probes = site.lines.get(line)
    if probes is None:
        if site.post_line:
            return None
        _disabled_codes.add(id(code))
        return _DISABLE
    if _own_threads and _get_ident() in _own_threads:
        return None
    ctx = ProbeContext(code, -1, line)
    _run_kprobes(probes, ctx, _pending_line)
    ctx.seal()
    return None


def _on_return(code: CodeType, offset: int, retval: object) -> Any:
    site = _sites.get(id(code))
    if site is None:
        return None
    frame = sys._getframe(1)
    if site.post_insn or site.post_line:
        _end_posts(id(frame), fire=True)
    if site.returns:
        _kret_exit(site, code, offset, frame, retval, None)
    return None


def _on_yield(code: CodeType, offset: int, value: object) -> Any:
    site = _sites.get(id(code))
    if site is not None and (site.post_insn or site.post_line):
        _end_posts(id(sys._getframe(1)), fire=True)
    return None


def _on_unwind(code: CodeType, offset: int, exc: BaseException) -> None:
    # Global event: every frame unwound anywhere comes here, so stay at one set lookup.
    if id(code) not in _exit_codes:
        return
    site = _sites.get(id(code))
    if site is None:
        return
    frame = sys._getframe(1)
    if site.post_insn or site.post_line:
        _end_posts(id(frame), fire=False)
    if site.returns:
        _kret_exit(site, code, offset, frame, None, exc)


def _end_posts(fid: int, fire: bool) -> None:
    for pending in (_pending_insn, _pending_line):
        entry = pending.pop(fid, None)
        if entry is not None and fire:
            _fire_posts(entry)


_CALLBACKS: dict[int, Callable[..., object]] = {
    _E.PY_START: _on_start,
    _E.INSTRUCTION: _on_instruction,
    _E.LINE: _on_line,
    _E.PY_RETURN: _on_return,
    _E.PY_YIELD: _on_yield,
    _E.PY_UNWIND: _on_unwind,
}
CALLBACK_CODE_IDS.update(id(f.__code__) for f in _CALLBACKS.values())

_tables = CoreTables(_CALLBACKS)
# The callbacks read these as module globals (the cheapest lookup); never rebound.
_sites = _tables.sites
_exit_codes = _tables.exit_codes
_disabled_codes = _tables.disabled_codes


# --- the interface the registry uses -----------------------------------------------------


new_counters = Counters
install = _tables.install


def uninstall() -> None:
    """Remove callbacks and global events; every site must have been unpublished before."""
    if _tables.uninstall():
        _pending_insn.clear()
        _pending_line.clear()


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


def publish(code: CodeType, items: Sequence[tuple[Probe, Location]]) -> None:
    """Arm exactly ``items`` (enabled probes, in registration order) on ``code``."""
    cid = id(code)
    if not items:
        if cid not in _sites:
            return
        _M.set_local_events(_tables.tool, code, 0)
        _tables.file(code, None)
        _drop_posts_of(code)
        return
    site = build_site(items)
    _tables.file(code, site)
    if not site.watches_exit:
        _drop_posts_of(code)
    _M.set_local_events(_tables.tool, code, site.events)


def wants_restart(old: Site | None, site: Site) -> bool:
    """True if ``site`` wants a location that ``old`` may have answered with DISABLE."""
    return (
        old is None
        or not site.offsets.keys() <= old.offsets.keys()
        or not site.lines.keys() <= old.lines.keys()
        or (site.post_insn and not old.post_insn)
        or (site.post_line and not old.post_line)
    )


forget = _tables.forget


def _drop_posts_of(code: CodeType) -> None:
    for pending in (_pending_insn, _pending_line):
        for fid, (frame, _, _) in list(pending.items()):
            if frame.f_code is code:
                pending.pop(fid, None)


commit = _tables.commit


def new_ret_state(rp: Kretprobe, maxactive: int) -> RetState:
    """A fresh pool for a kretprobe being armed."""
    state = RetState(rp, maxactive)
    track_ret_state(state)
    return state


def track_ret_state(state: RetStateLike) -> None:
    """Put a new pool under the gc and fork hooks (both cores' pools live in _ret_states)."""
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
    if not any(s.activations() for s in list(_ret_states)) and not (_pending_insn or _pending_line):
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
                ri.thread_id != me and (frame is None or not frame.f_code.co_flags & _GEN_FLAGS)
            )
            if on_dead_thread:
                state.end(fid, ri)
    for pending in (_pending_insn, _pending_line):
        for fid in list(pending):
            if fid in running:
                pending.pop(fid, None)


def _after_fork_parent() -> None:
    global _fork_running
    _fork_running = None


os.register_at_fork(
    before=_before_fork, after_in_child=_after_fork_child, after_in_parent=_after_fork_parent
)


def program_handler(
    prog: program.Program, key_of: program.KeyOf | None = None, ring: object = None, probe: int = 0
) -> object:
    """A handler that runs ``prog`` at each hit: the reference interpreter, called as any."""
    if ring is not None and not isinstance(ring, RecordRing):
        raise TypeError("a program's ring is this core's record_ring()")
    return program.ProgramHandler(prog, key_of, ring, probe)


def record_ring(
    capacity: int,
    render: Callable[[object], object],
    exception_text: Callable[[BaseException], object],
    wake: Callable[[], object] | None = None,
) -> RecordRing:
    """The ring programs of this core write event records into (engine.ring)."""
    return RecordRing(capacity, render, exception_text, wake)
