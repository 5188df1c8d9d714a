"""pyprobes against the tools people use today: per-hit cost, cost to unprobed code, unwinding.

Issue 7, parts 1, 2 and 4, in one process per Python version (``--help`` for the options):

1. Per-hit cost on ``f(a, b): return a + b`` for the same work done by every contender:
   (a) count the calls, (b) capture the arguments at entry, (c) pair entry and return and
   record the duration and the return value. ns per call added to the baseline, and the
   per-round ratio to the floor (raw ``sys.monitoring`` callbacks doing the same work).
2. The bundled workload (``benchmarks/workload``) with each contender doing (c) on a function
   it never calls, on one it calls rarely, and on every function of one module: slowdown of the
   whole workload in percent (pyprobes also with a counting kprobe).
4. ns added per unwound frame of unprobed code while each contender does (c) elsewhere.

Contenders: the floor, pyprobes (Kprobe / Jprobe / Kretprobe through the public API), a
``functools.wraps`` decorator patched in, ``wrapt.FunctionWrapper``, ``hunter`` with a filter
on the function, a minimal ``sys.setprofile`` tracer and ``ddtrace.internal.wrapping.wrap``.
A peer that is not installed or does not import is reported "not available", with the reason.
Each contender's work is checked after every run before its timing is kept. When the default
core is the C core, the pyprobes rows are measured again in a child process with
``PYPROBES_CORE=python`` (with its own floor and baseline), so both cores appear side by side.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FunctionType, ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib
from benchlib import Stat, cell, fmt, paired

benchlib.ensure_paths()
import pyprobes
from pyprobes import Jprobe, Kprobe, Kretprobe

MON = sys.monitoring
EV = MON.events
RAW_TOOL_NAME = "pyprobes-bench-floor"
UNROLL = 10  # calls per iteration of a part-1 loop
WARM_ITERS = 200
TARGET_MS = 20.0
MIN_ITERS = 200
RING = 1024  # records kept by the timed runs (see Box)
SLOW_FACTOR = 2.0  # part 2: a contender this much slower than no tool ...
SLOW_ROUNDS = 1  # ... is timed once, in the first round (its slowdown is not a fine figure)
#: 3.12: ``f_locals`` is a dict snapshot (copy it); 3.13+: a write-through proxy whose
#: ``copy()`` and ``dict()`` are slower than reading each parameter by name.
LOCALS_IS_DICT = sys.version_info < (3, 13)

TASKS = ("count", "args", "ret")
TASK_TITLES = {
    "count": "(a) count calls",
    "args": "(b) capture arguments",
    "ret": "(c) duration + retval",
}
WL_COLUMNS = ("never", "rare", "module")

# Tools, in table order. "pyprobes-*" rows are measured with each pyprobes core.
TOOL_LABELS = {
    "floor": "floor: raw sys.monitoring callbacks",
    "pyprobes-k": "pyprobes Kprobe",
    "pyprobes-k0": "pyprobes Kprobe without a handler (nhit counts)",
    "pyprobes-j": "pyprobes Jprobe",
    "pyprobes-r": "pyprobes Kretprobe",
    "decorator": "functools.wraps decorator",
    "wrapt": "wrapt FunctionWrapper",
    "hunter": "hunter.trace(function=...)",
    "setprofile": "sys.setprofile tracer",
    "ddtrace": "ddtrace wrapping.wrap",
}
PEER_TOOLS = ("decorator", "wrapt", "hunter", "setprofile", "ddtrace")
PYPROBES_TOOLS = ("pyprobes-k", "pyprobes-k0", "pyprobes-j", "pyprobes-r")
# Which tools do which task of part 1 (pyprobes "as they fit").
TOOLS_FOR_TASK = {
    "count": ("floor", "pyprobes-k", "pyprobes-k0", "pyprobes-j", "pyprobes-r", *PEER_TOOLS),
    "args": ("floor", "pyprobes-k", "pyprobes-j", *PEER_TOOLS),
    "ret": ("floor", "pyprobes-r", *PEER_TOOLS),
}
EXPECTED_ARGS = {"a": 1, "b": 2}


# --- peers ------------------------------------------------------------------------------------


@dataclass
class Peer:
    """A third-party peer: its module, version, or why it is not available."""

    dist: str
    module: Any = None
    version: str | None = None
    reason: str | None = None

    @property
    def available(self) -> bool:
        return self.module is not None


def load_peers() -> dict[str, Peer]:
    """Import wrapt, hunter and ddtrace's function wrapping, recording why one is missing."""
    # ddtrace: no telemetry, remote configuration or agent connection from a benchmark.
    for var, val in (
        ("DD_INSTRUMENTATION_TELEMETRY_ENABLED", "false"),
        ("DD_REMOTE_CONFIGURATION_ENABLED", "false"),
        ("DD_TRACE_ENABLED", "false"),
    ):
        os.environ.setdefault(var, val)
    failures = benchlib.install_failures()
    imports = {
        "wrapt": "wrapt",
        "hunter": "hunter",
        "ddtrace": "ddtrace.internal.wrapping",
    }
    peers: dict[str, Peer] = {}
    for dist, modname in imports.items():
        peer = Peer(dist, version=benchlib.dist_version(dist))
        if dist in failures:
            peer.reason = f"does not install on this Python: {failures[dist]}"
        elif peer.version is None:
            peer.reason = "not installed here (benchmarks/peers_env.sh installs it)"
        else:
            try:
                peer.module = __import__(modname, fromlist=["_"])
            except Exception as exc:
                peer.reason = f"installed but `import {modname}` fails: {exc!r}"
        if peer.module is not None and dist == "ddtrace":
            try:  # "where it installs": it must also wrap a function on this Python
                probe_fn = _make_probe_fn()
                peer.module.wrap(probe_fn, lambda f, a, k: f(*a, **k) + 1)
                ok = probe_fn(1, 2) == 4
                peer.module.unwrap(probe_fn, peer.module.get_wrapped)
            except Exception as exc:
                ok = False
                peer.reason = f"imports but cannot wrap a function here: {exc!r}"
            if not ok:
                peer.module = None
                peer.reason = peer.reason or "imports but its wrapper did not run"
        peers[dist] = peer
    return peers


def _make_probe_fn() -> FunctionType:
    ns: dict[str, Any] = {}
    exec("def probe_fn(a, b):\n    return a + b\n", ns)
    return ns["probe_fn"]  # type: ignore[no-any-return]


# --- what the tools attach to ---------------------------------------------------------------


@dataclass
class Site:
    """A function to instrument and the places that hold it (for tools that patch)."""

    func: FunctionType
    refs: list[tuple[Any, str]]  # (namespace dict or class, attribute name)
    prop: bool = False  # the holders hold a property whose fget is func

    @property
    def code(self) -> CodeType:
        return self.func.__code__


class Box:
    """Where a contender's work goes: a counter, a sink of records, a stack for pairing.

    The sink is a list (every record kept, so that the first run of each contender can be
    checked call by call) or, for the timed runs, a ring of the last RING records: keeping
    millions of records would time the page faults of a growing heap (about 2.5 us each on
    the benchmark VM, 100+ ns per call) instead of the tools.
    """

    __slots__ = ("exact", "n", "sink", "stack")

    def __init__(self) -> None:
        self.n = 0
        self.exact = True
        self.sink: list[Any] | deque[Any] = []
        self.stack: list[int] = []

    def reset(self, exact: bool = False) -> None:
        """Empty it; a fresh sink, read by the tool when it is attached next."""
        self.n = 0
        self.exact = exact
        self.sink = [] if exact else deque(maxlen=RING)
        self.stack.clear()


Detach = Callable[[], None]


def _patch(sites: Sequence[Site], make: Callable[[FunctionType], Any]) -> Detach:
    """Replace every reference to each site's function by ``make(func)``; return the undo."""
    saved: list[tuple[Any, str, Any]] = []
    for site in sites:
        new = make(site.func)
        for holder, name in site.refs:
            old = holder[name] if isinstance(holder, dict) else holder.__dict__[name]
            val = property(new, old.fset, old.fdel, old.__doc__) if site.prop else new
            if isinstance(holder, dict):
                holder[name] = val
            else:
                setattr(holder, name, val)
            saved.append((holder, name, old))

    def undo() -> None:
        for holder, name, old in reversed(saved):
            if isinstance(holder, dict):
                holder[name] = old
            else:
                setattr(holder, name, old)
        saved.clear()

    return undo


def _arg_names(func: FunctionType) -> tuple[str, ...]:
    code = func.__code__
    return code.co_varnames[: code.co_argcount]


def _single_names(sites: Sequence[Site]) -> tuple[str, ...]:
    """The parameter names of the one function that task (b) instruments."""
    if len(sites) != 1:
        raise ValueError("argument capture is measured on one function")
    return _arg_names(sites[0].func)


# --- the tools: each attaches the same work, as tightly as it allows --------------------------


class RawMonitor:
    """A bare sys.monitoring tool: local callbacks on some code objects, plus global ones."""

    def __init__(
        self,
        codes: Sequence[CodeType],
        local: dict[int, Callable[..., object]],
        glob: dict[int, Callable[..., object]] | None = None,
    ) -> None:
        self.codes = list(codes)
        self.local = local
        self.glob = glob or {}
        self.tid: int | None = None

    def attach(self) -> Detach:
        held = pyprobes.tool_id()
        for tid in (3, 4, 5):  # one pyprobes is not holding
            if tid != held and MON.get_tool(tid) is None:
                break
        else:
            raise RuntimeError("no sys.monitoring tool id free among 3, 4, 5 for the floor")
        MON.use_tool_id(tid, RAW_TOOL_NAME)
        self.tid = tid
        mask = 0
        for event, cb in self.local.items():
            MON.register_callback(tid, event, cb)
            mask |= event
        gmask = 0
        for event, cb in self.glob.items():
            MON.register_callback(tid, event, cb)
            gmask |= event
        for code in self.codes:
            MON.set_local_events(tid, code, mask)
        if gmask:
            MON.set_events(tid, gmask)
        return self.detach

    def detach(self) -> None:
        tid, self.tid = self.tid, None
        if tid is None:
            return
        # 3.12/3.13 keep local events and callbacks across free_tool_id: clear them first.
        for code in self.codes:
            MON.set_local_events(tid, code, 0)
        MON.set_events(tid, 0)
        for event in (*self.local, *self.glob):
            MON.register_callback(tid, event, None)
        MON.free_tool_id(tid)


def attach_floor(task: str, sites: Sequence[Site], box: Box) -> Detach:
    codes = [s.code for s in sites]
    ids = frozenset(id(c) for c in codes)
    now = time.perf_counter_ns
    getframe = sys._getframe
    append = box.sink.append
    push = box.stack.append
    pop = box.stack.pop
    if task == "count":

        def start(code: CodeType, off: int) -> None:
            box.n += 1

        return RawMonitor(codes, {EV.PY_START: start}).attach()
    if task == "args":  # at PY_START the frame's locals are exactly the arguments
        if LOCALS_IS_DICT:

            def start_args(code: CodeType, off: int) -> None:
                append(getframe(1).f_locals.copy())

        else:
            names = _single_names(sites)

            def start_args(code: CodeType, off: int) -> None:
                loc = getframe(1).f_locals
                append({n: loc[n] for n in names})

        return RawMonitor(codes, {EV.PY_START: start_args}).attach()

    # (c): a stack pairs entries and exits (no threads or generators among the targets);
    # exits by an exception come from the global PY_UNWIND, filtered by one set lookup.
    def start_ret(code: CodeType, off: int) -> None:
        push(now())

    def ret(code: CodeType, off: int, rv: object) -> None:
        append((now() - pop(), rv))

    def unwind(code: CodeType, off: int, exc: BaseException) -> None:
        if id(code) in ids:
            append((now() - pop(), None))

    return RawMonitor(
        codes, {EV.PY_START: start_ret, EV.PY_RETURN: ret}, {EV.PY_UNWIND: unwind}
    ).attach()


def _register(probes: list[Any]) -> Detach:
    kind = type(probes[0])
    reg, unreg = {
        Kprobe: (pyprobes.register_kprobes, pyprobes.unregister_kprobes),
        Jprobe: (pyprobes.register_jprobes, pyprobes.unregister_jprobes),
        Kretprobe: (pyprobes.register_kretprobes, pyprobes.unregister_kretprobes),
    }[kind]
    reg(probes)

    def undo() -> None:
        unreg(probes)
        bad = [(p, p.nfault, p.nmissed) for p in probes if p.nfault or p.nmissed]
        if bad:
            raise RuntimeError(f"pyprobes faults or misses: {bad}")

    return undo


def attach_pyprobes_k(task: str, sites: Sequence[Site], box: Box) -> Detach:
    append = box.sink.append
    if task == "count":

        def pre(p: Kprobe, ctx: pyprobes.ProbeContext) -> None:
            box.n += 1

    elif task == "args":

        def pre(p: Kprobe, ctx: pyprobes.ProbeContext) -> None:
            append(ctx.args)  # already a copy

    else:
        raise ValueError(task)
    return _register([Kprobe(addr=s.func, pre_handler=pre) for s in sites])


def attach_pyprobes_k0(task: str, sites: Sequence[Site], box: Box) -> Detach:
    """(a) the engine's own way: a Kprobe without a handler; its ``nhit`` is the count."""
    if task != "count":
        raise ValueError(task)
    probes = [Kprobe(addr=s.func) for s in sites]
    undo = _register(probes)

    def detach() -> None:
        undo()
        box.n = sum(p.nhit for p in probes)

    return detach


def attach_pyprobes_j(task: str, sites: Sequence[Site], box: Box) -> Detach:
    # A jprobe's handler mirrors the probed function's signature: here f(a, b).
    append = box.sink.append
    if task == "count":

        def mirror(a: object, b: object) -> None:
            box.n += 1

    elif task == "args":

        def mirror(a: object, b: object) -> None:
            append({"a": a, "b": b})

    else:
        raise ValueError(task)
    return _register([Jprobe(entry=mirror, addr=s.func) for s in sites])


def attach_pyprobes_r(task: str, sites: Sequence[Site], box: Box) -> Detach:
    now = time.perf_counter_ns
    append = box.sink.append
    if task == "count":  # the kernel's comparison: a return probe doing what a kprobe does

        def handler(ri: pyprobes.KretprobeInstance, ctx: pyprobes.ProbeContext) -> None:
            box.n += 1

    elif task == "ret":

        def handler(ri: pyprobes.KretprobeInstance, ctx: pyprobes.ProbeContext) -> None:
            append((now() - ri.entry_time_ns, ctx.retval))

    else:
        raise ValueError(task)

    return _register([Kretprobe(addr=s.func, handler=handler) for s in sites])


def attach_decorator(task: str, sites: Sequence[Site], box: Box) -> Detach:
    now = time.perf_counter_ns
    append = box.sink.append

    def make(fn: FunctionType) -> Any:
        if task == "count":

            @functools.wraps(fn)
            def w(*args: Any, **kwargs: Any) -> Any:
                box.n += 1
                return fn(*args, **kwargs)

        elif task == "args":
            names = _arg_names(fn)

            @functools.wraps(fn)
            def w(*args: Any, **kwargs: Any) -> Any:
                d = {n: v for n, v in zip(names, args)}  # noqa: B905
                if kwargs:
                    d.update(kwargs)
                append(d)
                return fn(*args, **kwargs)

        else:

            @functools.wraps(fn)
            def w(*args: Any, **kwargs: Any) -> Any:
                rv = None
                t0 = now()
                try:
                    rv = fn(*args, **kwargs)
                    return rv
                finally:
                    append((now() - t0, rv))

        return w

    return _patch(sites, make)


def attach_wrapt(task: str, sites: Sequence[Site], box: Box, wrapt: Any) -> Detach:
    now = time.perf_counter_ns
    append = box.sink.append

    def make(fn: FunctionType) -> Any:
        if task == "count":

            def w(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
                box.n += 1
                return wrapped(*args, **kwargs)

        elif task == "args":
            names = _arg_names(fn)

            def w(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
                d = {n: v for n, v in zip(names, args)}  # noqa: B905
                if kwargs:
                    d.update(kwargs)
                append(d)
                return wrapped(*args, **kwargs)

        else:

            def w(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
                rv = None
                t0 = now()
                try:
                    rv = wrapped(*args, **kwargs)
                    return rv
                finally:
                    append((now() - t0, rv))

        return wrapt.FunctionWrapper(fn, w)

    return _patch(sites, make)


def attach_ddtrace(task: str, sites: Sequence[Site], box: Box, ddw: Any) -> Detach:
    # ddtrace rewrites the function's __code__ in place (a trampoline): no reference to patch.
    now = time.perf_counter_ns
    append = box.sink.append
    done: list[tuple[FunctionType, Any]] = []
    for site in sites:
        fn = site.func
        if task == "count":

            def w(f: Any, args: Any, kwargs: Any) -> Any:
                box.n += 1
                return f(*args, **kwargs)

        elif task == "args":
            names = _arg_names(fn)

            def w(f: Any, args: Any, kwargs: Any, names: tuple[str, ...] = names) -> Any:
                d = {n: v for n, v in zip(names, args)}  # noqa: B905
                if kwargs:
                    d.update(kwargs)
                append(d)
                return f(*args, **kwargs)

        else:

            def w(f: Any, args: Any, kwargs: Any) -> Any:
                rv = None
                t0 = now()
                try:
                    rv = f(*args, **kwargs)
                    return rv
                finally:
                    append((now() - t0, rv))

        ddw.wrap(fn, w)
        done.append((fn, w))

    def undo() -> None:
        while done:
            fn, w = done.pop()
            ddw.unwrap(fn, w)

    return undo


def attach_hunter(task: str, sites: Sequence[Site], box: Box, hunter: Any) -> Detach:
    now = time.perf_counter_ns
    append = box.sink.append
    push = box.stack.append
    pop = box.stack.pop
    modules = {s.func.__globals__.get("__name__") for s in sites}
    names = tuple(sorted({s.code.co_name for s in sites}))
    if len(modules) != 1:
        raise ValueError("hunter sites must share one module")
    where: dict[str, Any] = {"module": modules.pop()}
    if len(names) == 1:
        where["function"] = names[0]
    else:
        where["function_in"] = names
    if task == "count":

        def act(ev: Any) -> None:
            box.n += 1

        query = hunter.Q(kind="call", **where)
    elif task == "args":
        if LOCALS_IS_DICT:

            def act(ev: Any) -> None:
                append(ev.locals.copy())

        else:
            names = _single_names(sites)

            def act(ev: Any) -> None:
                loc = ev.locals
                append({n: loc[n] for n in names})

        query = hunter.Q(kind="call", **where)
    else:

        def act(ev: Any) -> None:
            if ev.kind == "call":
                push(now())
            else:  # "return", also when the frame exits by an exception (arg None)
                append((now() - pop(), ev.arg))

        query = hunter.Q(kind_in=("call", "return"), **where)
    tracer = hunter.trace(query, action=act, threading_support=False)
    return tracer.stop  # type: ignore[no-any-return]


def attach_setprofile(task: str, sites: Sequence[Site], box: Box) -> Detach:
    now = time.perf_counter_ns
    append = box.sink.append
    push = box.stack.append
    pop = box.stack.pop
    ids = frozenset(id(s.code) for s in sites)
    if task == "count":

        def prof(frame: Any, event: str, arg: Any) -> None:
            if event == "call" and id(frame.f_code) in ids:
                box.n += 1

    elif task == "args":
        if LOCALS_IS_DICT:

            def prof(frame: Any, event: str, arg: Any) -> None:
                if event == "call" and id(frame.f_code) in ids:
                    append(frame.f_locals.copy())

        else:
            names = _single_names(sites)

            def prof(frame: Any, event: str, arg: Any) -> None:
                if event == "call" and id(frame.f_code) in ids:
                    loc = frame.f_locals
                    append({n: loc[n] for n in names})

    else:

        def prof(frame: Any, event: str, arg: Any) -> None:
            if id(frame.f_code) in ids:
                if event == "call":
                    push(now())
                elif event == "return":  # also on exit by an exception (arg None)
                    append((now() - pop(), arg))

    if sys.getprofile() is not None:
        raise RuntimeError("a profile function is already set")
    sys.setprofile(prof)

    def undo() -> None:
        sys.setprofile(None)

    return undo


AttachFn = Callable[[str, Sequence[Site], Box], Detach]


def tool_attachers(peers: dict[str, Peer]) -> dict[str, AttachFn | str]:
    """Every tool's attach function, or the reason it is not available."""
    out: dict[str, AttachFn | str] = {
        "floor": attach_floor,
        "pyprobes-k": attach_pyprobes_k,
        "pyprobes-k0": attach_pyprobes_k0,
        "pyprobes-j": attach_pyprobes_j,
        "pyprobes-r": attach_pyprobes_r,
        "decorator": attach_decorator,
        "setprofile": attach_setprofile,
    }
    for tool, dist, fn in (
        ("wrapt", "wrapt", attach_wrapt),
        ("hunter", "hunter", attach_hunter),
        ("ddtrace", "ddtrace", attach_ddtrace),
    ):
        peer = peers[dist]
        if peer.available:
            out[tool] = functools.partial(fn, **{_PEER_ARG[tool]: peer.module})
        else:
            out[tool] = peer.reason or "not available"
    return out


_PEER_ARG = {"wrapt": "wrapt", "hunter": "hunter", "ddtrace": "ddw"}


# --- contenders ---------------------------------------------------------------------------------


@dataclass
class Contender:
    """One thing to time, with what to attach around it and how to check its work."""

    key: str  # "p1:count:floor", "p2:rare:hunter", "p4:unwind:wrapt", "p1:base", ...
    part: str
    col: str  # part 1: the task; part 2: never/rare/module; part 4: "unwind"
    tool: str  # a TOOL_LABELS key, or "none"
    run: Callable[[int], Any]  # part 1/4: loop(iterations); part 2: main(scale)
    per_iter: int = 1
    attach: Callable[[], Detach] | None = None
    check: Callable[[int, Any], str | None] = lambda calls, result: None
    box: Box = field(default_factory=Box)
    iters: int = 0
    slow: bool = False  # part 2: more than SLOW_FACTOR x the no-tool time (fewer rounds)
    samples: list[float] = field(default_factory=list)


_CALL_SRC = """
def {fn}(a, b):
    return a + b

def loop(n):
    f = {fn}  # looked up at each run: tools that patch the name are seen
    for _ in range(n):
{body}
"""

_UNWIND_SRC = """
class Boom(Exception):
    pass

def {p}_other(a, b):  # the function the tools instrument; never called
    return a + b

def {p}_1():
    raise Boom

{middle}

def loop(n):
    top = {p}_{depth}
    for _ in range(n):
        try:
            top()
        except Boom:
            pass
"""


def make_call_target(name: str) -> tuple[Site, Callable[[int], None]]:
    body = "\n".join(["        f(1, 2)"] * UNROLL)
    ns: dict[str, Any] = {"__name__": f"bench_{name}"}
    exec(compile(_CALL_SRC.format(fn=name, body=body), f"<bench:{name}>", "exec"), ns)
    return Site(ns[name], [(ns, name)]), ns["loop"]


def make_unwind_target(prefix: str, depth: int) -> tuple[Site, Callable[[int], None]]:
    middle = "\n\n".join(
        f"def {prefix}_{k}():\n    {prefix}_{k - 1}()" for k in range(2, depth + 1)
    )
    ns: dict[str, Any] = {"__name__": f"bench_{prefix}"}
    src = _UNWIND_SRC.format(p=prefix, middle=middle, depth=depth)
    exec(compile(src, f"<bench:{prefix}>", "exec"), ns)
    other = f"{prefix}_other"
    return Site(ns[other], [(ns, other)]), ns["loop"]


def check_part1(task: str, box: Box, calls: int) -> str | None:
    """Did the contender do task ``task`` on each of ``calls`` calls?"""
    if task == "count":
        return None if box.n == calls else f"counted {box.n} of {calls} calls"
    sink = list(box.sink)
    want = calls if box.exact else min(calls, RING)
    if len(sink) != want:
        return f"recorded {len(sink)} records for {calls} calls (expected {want})"
    if task == "args":
        if sink.count(EXPECTED_ARGS) != want:
            bad = next(d for d in sink if d != EXPECTED_ARGS)
            return f"captured {bad!r}, expected {EXPECTED_ARGS!r}"
        return None
    if any(rv != 3 for _, rv in sink):
        return f"recorded return values {sorted({rv for _, rv in sink}, key=repr)[:5]}, not 3"
    durations = [d for d, _ in sink]
    if min(durations) < 0 or max(durations) <= 0 or max(durations) > 10**9:
        return f"implausible durations {min(durations)} .. {max(durations)} ns"
    if box.stack:
        return f"{len(box.stack)} entries left unpaired"
    return None


def part1_contenders(tools: dict[str, AttachFn | str], only: set[str] | None) -> list[Contender]:
    cs: list[Contender] = []
    _, loop = make_call_target("f_base")
    cs.append(Contender("p1:base", "p1", "base", "none", loop, UNROLL))
    for task in TASKS:
        for tool in TOOLS_FOR_TASK[task]:
            if only is not None and tool not in only:
                continue
            attach = tools[tool]
            if isinstance(attach, str):
                continue
            site, loop = make_call_target(f"f_{task}_{tool.replace('-', '_')}")
            box = Box()
            c = Contender(
                f"p1:{task}:{tool}",
                "p1",
                task,
                tool,
                loop,
                UNROLL,
                attach=functools.partial(attach, task, [site], box),
                box=box,
            )
            c.check = functools.partial(_check1, task, box)
            cs.append(c)
    return cs


def _check1(task: str, box: Box, calls: int, result: Any) -> str | None:
    return check_part1(task, box, calls)


def part4_contenders(
    tools: dict[str, AttachFn | str], only: set[str] | None, depth: int
) -> list[Contender]:
    cs: list[Contender] = []
    _, loop = make_unwind_target("u_base", depth)
    cs.append(Contender("p4:base", "p4", "unwind", "none", loop, 1))
    for tool in ("floor", "pyprobes-r", *PEER_TOOLS):
        if only is not None and tool not in only:
            continue
        attach = tools[tool]
        if isinstance(attach, str):
            continue
        site, loop = make_unwind_target(f"u_{tool.replace('-', '_')}", depth)
        box = Box()
        c = Contender(
            f"p4:unwind:{tool}",
            "p4",
            "unwind",
            tool,
            loop,
            1,
            attach=functools.partial(attach, "ret", [site], box),
            box=box,
        )
        c.check = functools.partial(_check_nothing, box)
        cs.append(c)
    return cs


def _check_nothing(box: Box, calls: int, result: Any) -> str | None:
    if box.n or box.sink or box.stack:
        return f"the instrumented function is never called, yet {box.n} / {len(box.sink)} hits"
    return None


# --- part 2: the workload -----------------------------------------------------------------------


def workload_modules() -> list[ModuleType]:
    return [m for n, m in sorted(sys.modules.items()) if n.startswith("benchmarks.workload")]


def _refs_to(obj: object) -> list[tuple[Any, str]]:
    return [(vars(m), n) for m in workload_modules() for n, v in vars(m).items() if v is obj]


def function_site(module: str, qualname: str) -> Site:
    mod = sys.modules[module]
    func = mod
    for part in qualname.split("."):
        func = getattr(func, part)
    assert isinstance(func, FunctionType)
    return Site(func, _refs_to(func))


def module_sites(module: str) -> list[Site]:
    """Every function and method of a module (what ``r:NAME module:*`` probes), with the places
    that hold each one in the workload's modules and classes."""
    mod = sys.modules[module]
    sites: list[Site] = []
    for obj in list(vars(mod).values()):
        if isinstance(obj, FunctionType) and obj.__module__ == module:
            sites.append(Site(obj, _refs_to(obj)))
        elif isinstance(obj, type) and obj.__module__ == module:
            for name, attr in list(vars(obj).items()):
                if isinstance(attr, FunctionType):
                    sites.append(Site(attr, [(obj, name)]))
                elif isinstance(attr, property) and isinstance(attr.fget, FunctionType):
                    sites.append(Site(attr.fget, [(obj, name)], prop=True))
    return sites


@dataclass
class Census:
    """What the workload does at the chosen scale: its checksum, and per column the calls of
    the instrumented functions and how many of them returned None or raised."""

    checksum: int
    calls: dict[str, int]
    nones: dict[str, int]
    seconds: float


def take_census(scale: float, sites: dict[str, list[Site]]) -> Census:
    import benchmarks.workload as wl

    t0 = time.perf_counter()
    checksum = wl.main(scale)
    seconds = time.perf_counter() - t0
    calls: dict[str, int] = {}
    nones: dict[str, int] = {}
    for col, ss in sites.items():
        box = Box()
        detach = attach_floor("ret", ss, box)
        try:
            again = wl.main(scale)
        finally:
            detach()
        if again != checksum:
            raise RuntimeError(f"the workload is not deterministic: {checksum} then {again}")
        calls[col] = len(box.sink)
        nones[col] = sum(1 for _, rv in box.sink if rv is None)
    if calls["never"] != 0 or calls["rare"] == 0:
        raise RuntimeError(f"the never/rarely called functions are not: {calls}")
    return Census(checksum, calls, nones, seconds)


def check_workload(census: Census, col: str, task: str, box: Box, result: Any) -> str | None:
    """Same checksum as without a tool, and every call of the instrumented functions seen
    (exactly: each call, return value or exception, on a first run; the last RING records
    and the count on a timed run)."""
    if result != census.checksum:
        return f"checksum {result}, expected {census.checksum}"
    want = census.calls.get(col, 0)
    if task == "count":
        return None if box.n == want else f"counted {box.n} calls, expected {want}"
    sink = list(box.sink)
    if len(sink) != (want if box.exact else min(want, RING)):
        return f"recorded {len(sink)} calls, expected {want}"
    if box.exact:
        nones = sum(1 for _, rv in sink if rv is None)
        if nones != census.nones.get(col, 0):
            return f"{nones} returns of None or exceptions, expected {census.nones.get(col, 0)}"
    if sink and min(d for d, _ in sink) < 0:
        return "negative durations"
    if box.stack:
        return f"{len(box.stack)} entries left unpaired"
    return None


def part2_contenders(
    tools: dict[str, AttachFn | str],
    only: set[str] | None,
    scale: float,
    module: str,
) -> tuple[list[Contender], Census]:
    import benchmarks.workload as wl

    never_mod, never_fn = wl.NEVER_CALLED
    rare_mod, rare_fn = wl.RARELY_CALLED
    sites = {
        "never": [function_site(never_mod, never_fn)],
        "rare": [function_site(rare_mod, rare_fn)],
        "module": module_sites(f"benchmarks.workload.{module}"),
    }
    census = take_census(scale, sites)
    run = functools.partial(_run_workload, wl.main, scale)
    cs = [
        Contender("p2:base", "p2", "base", "none", run),
        Contender("p2:base2", "p2", "base2", "none", run),
    ]
    cs[0].check = cs[1].check = functools.partial(_check_checksum, census.checksum)
    for col in WL_COLUMNS:
        for tool in ("floor", "pyprobes-r", "pyprobes-k", *PEER_TOOLS):
            if only is not None and tool not in only:
                continue
            if tool == "pyprobes-k" and col == "module":
                continue
            attach = tools[tool]
            if isinstance(attach, str):
                continue
            task = "count" if tool == "pyprobes-k" else "ret"
            box = Box()
            c = Contender(
                f"p2:{col}:{tool}",
                "p2",
                col,
                tool,
                run,
                attach=functools.partial(attach, task, sites[col], box),
                box=box,
            )
            c.check = functools.partial(_check2, census, col, task, box, tool)
            cs.append(c)
    return cs, census


def _run_workload(main: Callable[[float], int], scale: float, _n: int) -> int:
    return main(scale)


def _check_checksum(checksum: int, calls: int, result: Any) -> str | None:
    return None if result == checksum else f"checksum {result}, expected {checksum}"


def _check2(
    census: Census, col: str, task: str, box: Box, tool: str, calls: int, result: Any
) -> str | None:
    return check_workload(census, col, task, box, result)


# --- measuring ----------------------------------------------------------------------------------


def run_loop(c: Contender, iters: int, chunks: int, exact: bool = False) -> float:
    """Parts 1 and 4: attach, warm up, time ``iters`` loop iterations in ``chunks`` pieces with
    the GC off (the fastest piece counts), detach, check. Returns ns per call."""
    chunk = max(1, iters // chunks)
    best = float("inf")
    c.box.reset(exact)
    gc_was = gc.isenabled()
    detach = c.attach() if c.attach is not None else None
    try:
        c.run(WARM_ITERS)
        gc.disable()
        for _ in range(chunks):
            t0 = time.perf_counter_ns()
            c.run(chunk)
            best = min(best, time.perf_counter_ns() - t0)
    finally:
        if gc_was:
            gc.enable()
        if detach is not None:
            detach()
    problem = c.check((WARM_ITERS + chunk * chunks) * c.per_iter, None)
    c.box.reset()
    if problem is not None:
        raise RuntimeError(f"{c.key}: {problem}")
    return best / chunk / c.per_iter


def run_workload(c: Contender, exact: bool = False) -> float:
    """Part 2: attach, run the whole workload once (GC on, as a program runs), detach, check.
    Returns seconds."""
    c.box.reset(exact)
    gc.collect()
    detach = c.attach() if c.attach is not None else None
    try:
        t0 = time.perf_counter_ns()
        result = c.run(1)
        elapsed = time.perf_counter_ns() - t0
    finally:
        if detach is not None:
            detach()
    problem = c.check(0, result)
    c.box.reset()
    if problem is not None:
        raise RuntimeError(f"{c.key}: {problem}")
    return elapsed / 1e9


def time_workload(c: Contender, repeats: int) -> float:
    """Part 2: the fastest of ``repeats`` runs (each attached, run, detached and checked): a
    burst of load from the other jobs on this machine lasts about as long as a run."""
    return min(run_workload(c) for _ in range(1 if c.slow else repeats))


def calibrate_loops(cs: Sequence[Contender], target_ms: float) -> None:
    for c in cs:  # first contact: instrumentation, specialisation, DISABLE, pools
        run_loop(c, WARM_ITERS * 4, 1, exact=True)
    for c in cs:
        per_call = min(run_loop(c, MIN_ITERS * 2, 1) for _ in range(2))
        per_iter = max(per_call * c.per_iter, 1.0)
        c.iters = max(MIN_ITERS, int(target_ms * 1e6 / per_iter))


def measure(
    loops: Sequence[Contender],
    workloads: Sequence[Contender],
    rounds: int,
    wl_rounds: int,
    wl_repeats: int,
    seed: int,
    chunks: int,
    progress: Callable[[str], None],
) -> None:
    """Interleaved rounds: every contender once per round, in a freshly shuffled order."""
    rng = random.Random(seed)
    order = list(loops)
    for r in range(rounds):
        rng.shuffle(order)
        for c in order:
            c.samples.append(run_loop(c, c.iters, chunks))
        if (r + 1) % 5 == 0 or r + 1 == rounds:
            progress(f"parts 1+4: round {r + 1}/{rounds}")
    order = list(workloads)
    for r in range(wl_rounds if workloads else 0):
        rng.shuffle(order)
        for c in order:
            if c.slow and r >= SLOW_ROUNDS:
                continue
            c.samples.append(time_workload(c, wl_repeats))
        progress(f"part 2: round {r + 1}/{wl_rounds}")


# --- results --------------------------------------------------------------------------------------


def run_suite(args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    """Measure in this process; returns the result set (raw samples and what they are)."""
    peers = load_peers()
    tools = tool_attachers(peers)
    only = set(args.only.split(",")) if args.only else None
    parts = set(args.parts.split(","))
    started = time.perf_counter()
    ids_before = {tid: MON.get_tool(tid) for tid in range(6)}
    loops: list[Contender] = []
    if "1" in parts:
        loops += part1_contenders(tools, only)
    if "4" in parts:
        loops += part4_contenders(tools, only, args.depth)
    workloads: list[Contender] = []
    census: Census | None = None
    if "2" in parts:
        workloads, census = part2_contenders(tools, only, args.scale, args.module)
        progress(
            f"part 2: workload scale {args.scale} takes {census.seconds:.2f} s;"
            f" calls {census.calls}"
        )
        first = {c.key: run_workload(c, exact=True) for c in workloads}  # all checked exactly
        for c in workloads:
            c.slow = first[c.key] > SLOW_FACTOR * first["p2:base"]
    if loops:
        calibrate_loops(loops, args.target_ms)
        progress(f"parts 1+4: calibrated {len(loops)} contenders")
    measure(
        loops,
        workloads,
        args.rounds,
        args.wl_rounds,
        args.wl_repeats,
        args.seed,
        args.chunks,
        progress,
    )
    leftovers = []
    if pyprobes.registered_probes():
        leftovers.append(f"probes still registered: {pyprobes.registered_probes()}")
    for tid in range(6):
        if MON.get_tool(tid) != ids_before[tid]:
            leftovers.append(f"tool id {tid} is held by {MON.get_tool(tid)!r}")
    if sys.getprofile() is not None or sys.gettrace() is not None:
        leftovers.append("a profile or trace function is still set")
    if leftovers:
        raise RuntimeError("; ".join(leftovers))
    return {
        "core": pyprobes.core_name(),
        "facts": benchlib.facts(),
        "seconds": round(time.perf_counter() - started, 1),
        "peers": {
            name: {"version": p.version, "available": p.available, "reason": p.reason}
            for name, p in peers.items()
        },
        "unavailable_tools": {t: a for t, a in tools.items() if isinstance(a, str)},
        "census": None if census is None else vars(census),
        "calls_per_run": {
            c.key: max(1, c.iters // args.chunks) * args.chunks * c.per_iter for c in loops
        },
        "samples": {c.key: c.samples for c in (*loops, *workloads)},
        "contenders": {
            c.key: {"part": c.part, "col": c.col, "tool": c.tool} for c in (*loops, *workloads)
        },
    }


def c_core_state() -> str:
    """Whether the C core exists here: "built", or why its column is empty."""
    try:
        __import__("pyprobes._speedups")
    except ImportError:
        return "not built"
    return "built"


def run_python_core_child(args: argparse.Namespace, progress: Callable[[str], None]) -> Any:
    """The pyprobes rows again with ``PYPROBES_CORE=python``, in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "python-core.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child-json",
            str(out),
            "--only",
            ",".join(("floor", *PYPROBES_TOOLS)),
            "--parts",
            args.parts,
            "--rounds",
            str(args.rounds),
            "--wl-rounds",
            str(args.wl_rounds),
            "--wl-repeats",
            str(args.wl_repeats),
            "--scale",
            str(args.scale),
            "--module",
            args.module,
            "--depth",
            str(args.depth),
            "--seed",
            str(args.seed),
            "--chunks",
            str(args.chunks),
            "--target-ms",
            str(args.target_ms),
        ]
        progress("measuring the pyprobes rows again with PYPROBES_CORE=python (child process)")
        env = {**os.environ, "PYPROBES_CORE": "python"}
        subprocess.run(cmd, env=env, check=True)
        return json.loads(out.read_text(encoding="utf-8"))


# --- summaries (also used by peers_report.py) -----------------------------------------------------


def _s(data: dict[str, Any], key: str) -> list[float] | None:
    return data["samples"].get(key)  # type: ignore[no-any-return]


def p1_stats(rs: dict[str, Any], task: str, tool: str) -> tuple[Stat, Stat] | None:
    """(added ns per call, per-round ratio to the floor) of a part-1 contender."""
    xs, base, floor = (
        _s(rs, f"p1:{task}:{tool}"),
        _s(rs, "p1:base"),
        _s(rs, f"p1:{task}:floor"),
    )
    if xs is None or base is None:
        return None
    added = paired(xs, base, "diff")
    ratio = paired(added, paired(floor, base, "diff"), "ratio") if floor else []
    return Stat.of(added), Stat.of(ratio)


def p1_ratio(rs: dict[str, Any], a: tuple[str, str], b: tuple[str, str]) -> Stat | None:
    """Per-round ratio of two part-1 contenders' added ns (e.g. kretprobe (c) / kprobe (a))."""
    xa, xb, base = _s(rs, f"p1:{a[0]}:{a[1]}"), _s(rs, f"p1:{b[0]}:{b[1]}"), _s(rs, "p1:base")
    if xa is None or xb is None or base is None:
        return None
    return Stat.of(paired(paired(xa, base, "diff"), paired(xb, base, "diff"), "ratio"))


def p2_stat(rs: dict[str, Any], col: str, tool: str) -> Stat | None:
    """Slowdown of the whole workload in percent, per round against that round's no-tool run."""
    key = "p2:base2" if tool == "none" else f"p2:{col}:{tool}"
    xs, base = _s(rs, key), _s(rs, "p2:base")
    if xs is None or base is None:
        return None
    return Stat.of(paired(xs, base[: len(xs)], "pct"))  # slow ones ran in the first rounds


def p4_stats(rs: dict[str, Any], tool: str, depth: int) -> tuple[Stat, Stat] | None:
    xs, base, floor = _s(rs, f"p4:unwind:{tool}"), _s(rs, "p4:base"), _s(rs, "p4:unwind:floor")
    if xs is None or base is None:
        return None
    added = paired(xs, base, "diff", depth)
    ratio = paired(added, paired(floor, base, "diff", depth), "ratio") if floor else []
    return Stat.of(added), Stat.of(ratio)


def result_sets(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(suffix, result set) for the main run and the python-core child, if any."""
    out = [("", data["main"])]
    if data.get("python_core") is not None:
        out.append((" [python core]", data["python_core"]))
    return out


def _tool_rows(data: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None, str | None]]:
    """(label, tool, result set or None, reason it is missing) in table order."""
    main = data["main"]
    core = main["core"]
    rows: list[tuple[str, str, dict[str, Any] | None, str | None]] = []
    rows.append((TOOL_LABELS["floor"], "floor", main, None))
    for tool in PYPROBES_TOOLS:
        label = TOOL_LABELS[tool]
        if core == "c":
            rows.append((f"{label} (c core)", tool, main, None))
            py = data.get("python_core")
            rows.append(
                (f"{label} (python core)", tool, py, None if py else "not measured (--no-child)")
            )
        else:
            rows.append((f"{label} (c core)", tool, None, data.get("c_core", "not built")))
            rows.append((f"{label} (python core)", tool, main, None))
    for tool in PEER_TOOLS:
        reason = main["unavailable_tools"].get(tool)
        rows.append((TOOL_LABELS[tool], tool, None if reason else main, reason))
    return rows


def tables(data: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """The report's tables: (title, headers, rows, notes)."""
    out: list[tuple[str, list[str], list[list[str]], list[str]]] = []
    main = data["main"]
    cfg = data["config"]
    missing: dict[str, str] = {}
    if any(k.startswith("p1:") for k in main["samples"]):
        base = Stat.of(main["samples"]["p1:base"])
        rows = [["baseline: nothing attached (absolute ns per call)", cell(base, "ns")]]
        rows[0] += [""] * (1 + 2 * (len(TASKS) - 1))
        for label, tool, rs, reason in _tool_rows(data):
            row = [label]
            for task in TASKS:
                st = p1_stats(rs, task, tool) if rs is not None else None
                if tool not in TOOLS_FOR_TASK[task]:
                    row += ["—", ""]
                elif st is None:
                    row += ["n/a", ""]
                    if reason:
                        missing[label] = reason
                else:
                    row += [cell(st[0], "ns"), "" if tool == "floor" else fmt(st[1].median, "x")]
            rows.append(row)
        headers = ["contender"]
        for task in TASKS:
            headers += [f"{TASK_TITLES[task]}: ns", "x floor"]
        calls = main.get("calls_per_run", {})
        ncalls = [v for k, v in calls.items() if k.startswith("p1:")]
        notes = [
            "ns per call added to the baseline (median over rounds, IQR in brackets); x floor ="
            " median of per-round ratios of added ns to the floor of the same task.",
            f"{cfg['rounds']} interleaved rounds; each run {min(ncalls, default=0)}.."
            f"{max(ncalls, default=0)} calls, timed in {cfg['chunks']} pieces (fastest counts).",
        ]
        out.append(("Part 1: per-hit cost on `f(a, b): return a + b`", headers, rows, notes))
    if main.get("census"):
        cen = main["census"]
        rows = []
        noise = p2_stat(main, "", "none")
        rows.append(
            ["no tool, run again (the noise: slowdown of an identical run)"]
            + [cell(noise, "%")] * 3
        )
        for tool_label, tool, rs, reason in _tool_rows(data):
            if tool in ("pyprobes-j", "pyprobes-k0"):
                continue
            label = tool_label + (", counting" if tool == "pyprobes-k" else "")
            row = [label]
            for col in WL_COLUMNS:
                st = p2_stat(rs, col, tool) if rs is not None else None
                if tool == "pyprobes-k" and col == "module":
                    row.append("—")
                elif st is None:
                    row.append("n/a")
                    if reason:
                        missing[label] = reason
                else:
                    row.append(cell(st, "%"))
            rows.append(row)
        headers = [
            "contender (c: duration + retval)",
            f"never called ({cen['calls']['never']} calls)",
            f"rarely called ({cen['calls']['rare']} calls)",
            f"every function of {cfg['module']} ({cen['calls']['module']:,} calls)",
        ]
        base_s = Stat.of(main["samples"]["p2:base"])
        import benchmarks.workload as wl

        notes = [
            "slowdown of the whole workload in percent: per round, the contender's time (the"
            f" fastest of {cfg.get('wl_repeats', 1)} runs) against the same round's no-tool time;"
            f" median (IQR) over rounds. Contenders more than {SLOW_FACTOR:g}x slower than no"
            " tool are timed by one run in the first round only.",
            f"workload `benchmarks.workload.main({cfg['scale']})`: no tool"
            f" {base_s.median * 1000:.0f} ms (median); {cfg['wl_rounds']} interleaved rounds;"
            f" never called = `{':'.join(wl.NEVER_CALLED)}`, rarely called ="
            f" `{':'.join(wl.RARELY_CALLED)}`; checksum {cen['checksum']} checked on every run,"
            " and every call, return value and exception recorded.",
            "the floor and each peer record exits by an exception too (global PY_UNWIND,"
            " profile/trace 'return' events, try/finally), as a Kretprobe does.",
        ]
        out.append(("Part 2: cost to code that is not probed (workload)", headers, rows, notes))
    if any(k.startswith("p4:") for k in main["samples"]):
        depth = cfg["depth"]
        base = Stat.of(main["samples"]["p4:base"])
        rows = [
            [f"no tool: one raise caught {depth} frames up (absolute ns)", cell(base, "ns"), ""]
        ]
        for label, tool, rs, reason in _tool_rows(data):
            if tool in ("pyprobes-k", "pyprobes-k0", "pyprobes-j"):
                continue
            st = p4_stats(rs, tool, depth) if rs is not None else None
            if st is None:
                rows.append([label, "n/a", ""])
                if reason:
                    missing[label] = reason
                continue
            rows.append(
                [label, cell(st[0], "ns"), "" if tool == "floor" else fmt(st[1].median, "x")]
            )
        headers = [
            "contender, doing (c) on a function never called",
            "ns per unwound frame",
            "x floor",
        ]
        notes = [
            f"ns added per frame unwound by a raise through {depth} frames of unprobed code"
            " (per round against the no-tool loop, divided by the depth); median (IQR).",
        ]
        out.append(("Part 4: exceptions through unprobed code", headers, rows, notes))
    if missing:
        out[-1][3].extend(f"n/a {label}: {why}" for label, why in missing.items())
    return out


def render_text(data: dict[str, Any]) -> str:
    f = data["main"]["facts"]
    lines = [
        f"pyprobes vs peers: CPython {f['python']}, default core {data['main']['core']!r}"
        f" (c core: {data.get('c_core', '?')}), {f['date']}, {f['machine']} {f['cpus']} CPUs",
        f"command: {data['command']}",
        "peers: "
        + ", ".join(
            f"{n} {p['version'] or '-'}" + ("" if p["available"] else f" (n/a: {p['reason']})")
            for n, p in data["main"]["peers"].items()
        ),
    ]
    for title, headers, rows, notes in tables(data):
        lines += ["", title, benchlib.text_table(headers, rows), *notes]
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=11, help="rounds of parts 1 and 4 (default 11)")
    ap.add_argument("--wl-rounds", type=int, default=7, help="rounds of part 2 (default 7)")
    ap.add_argument(
        "--wl-repeats",
        type=int,
        default=3,
        help="part 2: runs per contender per round, the fastest counts (default 3)",
    )
    ap.add_argument(
        "--scale",
        type=float,
        default=0.25,
        help="workload scale for part 2 (default 0.25: about 0.2 s a run)",
    )
    ap.add_argument(
        "--module",
        default="orders",
        help="workload module whose every function part 2 instruments (default orders)",
    )
    ap.add_argument("--depth", type=int, default=5, help="frames unwound per raise (default 5)")
    ap.add_argument("--chunks", type=int, default=5, help="timed pieces per run (default 5)")
    ap.add_argument("--target-ms", type=float, default=TARGET_MS, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help="seed of the round orders (default 0)")
    ap.add_argument("--parts", default="1,2,4", help="which parts to run (default 1,2,4)")
    ap.add_argument("--only", default="", help="only these tools (comma-separated), for trials")
    ap.add_argument("--quick", action="store_true", help="few rounds: a smoke test, not results")
    ap.add_argument(
        "--no-child",
        action="store_true",
        help="with the C core: do not measure the python core in a child process",
    )
    ap.add_argument("--json", metavar="FILE", help="write the raw numbers as JSON")
    ap.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    ap.add_argument("--child-json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.wl_rounds, args.wl_repeats, args.target_ms = 3, 2, 1, 5.0
    if (
        min(args.rounds, args.wl_rounds, args.wl_repeats, args.depth, args.chunks) < 1
        or args.scale <= 0
    ):
        ap.error("--rounds, --wl-*, --depth, --chunks must be >= 1 and --scale > 0")
    return args


def markdown(data: dict[str, Any], level: int = 3) -> str:
    """The tables as Markdown sections."""
    out = []
    for title, headers, rows, notes in tables(data):
        out += [f"{'#' * level} {title}", "", benchlib.md_table(headers, rows), ""]
        out += [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def progress(msg: str) -> None:
        print(
            f"[bench_peers {sys.version.split()[0]} {pyprobes.core_name()}] {msg}",
            file=sys.stderr,
            flush=True,
        )

    main_set = run_suite(args, progress)
    if args.child_json:
        Path(args.child_json).write_text(json.dumps(main_set), encoding="utf-8")
        return 0
    data: dict[str, Any] = {
        "command": benchlib.exact_command(),
        "config": {
            k: getattr(args, k)
            for k in (
                "rounds",
                "wl_rounds",
                "wl_repeats",
                "scale",
                "module",
                "depth",
                "chunks",
                "seed",
            )
        },
        "c_core": c_core_state() if main_set["core"] != "c" else "built",
        "main": main_set,
        "python_core": None,
    }
    if main_set["core"] == "c" and not args.no_child:
        data["python_core"] = run_python_core_child(args, progress)
    print(render_text(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(markdown(data), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
