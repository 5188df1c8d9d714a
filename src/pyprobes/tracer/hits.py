"""Turning a probe hit into a detached event: fetch args, the filter, the record.

Everything here runs inside the probed program's threads, from engine handlers: it reads the
frame without running the program's code (see ``pyprobes.lang.capture``), never raises (the
engine's fault path would count it, but a capture fault is rendered as ``(fault)`` first),
and hands the finished ``Event`` to ``emit``, which never blocks.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

from pyprobes.engine.context import KretprobeInstance, ProbeContext, read_local
from pyprobes.engine.threads import thread_name
from pyprobes.lang import FAULT, ProbeSpec, exception_text, fetch, fetch_and_render, render
from pyprobes.lang.filter import filter_value
from pyprobes.output import Event
from pyprobes.tracer.activations import Activations

Emit = Callable[[Event], None]
STACK_DEPTH = 16
#: Code whose activations suspend and resume: a kretprobe pairs the first start with the final
#: return, so the activation overlaps whatever else its thread runs meanwhile.
SUSPENDING_FLAGS = (
    inspect.CO_GENERATOR
    | inspect.CO_COROUTINE
    | inspect.CO_ASYNC_GENERATOR
    | inspect.CO_ITERABLE_COROUTINE
)

_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def _hit_code_files() -> set[str]:
    """The files whose code runs on the program's threads for a hit that has Python handlers:
    this module's handlers (fetching, filtering, emitting), and the Python core's dispatch
    (which may have looked a probe up and not yet called its handler)."""
    files = {__file__}
    pycore = sys.modules.get("pyprobes.engine.pycore")
    if pycore is not None and pycore.__file__:
        files.add(pycore.__file__)
    return files


def threads_in_handlers() -> set[int]:
    """The idents of the other threads now inside a hit's Python code (see _hit_code_files).

    Read on their stacks (``sys._current_frames``), under the GIL: a thread that entered a
    handler has its frame there, so nothing on the hot path counts or signals anything."""
    files = _hit_code_files()
    me = threading.get_ident()
    busy = set()
    for ident, top in sys._current_frames().items():
        frame: FrameType | None = top
        while frame is not None and ident != me:
            if frame.f_code.co_filename in files:
                busy.add(ident)
                break
            frame = frame.f_back
    return busy


def wait_for_handlers(timeout: float) -> bool:
    """After probes were removed: wait until every thread that is inside a hit's handler
    now has left it (an event it emits is then queued), at most ``timeout`` seconds; False
    if one was still there. No handler can start afterwards on a removed probe, so the
    threads seen now are the only ones waited for; none (the usual case) means no wait."""
    waiting = threads_in_handlers()
    if not waiting:
        return True
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: a bounded wait between two looks at the stacks
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        pause.wait(min(left, sys.getswitchinterval()))
        waiting &= threads_in_handlers()
    return True


def _where(frame: FrameType | None) -> str:
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _site(frame: FrameType | None) -> str:
    """``module:qualname:line`` of a frame, as a probe spec names a line (no code runs)."""
    if frame is None:
        return "?"
    name = dict.get(frame.f_globals, "__name__")
    module = name if type(name) is str else "?"
    return f"{module}:{frame.f_code.co_qualname}:{frame.f_lineno}"


def is_suspending(code: CodeType) -> bool:
    """Whether ``code`` is a generator, coroutine or async generator's."""
    return bool(code.co_flags & SUSPENDING_FLAGS)


def _stack(frame: FrameType | None) -> list[str]:
    out: list[str] = []
    while frame is not None and len(out) < STACK_DEPTH:
        out.append(f"{_where(frame)} in {frame.f_code.co_qualname}")
        frame = frame.f_back
    return out


class HitRecorder:
    """Builds and emits the events of one placement of one spec."""

    def __init__(
        self,
        spec: ProbeSpec,
        probe_text: str,
        emit: Emit,
        code: CodeType | None = None,
        activations: Activations | None = None,
    ) -> None:
        self.spec = spec
        # --otlp: return events say which activation they are and which one encloses them.
        self.activations = activations if spec.is_return else None
        self.probe_text = probe_text
        self.emit = emit
        # Known at placement for code placed by address; a probe the engine resolves by name
        # learns it at its first return (and again if a reload brings new code).
        self._code = code
        self._is_async = code is not None and is_suspending(code)
        self.fetchargs = spec.fetchargs
        self.filter = spec.filter
        # Hits the filter turned away. (`+= 1` on it makes no call and no backward jump: under
        # the GIL no other thread runs between its read and its write, as engine counters.)
        self.filtered = 0
        self._filter_specials = (
            sorted(n for n in spec.filter.names if n.startswith("$"))
            if spec.filter is not None
            else []
        )

    def _resolver(
        self,
        ctx: ProbeContext,
        frame: FrameType | None,
        duration: int | None,
    ) -> Callable[[str], object]:
        def resolve(name: str) -> object:
            if name[0] != "$":
                if frame is None:
                    raise KeyError(name)
                return read_local(frame, name)  # 3.12: f_locals would refresh locals()
            if name == "$args":
                return ctx.args
            if name == "$retval":
                return ctx.retval
            if name == "$exception":
                return ctx.exception  # rendered by the capture rules; :repr runs its __repr__
            if name == "$duration":
                return duration
            if name == "$thread":
                return thread_name()
            if name == "$caller":
                return _where(frame.f_back if frame is not None else None)
            if name == "$stack":
                return _stack(frame)
            raise KeyError(name)

        return resolve

    def _args(self, resolve: Callable[[str], object]) -> dict[str, object] | None:
        f = self.filter
        if f is None:
            return {fa.name: fetch_and_render(fa, resolve) for fa in self.fetchargs}
        args: dict[str, object] = {}
        env: dict[str, Any] = {}
        for fa in self.fetchargs:
            try:
                raw = fetch(fa, resolve)
            except Exception:
                args[fa.name] = env[fa.name] = FAULT
                continue
            rendered = args[fa.name] = render(raw, fa.type)
            env[fa.name] = rendered if fa.type is not None else filter_value(raw, rendered)
        for name in self._filter_specials:
            if name not in env:
                try:
                    raw = resolve(name)
                except Exception:
                    env[name] = FAULT
                    continue
                env[name] = filter_value(raw, render(raw))
        if not f(env):
            self.filtered += 1
            return None
        return args

    def on_entry(self, p: object, ctx: ProbeContext) -> None:
        """pre_handler of a ``p`` probe."""
        name = thread_name()
        frame = ctx.frame
        args = self._args(self._resolver(ctx, frame, None))
        if args is None:
            return
        spec = self.spec
        self.emit(
            Event(
                event=spec.event,
                group=spec.group,
                kind="p",
                probe=self.probe_text,
                location=f"{ctx.code.co_filename}:{ctx.lineno}",
                time_ns=ctx.time_ns,
                pid=_pid,
                thread_id=threading.get_native_id(),
                thread_name=name,
                args=args,
            )
        )

    def on_return(self, ri: KretprobeInstance, ctx: ProbeContext) -> None:
        """handler of an ``r`` probe."""
        name = thread_name()
        now = ctx.time_ns
        duration = now - ri.entry_time_ns
        frame = ctx.frame
        acts = self.activations
        link = acts.leave(ri, frame) if acts is not None else None
        args = self._args(self._resolver(ctx, frame, duration))
        if args is None:
            return
        spec = self.spec
        exc = ctx.exception
        caller = frame.f_back if frame is not None else None
        code = ctx.code
        if code is not self._code:
            self._code = code
            self._is_async = is_suspending(code)
        self.emit(
            Event(
                event=spec.event,
                group=spec.group,
                kind="r",
                probe=self.probe_text,
                location=_where(caller),
                time_ns=now,
                pid=_pid,
                thread_id=threading.get_native_id(),
                thread_name=name,
                args=args,
                retval=None if exc is not None else render(ctx.retval),
                exception=exception_text(exc),
                duration_ns=duration,
                site=_site(caller),
                is_async=self._is_async,
                activation=link,
            )
        )
