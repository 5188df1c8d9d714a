"""The C core against the Python core: the same random sequences of register, unregister,
enable, disable, the global switch, handler changes, calls, raises, recursion and generators,
run once on each core in this process; every handler call (with what its context showed) and
every counter must be the same.

The registry's core is swapped between runs, when nothing is registered and the tool id is
free (the only time that is safe).
"""

from __future__ import annotations

import dis
import gc
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import pyprobes
from pyprobes import Jprobe, Kprobe, Kretprobe
from pyprobes.engine import core, pycore, registry

pytestmark = pytest.mark.skipif(
    not core.c_core_available(), reason="the C core (pyprobes._speedups) is not built"
)

# --- the probed code ------------------------------------------------------------------------


def plain(a: int, b: int = 2) -> int:
    c = a * b  # PLAIN-BODY
    return c + 1


def raiser(x: int) -> int:
    if x % 3 == 0:
        raise ValueError(x)
    return x  # RAISER-RET


def loop(n: int) -> int:
    t = 0
    for i in range(n):
        t += i  # LOOP-BODY
    return t


def rec(n: int) -> int:
    return 0 if n <= 0 else n + rec(n - 1)


def gen(n: int) -> Iterator[int]:
    for i in range(n):  # noqa: UP028 - the yield's own line is probed
        yield i  # GEN-YIELD
    return


def caller(x: int) -> int:
    try:
        return plain(x) + raiser(x)
    except ValueError:
        return -1


TARGETS: dict[str, Callable[..., Any]] = {
    "plain": plain,
    "raiser": raiser,
    "loop": loop,
    "rec": rec,
    "gen": gen,
    "caller": caller,
}


def line_of(func: Callable[..., Any], tag: str) -> int:
    import inspect

    lines, start = inspect.getsourcelines(func)
    return start + next(i for i, text in enumerate(lines) if tag in text)


LINES = {
    "plain": line_of(plain, "PLAIN-BODY"),
    "raiser": line_of(raiser, "RAISER-RET"),
    "loop": line_of(loop, "LOOP-BODY"),
    "gen": line_of(gen, "GEN-YIELD"),
}
OFFSETS = {
    "plain": next(i.offset for i in dis.get_instructions(plain) if i.opname == "BINARY_OP"),
    "loop": next(i.offset for i in dis.get_instructions(loop) if i.opname == "BINARY_OP"),
}


# --- what handlers record ---------------------------------------------------------------------


def _show(v: object) -> object:
    if isinstance(v, BaseException):
        return f"{type(v).__name__}{v.args!r}"
    if isinstance(v, dict):
        return {k: _show(x) for k, x in v.items()}
    if isinstance(v, int | str | tuple | type(None)):
        return v
    return type(v).__name__


class Run:
    """One run of a sequence on one core: the probes it made and everything they saw."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.probes: list[tuple[str, Any]] = []  # (label, probe)
        self.gens: list[Any] = []

    # handler factories: each records what a handler would look at, then maybe raises
    def pre(self, label: str, raises: bool) -> Callable[..., None]:
        def h(p: Any, ctx: Any) -> None:
            f = ctx.frame
            self.log.append(
                (
                    label,
                    "pre",
                    ctx.offset if "line" not in label else None,
                    ctx.lineno,
                    _show(ctx.args),
                    f is not None and f.f_code is ctx.code,
                    p.nhit,
                )
            )
            if raises and p.nhit % 2:
                raise RuntimeError(label)

        return h

    def post(self, label: str) -> Callable[..., None]:
        def h(p: Any, ctx: Any, flags: int) -> None:
            f = ctx.frame
            self.log.append((label, "post", flags, f is not None and f.f_code is ctx.code))

        return h

    def entry(self, label: str, veto: bool, raises: bool) -> Callable[..., object]:
        def h(ri: Any, ctx: Any) -> object:
            args = ctx.args
            ri.data["args"] = _show(args)
            self.log.append((label, "entry", _show(args), dict(ri.data) == {"args": _show(args)}))
            first = next(iter(args.values()), 0)
            if raises and isinstance(first, int) and first % 4 == 1:
                raise KeyError(label)
            return veto and isinstance(first, int) and first % 2 == 0

        return h

    def ret(self, label: str, raises: bool) -> Callable[..., None]:
        def h(ri: Any, ctx: Any) -> None:
            self.log.append(
                (
                    label,
                    "ret",
                    _show(ri.data),
                    _show(ctx.retval),
                    _show(ctx.exception),
                    0 < ri.entry_time_ns <= ctx.time_ns,
                    ri.rp.nhit,
                )
            )
            if raises:
                raise ValueError(label)

        return h

    def mirror(self, label: str) -> Callable[..., None]:
        def h(*args: Any, **kw: Any) -> None:
            self.log.append((label, "jprobe", _show(args), _show(kw)))

        return h

    def fault(self, label: str, handled: bool) -> Callable[..., bool]:
        def h(p: Any, ctx: Any, exc: BaseException) -> bool:
            self.log.append((label, "fault", _show(exc)))
            return handled

        return h


# --- sequences --------------------------------------------------------------------------------


def make_probe(run: Run, spec: dict[str, Any], label: str) -> Any:
    kind, target = spec["kind"], spec["target"]
    func = TARGETS[target]
    fh = run.fault(label, spec["handled"]) if spec["fault"] else None
    if kind == "j":
        return Jprobe(entry=run.mirror(label), addr=func)
    if kind == "r":
        return Kretprobe(
            addr=func,
            handler=run.ret(label, spec["raises"]),
            entry_handler=run.entry(label, spec["veto"], spec["raises"]) if spec["eh"] else None,
            maxactive=spec["maxactive"],
            fault_handler=fh,
            disabled=spec["disabled"],
        )
    where = spec["where"]
    kw: dict[str, Any] = {}
    if where == "line":
        kw["line"] = LINES[target]
    elif where == "offset":
        kw["offset"] = OFFSETS[target]
    return Kprobe(
        addr=func,
        pre_handler=run.pre(label + "/" + where, spec["raises"]),
        post_handler=run.post(label) if spec["post"] else None,
        fault_handler=fh,
        disabled=spec["disabled"],
        **kw,
    )


def random_spec(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice("kkkjrrr")
    spec: dict[str, Any] = {
        "kind": kind,
        "raises": rng.random() < 0.25,
        "fault": rng.random() < 0.5,
        "handled": rng.random() < 0.5,
        "disabled": rng.random() < 0.15,
        "post": rng.random() < 0.4,
        "veto": rng.random() < 0.3,
        "eh": rng.random() < 0.8,
        "maxactive": rng.choice([1, 2, 3, 0]),
    }
    if kind == "j":
        spec["target"] = rng.choice(["plain", "rec", "raiser"])
    elif kind == "r":
        spec["target"] = rng.choice(list(TARGETS))
    else:
        where = rng.choice(["entry", "entry", "line", "offset"])
        pool = {"entry": list(TARGETS), "line": list(LINES), "offset": list(OFFSETS)}[where]
        spec["where"] = where
        spec["target"] = rng.choice(pool)
    return spec


def random_ops(rng: random.Random, n: int) -> list[tuple[Any, ...]]:
    ops: list[tuple[Any, ...]] = []
    nprobes = 0
    for _ in range(n):
        r = rng.random()
        if r < 0.22 or nprobes == 0:
            ops.append(("register", random_spec(rng)))
            nprobes += 1
        elif r < 0.30:
            ops.append(("unregister", rng.randrange(nprobes)))
        elif r < 0.38:
            ops.append(("disable", rng.randrange(nprobes)))
        elif r < 0.46:
            ops.append(("enable", rng.randrange(nprobes)))
        elif r < 0.50:
            ops.append(("switch", rng.random() < 0.6))
        elif r < 0.55:
            ops.append(("rehandle", rng.randrange(nprobes), rng.random() < 0.3, rng.random() < 0.5))
        elif r < 0.80:
            target = rng.choice(["plain", "raiser", "loop", "rec", "caller"])
            ops.append(("call", target, rng.randrange(0, 6)))
        else:
            ops.append(("gen", rng.choice(["start", "next", "next", "close", "drop", "finish"])))
    return ops


def apply(run: Run, op: tuple[Any, ...], rng: random.Random) -> None:
    what = op[0]
    if what == "register":
        label = f"p{len(run.probes)}"
        p = make_probe(run, op[1], label)
        run.probes.append((label, p))
        try:
            {
                "k": pyprobes.register_kprobe,
                "j": pyprobes.register_jprobe,
                "r": pyprobes.register_kretprobe,
            }[p.kind](p)
            run.log.append((label, "registered"))
        except pyprobes.ProbeError as exc:
            run.log.append((label, "refused", type(exc).__name__))
    elif what in ("unregister", "disable", "enable"):
        label, p = run.probes[op[1]]
        try:
            {
                "unregister": registry.unregister,
                "disable": pyprobes.disable_kprobe,
                "enable": pyprobes.enable_kprobe,
            }[what](p)
            run.log.append((label, what))
        except pyprobes.ProbeError as exc:
            run.log.append((label, what, "refused", type(exc).__name__))
    elif what == "switch":
        pyprobes.set_enabled(op[1])
    elif what == "rehandle":
        label, p = run.probes[op[1]]
        to_none, via_dict = op[2], op[3]
        new: dict[str, Any] = {}
        if isinstance(p, Kretprobe):
            new["handler"] = None if to_none else run.ret(label + "'", False)
        elif isinstance(p, Kprobe):
            new["pre_handler"] = None if to_none else run.pre(label + "'", False)
            new["post_handler"] = None if to_none else run.post(label + "'")
        for name, value in new.items():
            if via_dict:
                vars(p)[name] = value  # a direct __dict__ write: the C core must see it too
            else:
                setattr(p, name, value)
        run.log.append((label, "rehandled", to_none))
    elif what == "call":
        func = TARGETS[op[1]]
        try:
            result: object = func(op[2])
        except ValueError as exc:
            result = _show(exc)
        run.log.append(("call", op[1], op[2], result))
    elif what == "gen":
        action = op[1]
        if action == "start" or not run.gens:
            g = gen(3)
            run.gens.append(g)
            run.log.append(("gen", "start", next(g, "done")))
            return
        g = run.gens[-1]
        if action == "next":
            run.log.append(("gen", "next", next(g, "done")))
        elif action == "close":
            g.close()
            run.log.append(("gen", "close"))
        elif action == "finish":
            run.log.append(("gen", "finish", list(g)))
        else:
            run.gens.pop()
            del g
            run.log.append(("gen", "drop"))
        # Pools are reclaimed here, deterministically (a full pool otherwise reclaims only
        # when its throttle allows, which depends on the clock).
        run.log.append(("nactive", tuple(nactive_all(run))))


def nactive_all(run: Run) -> list[object]:
    return [p.nactive if isinstance(p, Kretprobe) else None for _, p in run.probes]


def counters(run: Run) -> list[tuple[str, int, int, int]]:
    return [(label, p.nhit, p.nmissed, p.nfault) for label, p in run.probes]


def run_sequence(core_module: Any, ops: list[tuple[Any, ...]], seed: int) -> Run:
    assert not registry.registered_probes() and registry.tool_id() is None
    registry.use_core(core_module.NAME)
    assert pyprobes.core_name() == core_module.NAME
    run = Run()
    rng = random.Random(seed)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for op in ops:
            apply(run, op, rng)
            run.log.append(("counters", tuple(counters(run))))
        run.gens.clear()
        gc.collect()
        run.log.append(("end", tuple(nactive_all(run)), tuple(counters(run))))
    finally:
        for _, p in run.probes:
            registry.unregister(p)
        pyprobes.set_enabled(True)
        if gc_was:
            gc.enable()
    return run


@pytest.fixture
def both_cores() -> Iterator[tuple[Any, Any]]:
    from pyprobes.engine import ccore

    original = registry.core_name()
    try:
        yield pycore, ccore
    finally:
        assert not registry.registered_probes() and registry.tool_id() is None
        registry.use_core(original)


@pytest.mark.parametrize("seed", range(40))
def test_same_sequence_same_calls_same_counters(
    seed: int, both_cores: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="pyprobes")  # faults are expected here
    rng = random.Random(seed)
    ops = random_ops(rng, 60)
    py_core, c_core = both_cores
    ran = {m.NAME: run_sequence(m, ops, seed) for m in (py_core, c_core)}
    py, c = ran["python"], ran["c"]
    for i, (a, b) in enumerate(zip(py.log, c.log, strict=False)):
        assert a == b, f"seed {seed}: first difference at log entry {i}: python {a!r}, c {b!r}"
    assert len(py.log) == len(c.log)
    assert counters(py) == counters(c)


def test_sequences_do_exercise_everything(both_cores: tuple[Any, Any]) -> None:
    """The random sequences reach every kind of event (a guard against a vacuous test)."""
    kinds: set[str] = set()
    for seed in range(40):
        ops = random_ops(random.Random(seed), 60)
        run = run_sequence(both_cores[1], ops, seed)
        kinds |= {e[1] for e in run.log if isinstance(e[1], str)}
    for needed in ("pre", "post", "entry", "ret", "jprobe", "fault", "rehandled", "disable"):
        assert needed in kinds, needed
