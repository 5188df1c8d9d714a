"""The pure-Python hot path: sys.monitoring callbacks, per-code dispatch, return-probe pools.

This is the readable reference of the dispatch core (a C core may replace it, held equal by the
same tests). The registry builds everything cold (with the cold state both cores share, in
``engine.shared``); here each event is one dict lookup by ``id(code)`` to an immutable
``Site``, then the probes at that place, in registration order.

Threads: callbacks run on any thread, concurrently with registry changes. They never take a
lock: a ``Site`` is replaced whole, never mutated, and the only shared mutable state (pending
post handlers, return-probe pools) is changed with single dict/list operations, which are
atomic under the GIL. Counter increments (``p._counters.nhit += 1``, on a slots object)
involve no call and no backward jump, so under the GIL no other thread runs between their read
and their write.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import CodeType, FrameType
from typing import Any

from pyprobes.engine import program, quirks
from pyprobes.engine.context import CALLBACK_CODE_IDS, KretprobeInstance, ProbeContext
from pyprobes.engine.probes import Counters, Jprobe, Kprobe, Kretprobe, Probe
from pyprobes.engine.resolve import Location
from pyprobes.engine.ring import RecordRing
from pyprobes.engine.shared import (
    GEN_FLAGS,
    CoreTables,
    Site,
    build_site,
    call_args,
    clear_pending,
    drop_posts_of,
    drop_ret_state,
    nactive,
    track_ret_state,
)
from pyprobes.engine.shared import fault as _fault
from pyprobes.engine.shared import pending_insn as _pending_insn
from pyprobes.engine.shared import pending_line as _pending_line

__all__ = [
    "NAME",
    "RetState",
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

NAME = "python"

_M = sys.monitoring
_E = _M.events
_DISABLE = _M.DISABLE

_RECLAIM_INTERVAL_NS = 1_000_000


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
    if quirks.CLOSE_EMITS_NOTHING and frame is not None and frame.f_code.co_flags & GEN_FLAGS:
        # A closed generator still referenced keeps its frame on 3.13; clear() tells:
        # it refuses suspended and running frames and only releases a finished one's locals.
        try:
            frame.clear()
        except RuntimeError:
            return False
        return True
    return False


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


def _place_callback(is_line: bool) -> Callable[[CodeType, int], Any]:
    """The INSTRUCTION callback (an offset probe's place) or the LINE one: the same steps, on
    the site's offsets or lines, its post_insn or post_line, and the matching pending dict."""
    pending = _pending_line if is_line else _pending_insn

    def callback(code: CodeType, where: int) -> Any:
        site = _sites.get(id(code))
        if site is None:
            _disabled_codes.add(id(code))
            return _DISABLE
        post = site.post_line if is_line else site.post_insn
        if post and pending:
            entry = pending.pop(id(sys._getframe(1)), None)
            if entry is not None:
                _fire_posts(entry)
        probes = (site.lines if is_line else site.offsets).get(where)
        if probes is None:
            if post:
                return None
            _disabled_codes.add(id(code))
            return _DISABLE
        if _own_threads and _get_ident() in _own_threads:
            return None
        ctx = ProbeContext(code, -1, where) if is_line else ProbeContext(code, where)
        _run_kprobes(probes, ctx, pending)
        ctx.seal()
        return None

    callback.__name__ = callback.__qualname__ = "_on_line" if is_line else "_on_instruction"
    return callback


_on_instruction = _place_callback(False)
_on_line = _place_callback(True)


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
        clear_pending()


def publish(code: CodeType, items: Sequence[tuple[Probe, Location]]) -> None:
    """Arm exactly ``items`` (enabled probes, in registration order) on ``code``."""
    cid = id(code)
    if not items:
        if cid not in _sites:
            return
        _M.set_local_events(_tables.tool, code, 0)
        _tables.file(code, None)
        drop_posts_of(code)
        return
    site = build_site(items)
    _tables.file(code, site)
    if not site.watches_exit:
        drop_posts_of(code)
    _M.set_local_events(_tables.tool, code, site.events)


forget = _tables.forget
commit = _tables.commit


def new_ret_state(rp: Kretprobe, maxactive: int) -> RetState:
    """A fresh pool for a kretprobe being armed."""
    state = RetState(rp, maxactive)
    track_ret_state(state)
    return state


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
    link_key: str | None = None,
) -> RecordRing:
    """The ring programs of this core write event records into (engine.ring)."""
    return RecordRing(capacity, render, exception_text, wake, link_key)
