"""Engine overhead: ns added per call by kprobes, jprobes and kretprobes, against raw floors.

Run ``python benchmarks/bench_engine.py --help``. Every contender is a private copy of the same
small function ``f(a, b): return a + b`` (its own code object, so that instrumenting one copy
leaves the others untouched), called in a tight unrolled loop. Each round measures every
contender once, in a shuffled order, registering before and unregistering after its timed loop;
the report gives medians over rounds of per-round differences to the baseline of the same round.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import CodeType
from typing import Any

_SRC = Path(__file__).resolve().parent.parent / "src"


def _core_from_argv(argv: list[str]) -> str | None:
    """``--core NAME`` must act before pyprobes is imported (the core is chosen then)."""
    for i, a in enumerate(argv):
        if a == "--core" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--core="):
            return a.split("=", 1)[1]
    return None


if _core_from_argv(sys.argv[1:]) is not None:
    os.environ["PYPROBES_CORE"] = _core_from_argv(sys.argv[1:]) or ""
try:
    import pyprobes
except ImportError:  # not installed: use the repository's src/ layout
    sys.path.insert(0, str(_SRC))
    import pyprobes

from pyprobes import Jprobe, Kprobe, Kretprobe
from pyprobes.engine.program import Program, Var

MON = sys.monitoring
EV = MON.events
RAW_TOOL_NAME = "pyprobes-bench-floor"
UNROLL = 10  # calls per iteration of a timed loop (keeps the loop's own share small)
TARGET_MS = 25.0  # one measurement lasts about this long when --calls is not given
MIN_ITERS = 200

# --- the code under test ------------------------------------------------------------------

_CALL_SRC = """
def {fn}(a, b):
    return a + b

def loop(n):
    f = {fn}
    for _ in range(n):
{body}
"""

_UNWIND_SRC = """
class Boom(Exception):
    pass

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


@dataclass
class Target:
    """A compiled private copy of the code under test."""

    func: Callable[..., Any]
    loop: Callable[[int], None]
    per_iter: int  # calls of ``func`` per loop iteration


def make_call_target(name: str) -> Target:
    """A fresh ``name(a, b): return a + b`` and a loop calling it UNROLL times per iteration."""
    body = "\n".join(["        f(1, 2)"] * UNROLL)
    ns: dict[str, Any] = {"__name__": f"bench_{name}"}
    exec(compile(_CALL_SRC.format(fn=name, body=body), f"<bench:{name}>", "exec"), ns)
    return Target(func=ns[name], loop=ns["loop"], per_iter=UNROLL)


def make_unwind_target(prefix: str, depth: int) -> Target:
    """``prefix_1`` raises; ``prefix_k`` calls ``prefix_{k-1}``; the loop catches at the top."""
    middle = "\n\n".join(
        f"def {prefix}_{k}():\n    {prefix}_{k - 1}()" for k in range(2, depth + 1)
    )
    ns: dict[str, Any] = {"__name__": f"bench_{prefix}"}
    src = _UNWIND_SRC.format(p=prefix, middle=middle, depth=depth)
    exec(compile(src, f"<bench:{prefix}>", "exec"), ns)
    return Target(func=ns[f"{prefix}_{depth}"], loop=ns["loop"], per_iter=1)


def empty2(p: object, ctx: object) -> None:
    """The empty handler every contender calls (pre, entry and return handlers, and floors)."""


def f_mirror(a: object, b: object) -> None:
    """The jprobe's empty mirror of ``f(a, b)``."""


# --- contenders -----------------------------------------------------------------------------


class RawTool:
    """A bare sys.monitoring tool: callbacks as given, on local events of one code object (or,
    without a code object, as global events)."""

    def __init__(self, code: CodeType | None, callbacks: dict[int, Callable[..., object]]) -> None:
        self.code = code
        self.callbacks = callbacks
        self.tid: int | None = None

    def attach(self) -> None:
        held = pyprobes.tool_id()
        for tid in (3, 4, 5):  # the same id pyprobes would take, when pyprobes is not holding it
            if tid != held and MON.get_tool(tid) is None:
                break
        else:
            raise RuntimeError("no sys.monitoring tool id free among 3, 4, 5 for the raw floor")
        MON.use_tool_id(tid, RAW_TOOL_NAME)
        self.tid = tid
        mask = 0
        for event, cb in self.callbacks.items():
            MON.register_callback(tid, event, cb)
            mask |= event
        if self.code is not None:
            MON.set_local_events(tid, self.code, mask)
        else:
            MON.set_events(tid, mask)

    def detach(self) -> None:
        tid, self.tid = self.tid, None
        if tid is None:
            return
        # 3.12/3.13 keep local events and callbacks across free_tool_id: clear them first.
        if self.code is not None:
            MON.set_local_events(tid, self.code, 0)
        MON.set_events(tid, 0)
        for event in self.callbacks:
            MON.register_callback(tid, event, None)
        MON.free_tool_id(tid)


@dataclass
class Contender:
    """One thing to time: a loop, and what to attach around it."""

    name: str
    what: str
    target: Target
    attach: Callable[[], None] = lambda: None
    detach: Callable[[], None] = lambda: None
    check: Callable[[int], str | None] = lambda calls: None  # after a run: a problem, or None
    iters: int = 0
    samples: list[float] = field(default_factory=list)  # ns per call, one per round


def _probe_contender(
    name: str,
    what: str,
    target: Target,
    make: Callable[[], Kprobe | Jprobe | Kretprobe],
    expect_hits: bool = True,
) -> Contender:
    """A contender that registers a fresh probe from ``make()`` around each run."""
    current: list[Kprobe | Jprobe | Kretprobe] = []

    def attach() -> None:
        p = make()
        if isinstance(p, Kretprobe):
            pyprobes.register_kretprobe(p)
        elif isinstance(p, Jprobe):
            pyprobes.register_jprobe(p)
        else:
            pyprobes.register_kprobe(p)
        current.append(p)

    def detach() -> None:
        while current:
            p = current.pop()
            if isinstance(p, Kretprobe):
                pyprobes.unregister_kretprobe(p)
            elif isinstance(p, Jprobe):
                pyprobes.unregister_jprobe(p)
            else:
                pyprobes.unregister_kprobe(p)

    last: dict[str, int] = {}

    def detach_and_count() -> None:
        if current:
            p = current[-1]
            last.update(nhit=p.nhit, nfault=p.nfault, nmissed=p.nmissed)
        detach()

    def check(calls: int) -> str | None:
        want = calls if expect_hits else 0
        if last.get("nfault") or last.get("nmissed"):
            return f"{name}: faults or misses: {last}"
        if last.get("nhit") != want:
            return f"{name}: the probe fired {last.get('nhit')} times (expected {want})"
        return None

    return Contender(name, what, target, attach, detach_and_count, check)


def build_contenders(depth: int) -> list[Contender]:
    """Every contender, each on its own copy of the code under test."""
    cs: list[Contender] = []

    base = make_call_target("f_baseline")
    cs.append(Contender("baseline", "f(a, b) with nothing attached", base))

    t = make_call_target("f_floor_k")
    raw_k = RawTool(t.func.__code__, {EV.PY_START: lambda code, off: empty2(None, None)})
    cs.append(
        Contender(
            "floor-k", "raw PY_START callback -> handler(None, None)", t, raw_k.attach, raw_k.detach
        )
    )

    t = make_call_target("f_kprobe")
    cs.append(
        _probe_contender(
            "kprobe",
            "Kprobe(addr=f, pre_handler=empty)",
            t,
            partial(Kprobe, addr=t.func, pre_handler=empty2),
        )
    )

    t = make_call_target("f_jprobe")
    cs.append(
        _probe_contender(
            "jprobe",
            "Jprobe(entry=f_mirror, addr=f), empty mirror",
            t,
            partial(Jprobe, entry=f_mirror, addr=t.func),
        )
    )

    t = make_call_target("f_floor_r")
    raw_r = RawTool(
        t.func.__code__,
        {
            EV.PY_START: lambda code, off: empty2(None, None),
            EV.PY_RETURN: lambda code, off, rv: empty2(None, None),
        },
    )
    cs.append(
        Contender(
            "floor-r",
            "raw PY_START + PY_RETURN callbacks -> handler(None, None)",
            t,
            raw_r.attach,
            raw_r.detach,
        )
    )

    t = make_call_target("f_kretprobe")
    cs.append(
        _probe_contender(
            "kretprobe",
            "Kretprobe(addr=f, handler=empty, entry_handler=empty)",
            t,
            partial(Kretprobe, addr=t.func, handler=empty2, entry_handler=empty2),
        )
    )

    # The kernel's usual kretprobe: a return handler only (its 1.5x-1.75x figure predates
    # entry handlers). Its floor: a raw PY_START callback that calls nothing, beside the
    # PY_RETURN callback calling the handler.
    t = make_call_target("f_floor_r1")
    raw_r1 = RawTool(
        t.func.__code__,
        {
            EV.PY_START: lambda code, off: None,
            EV.PY_RETURN: lambda code, off, rv: empty2(None, None),
        },
    )
    cs.append(
        Contender(
            "floor-r1",
            "raw PY_START callback -> None + PY_RETURN callback -> handler(None, None)",
            t,
            raw_r1.attach,
            raw_r1.detach,
        )
    )

    t = make_call_target("f_kretprobe_h")
    cs.append(
        _probe_contender(
            "kretprobe-h",
            "Kretprobe(addr=f, handler=empty), no entry_handler",
            t,
            partial(Kretprobe, addr=t.func, handler=empty2),
        )
    )

    # Probe programs (issue 13): what `pyprobes run --count` / `--hist` run per hit, in the core.
    t = make_call_target("f_prog_count")
    cs.append(
        _probe_contender(
            "prog-count",
            "Kprobe(addr=f, pre_handler=program_handler(Program())): a count",
            t,
            lambda t=t: Kprobe(addr=t.func, pre_handler=pyprobes.program_handler(Program())),
        )
    )
    t = make_call_target("f_prog_hist")
    cs.append(
        _probe_contender(
            "prog-hist",
            "Kretprobe(addr=f, handler=program_handler(Program(hist=$duration))): a histogram",
            t,
            lambda t=t: Kretprobe(
                addr=t.func,
                handler=pyprobes.program_handler(
                    Program(hist=Var("duration"), hist_scales=(1, 1000, 1_000_000))
                ),
            ),
        )
    )

    t = make_call_target("f_unprobed")
    other = make_call_target("g_unprobed_other")
    cs.append(
        _probe_contender(
            "unprobed",
            "f with a Kprobe on another function g",
            t,
            partial(Kprobe, addr=other.func, pre_handler=empty2),
            expect_hits=False,
        )
    )

    u = make_unwind_target("u_base", depth)
    cs.append(Contender("unwind-base", f"raise through {depth} frames, nothing attached", u))
    u = make_unwind_target("u_floor", depth)
    raw_u = RawTool(None, {EV.PY_UNWIND: lambda code, off, exc: None})
    cs.append(
        Contender(
            "unwind-floor",
            f"raise through {depth} frames, raw global PY_UNWIND callback returning None",
            u,
            raw_u.attach,
            raw_u.detach,
        )
    )
    u = make_unwind_target("u_kret", depth)
    other = make_call_target("g_unwind_other")
    cs.append(
        _probe_contender(
            "unwind-kret",
            f"raise through {depth} frames, Kretprobe on another function",
            u,
            partial(Kretprobe, addr=other.func, handler=empty2, entry_handler=empty2),
            expect_hits=False,
        )
    )
    return cs


# --- measuring --------------------------------------------------------------------------------


def run_once(c: Contender, iters: int, warm_iters: int, chunks: int = 1) -> float:
    """Attach, warm up, time ``iters`` loop iterations with the GC off, detach.

    The iterations are timed in ``chunks`` consecutive pieces; the fastest piece gives the
    result (ns per iteration), so that a burst of noise inside a run does not count.
    """
    chunk = max(1, iters // chunks)
    best = float("inf")
    gc_was = gc.isenabled()
    try:
        c.attach()
        c.target.loop(warm_iters)  # re-instrumentation and re-specialisation settle here
        gc.disable()
        for _ in range(chunks):
            t0 = time.perf_counter_ns()
            c.target.loop(chunk)
            best = min(best, time.perf_counter_ns() - t0)
    finally:
        if gc_was:
            gc.enable()
        c.detach()
    problem = c.check((warm_iters + chunk * chunks) * c.target.per_iter)
    if problem is not None:
        raise RuntimeError(problem)
    return best / chunk


def calibrate(cs: Sequence[Contender], calls: int, target_ms: float, warm_iters: int) -> None:
    """Warm every contender up; set its iteration count (fixed calls, or ~target_ms a run)."""
    for c in cs:  # first contact: instrumentation, specialisation, DISABLE, pools
        run_once(c, warm_iters * 4, warm_iters)
    for c in cs:
        if calls > 0:
            c.iters = max(1, calls // c.target.per_iter)
            continue
        probe_iters = max(MIN_ITERS, warm_iters * 4)
        per_iter = max(min(run_once(c, probe_iters, warm_iters) for _ in range(3)), 1.0)
        c.iters = max(MIN_ITERS, int(target_ms * 1e6 / per_iter))


def measure(cs: Sequence[Contender], rounds: int, seed: int, warm_iters: int, chunks: int) -> None:
    """Interleaved rounds: every contender once per round, in a freshly shuffled order."""
    rng = random.Random(seed)
    order = list(cs)
    for _ in range(rounds):
        rng.shuffle(order)
        for c in order:
            ns_per_iter = run_once(c, c.iters, warm_iters, chunks)
            c.samples.append(ns_per_iter / c.target.per_iter)


# --- statistics and report --------------------------------------------------------------------

#: The contenders measured per call of f (beside the baseline), in table order.
CALL_MEASURES = (
    "floor-k",
    "kprobe",
    "jprobe",
    "floor-r",
    "kretprobe",
    "floor-r1",
    "kretprobe-h",
    "prog-count",
    "prog-hist",
)


@dataclass
class Stat:
    """Median, quartiles and range of per-round values."""

    median: float
    q1: float
    q3: float
    lo: float
    hi: float

    @classmethod
    def of(cls, xs: Sequence[float]) -> Stat:
        if len(xs) == 1:
            return cls(xs[0], xs[0], xs[0], xs[0], xs[0])
        q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
        return cls(q2, q1, q3, min(xs), max(xs))


@dataclass
class Row:
    label: str
    what: str
    stat: Stat
    unit: str  # "ns" or "x"


def summarise(cs: Sequence[Contender], depth: int) -> list[Row]:
    """Table rows: added ns per call (paired with the same round's baseline), then ratios."""
    by = {c.name: c for c in cs}
    base = by["baseline"].samples

    def added(name: str) -> list[float]:
        return [s - b for s, b in zip(by[name].samples, base, strict=True)]

    def ratio(a: list[float], b: list[float]) -> list[float]:
        return [x / y if y > 0 else float("nan") for x, y in zip(a, b, strict=True)]

    names = (*CALL_MEASURES, "unprobed")
    add = {n: added(n) for n in names}

    def per_frame(name: str) -> list[float]:
        pairs = zip(by[name].samples, by["unwind-base"].samples, strict=True)
        return [(k - b) / depth for k, b in pairs]

    rows = [Row("baseline", "f(a, b) + loop, nothing attached (absolute)", Stat.of(base), "ns")]
    for name in names:
        rows.append(Row(name, by[name].what, Stat.of(add[name]), "ns"))
    rows.append(
        Row(
            "unwind-base",
            f"one raise caught {depth} frames up, nothing attached (absolute)",
            Stat.of(by["unwind-base"].samples),
            "ns",
        )
    )
    rows.append(
        Row(
            "unwind-floor/frame",
            "added per unwound frame by a raw global PY_UNWIND callback (floor)",
            Stat.of(per_frame("unwind-floor")),
            "ns",
        )
    )
    rows.append(
        Row(
            "unwind/frame",
            "added per unwound frame by a kretprobe on another function (global PY_UNWIND)",
            Stat.of(per_frame("unwind-kret")),
            "ns",
        )
    )
    for a, b in (
        ("kprobe", "floor-k"),
        ("jprobe", "floor-k"),
        ("kretprobe", "floor-r"),
        ("kretprobe", "kprobe"),
        ("kretprobe-h", "floor-r1"),
        ("kretprobe-h", "kprobe"),
        ("prog-count", "kprobe"),
        ("prog-hist", "kretprobe-h"),
    ):
        note = " (kernel doc: 1.5x-1.75x)" if (a, b) == ("kretprobe-h", "kprobe") else ""
        rows.append(
            Row(
                f"{a}/{b}",
                f"ratio of added ns, per round{note}",
                Stat.of(ratio(add[a], add[b])),
                "x",
            )
        )
    return rows


def _fmt(v: float, unit: str) -> str:
    return f"{v:.2f}x" if unit == "x" else f"{v:.1f}"


def _cells(r: Row) -> list[str]:
    s = r.stat
    return [
        r.label,
        _fmt(s.median, r.unit),
        f"{_fmt(s.q1, r.unit)} .. {_fmt(s.q3, r.unit)}",
        f"{_fmt(s.lo, r.unit)} .. {_fmt(s.hi, r.unit)}",
        r.what,
    ]


HEADERS = ["measure", "median", "IQR (q1 .. q3)", "min .. max", "what (ns per call unless x)"]


def text_table(rows: Sequence[Row]) -> str:
    table = [HEADERS, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    out = []
    for i, line in enumerate(table):
        cells = [
            c.ljust(w) if j in (0, len(HEADERS) - 1) else c.rjust(w)
            for j, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(rows: Sequence[Row]) -> str:
    out = ["| " + " | ".join(HEADERS) + " |", "|---|---:|---:|---:|---|"]
    out += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(out)


def exact_command() -> str:
    env = os.environ.get("PYTHONPATH")
    prefix = f"PYTHONPATH={shlex.quote(env)} " if env else ""
    return prefix + shlex.join([sys.executable, *sys.argv])


def facts(args: argparse.Namespace, cs: Sequence[Contender], seconds: float) -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "python_full": sys.version.replace("\n", " "),
        "executable": sys.executable,
        "core": pyprobes.core_name(),
        "pyprobes": f"{pyprobes.__version__} ({Path(pyprobes.__file__).parent})",
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "command": exact_command(),
        "rounds": args.rounds,
        "chunks": args.chunks,
        "seed": args.seed,
        "unwind_depth": args.depth,
        "calls_per_run": {
            c.name: max(1, c.iters // args.chunks) * args.chunks * c.target.per_iter for c in cs
        },
        "seconds": round(seconds, 1),
    }


def render_text(meta: dict[str, Any], rows: Sequence[Row]) -> str:
    calls = meta["calls_per_run"]
    return "\n".join(
        [
            f"pyprobes engine overhead: CPython {meta['python']}, core {meta['core']!r}",
            f"date {meta['date']}, machine {meta['machine']}, {meta['cpus']} CPUs,"
            f" {meta['platform']}",
            f"command: {meta['command']}",
            f"{meta['rounds']} interleaved rounds (seed {meta['seed']}); calls per run"
            f" {min(calls.values())}..{max(calls.values())}, timed in {meta['chunks']} pieces"
            f" (the fastest counts); took {meta['seconds']} s",
            "added ns = ns per call minus the same round's baseline; ratios per round",
            "",
            text_table(rows),
        ]
    )


def render_markdown(meta: dict[str, Any], rows: Sequence[Row]) -> str:
    calls = meta["calls_per_run"]
    return "\n".join(
        [
            f"## CPython {meta['python']} (core: {meta['core']})",
            "",
            f"- date: {meta['date']}; machine: {meta['machine']}, {meta['cpus']} CPUs,"
            f" {meta['platform']}",
            f"- python: `{meta['python_full']}`",
            f"- command: `{meta['command']}`",
            f"- {meta['rounds']} interleaved rounds (seed {meta['seed']}), calls per run"
            f" {min(calls.values())}..{max(calls.values())}, timed in {meta['chunks']} pieces"
            f" (the fastest counts), took {meta['seconds']} s; added ns = ns per call minus"
            " the same round's baseline",
            "",
            markdown_table(rows),
            "",
            "",
        ]
    )


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=31, help="interleaved rounds (default 31)")
    ap.add_argument(
        "--calls",
        type=int,
        default=0,
        help="calls per timed run, the same for every contender (an unwind call raises through"
        f" --depth frames); default: calibrated to ~{TARGET_MS:g} ms per run",
    )
    ap.add_argument(
        "--chunks",
        type=int,
        default=5,
        help="each run is timed in this many consecutive pieces and the fastest one counts"
        " (default 5; 1 times the whole run)",
    )
    ap.add_argument("--target-ms", type=float, default=TARGET_MS, help=argparse.SUPPRESS)
    ap.add_argument("--depth", type=int, default=5, help="frames unwound per raise (default 5)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the round orders (default 0)")
    ap.add_argument(
        "--core",
        choices=["c", "python"],
        help="the dispatch core to measure (sets PYPROBES_CORE; default: as the environment says)",
    )
    ap.add_argument(
        "--combine",
        nargs="+",
        metavar="JSON",
        help="measure nothing: put the --json results of runs on different cores side by side"
        " (one Markdown section, written to --markdown or printed)",
    )
    ap.add_argument("--json", metavar="FILE", help="write the raw numbers as JSON")
    ap.add_argument("--markdown", metavar="FILE", help="write the result as a Markdown section")
    args = ap.parse_args(argv)
    if min(args.rounds, args.depth, args.chunks) < 1 or args.calls < 0:
        ap.error("--rounds, --depth and --chunks must be >= 1, --calls >= 0")
    return args


def _leftovers(ids_before: dict[int, str | None]) -> list[str]:
    problems = []
    if pyprobes.registered_probes():
        problems.append(f"probes still registered: {pyprobes.registered_probes()}")
    for tid in range(6):
        now = MON.get_tool(tid)
        if now != ids_before[tid]:
            problems.append(f"tool id {tid} is held by {now!r} (was {ids_before[tid]!r})")
    return problems


# --- several cores side by side ---------------------------------------------------------------

#: The goals of issue 6 for the C core (ratio rows, per-round medians).
GOALS = {
    "kprobe/floor-k": 1.0,
    "kretprobe/floor-r": 1.2,
    "kretprobe/kprobe": 1.5,
    "kretprobe-h/floor-r1": 1.2,
    "kretprobe-h/kprobe": 1.5,
}
CORE_ORDER = {"python": 0, "c": 1}


def combine(paths: Sequence[str]) -> str:
    """One Markdown section: the runs' summaries side by side, one column pair per core."""
    runs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    runs.sort(key=lambda r: CORE_ORDER.get(r["core"], 9))
    first = runs[0]
    labels = list(first["summary"])
    out = [f"## CPython {first['python']}: cores side by side", ""]
    for r in runs:
        out.append(
            f"- core `{r['core']}`: {r['date']}, {r['rounds']} rounds (seed {r['seed']}),"
            f" took {r['seconds']} s; command: `{r['command']}`"
        )
    out.append("")
    head = ["measure"]
    for r in runs:
        head += [f"{r['core']}: median", f"{r['core']}: IQR"]
    head += ["goal (c core)", "what (ns per call unless x)"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|---|" + "---:|---:|" * len(runs) + "---|---|")
    for label in labels:
        row = [label]
        unit = first["summary"][label]["unit"]
        for r in runs:
            st = r["summary"].get(label)
            if st is None:
                row += ["-", "-"]
                continue
            row += [_fmt(st["median"], unit), f"{_fmt(st['q1'], unit)} .. {_fmt(st['q3'], unit)}"]
        goal = ""
        if label in GOALS:
            c = next((r for r in runs if r["core"] == "c"), None)
            if c is not None and label in c["summary"]:
                met = c["summary"][label]["median"] <= GOALS[label]
                goal = f"<= {GOALS[label]:.1f}x: {'met' if met else 'MISSED'}"
            else:
                goal = f"<= {GOALS[label]:.1f}x"
        row += [goal, first["summary"][label]["what"]]
        out.append("| " + " | ".join(row) + " |")
    out += ["", ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.combine:
        text = combine(args.combine)
        if args.markdown:
            Path(args.markdown).write_text(text, encoding="utf-8")
        else:
            print(text)
        return 0
    ids_before = {tid: MON.get_tool(tid) for tid in range(6)}
    started = time.perf_counter()
    cs = build_contenders(args.depth)
    warm_iters = 200
    try:
        calibrate(cs, args.calls, args.target_ms, warm_iters)
        measure(cs, args.rounds, args.seed, warm_iters, args.chunks)
    finally:
        for c in cs:  # idempotent: nothing is attached unless a run was interrupted
            c.detach()
    seconds = time.perf_counter() - started
    leftovers = _leftovers(ids_before)
    if leftovers:
        print("error: " + "; ".join(leftovers), file=sys.stderr)
        return 1

    meta = facts(args, cs, seconds)
    rows = summarise(cs, args.depth)
    print(render_text(meta, rows))
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(meta, rows), encoding="utf-8")
    if args.json:
        raw = {
            **meta,
            "ns_per_call": {c.name: c.samples for c in cs},
            "summary": {r.label: {"unit": r.unit, "what": r.what, **vars(r.stat)} for r in rows},
        }
        Path(args.json).write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
