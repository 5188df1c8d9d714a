"""The C core's own edges: its context and instance objects behave like pycore's after the
handler returned, its callbacks refuse bad calls, its spare context survives being found by
the garbage collector, and its counters and handler attributes stay plain attributes."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import pyprobes
from pyprobes import Kprobe, Kretprobe
from pyprobes.engine import core, registry

pytestmark = pytest.mark.skipif(
    not core.c_core_available(), reason="the C core (pyprobes._speedups) is not built"
)


@pytest.fixture(params=["python", "c"])
def on_core(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test on each core (swapped in while nothing is registered)."""
    original = registry.use_core(request.param)
    try:
        yield request.param
    finally:
        registry.use_core(original)


def target(a: int, b: int = 1) -> int:
    return a + b


def test_a_kept_context_is_detached_after_the_handler(on_core: str) -> None:
    kept: list[Any] = []

    def pre(p: Any, ctx: Any) -> None:
        kept.append(ctx)
        if len(kept) == 2:
            ctx.args  # read during the handler: kept (and so is the frame it needed)

    p = Kprobe(addr=target, pre_handler=pre)
    pyprobes.register_kprobe(p)
    try:
        target(2)
        target(3)
    finally:
        pyprobes.unregister_kprobe(p)
    c1, c2 = kept
    assert c1 is not c2  # a context someone kept is never reused
    assert c1.frame is None and c1.args == {}  # not read during the handler: gone
    assert c2.args == {"a": 3, "b": 1}
    assert c2.frame is not None and c2.frame.f_code is target.__code__
    assert c1.code is target.__code__ and c1.offset == 0
    assert c1.lineno == target.__code__.co_firstlineno  # from the code object, no frame
    assert repr(c1) == f"<ProbeContext target offset=0 line={target.__code__.co_firstlineno}>"
    assert c1.retval is None and c1.exception is None
    assert isinstance(c1, pyprobes.ProbeContext)


def test_return_context_fields_and_instance(on_core: str) -> None:
    seen: list[Any] = []

    def handler(ri: Any, ctx: Any) -> None:
        seen.append(
            (
                ctx.retval,
                pyprobes.regs_return_value(ctx),
                ctx.exception,
                ctx.frame is not None and ctx.frame.f_code is target.__code__,
                ctx.offset > 0,
                dict(ri.data),
                ri.rp is rp,
                isinstance(ri, pyprobes.KretprobeInstance),
                repr(ri).startswith(f"<KretprobeInstance of {rp!r} thread="),
            )
        )
        ctx.retval = "changed"  # a handler may write the context's fields, as in pycore
        ctx.exception = KeyError()
        kept.append(ctx)

    kept: list[Any] = []

    rp = Kretprobe(addr=target, handler=handler, entry_handler=lambda ri, ctx: ri.data.update(x=1))
    pyprobes.register_kretprobe(rp)
    try:
        assert target(1) == 2  # the program's own return value is untouched
    finally:
        pyprobes.unregister_kretprobe(rp)
    assert seen == [(2, 2, None, True, True, {"x": 1}, True, True, True)]
    # a kept return context holds its frame, as pycore's does (it was never read above on
    # purpose: the C core resolves it lazily)
    [ctx] = kept
    assert ctx.retval == "changed" and isinstance(ctx.exception, KeyError)
    assert ctx.frame is not None and ctx.frame.f_code is target.__code__


def test_kept_return_context_without_reading_the_frame(on_core: str) -> None:
    kept: list[Any] = []
    rp = Kretprobe(addr=target, handler=lambda ri, ctx: kept.append(ctx))
    pyprobes.register_kretprobe(rp)
    try:
        target(1)
        target(2)  # same stack depth: a stale frame reference would point here
    finally:
        pyprobes.unregister_kretprobe(rp)
    assert [c.frame.f_locals["a"] for c in kept] == [1, 2]
    assert [c.retval for c in kept] == [2, 3]


def test_counters_and_handlers_are_plain_attributes(on_core: str) -> None:
    p = Kprobe(addr=target, pre_handler=None)
    pyprobes.register_kprobe(p)
    try:
        target(1)
        assert p.nhit == 1
        p.pre_handler = lambda p, ctx: calls.append(1)
        calls: list[int] = []
        target(1)
        vars(p)["pre_handler"] = None  # a direct __dict__ write is seen too
        target(1)
        assert calls == [1]
        assert (p.nhit, p.nmissed, p.nfault) == (3, 0, 0)
        assert isinstance(p.nhit, int)
    finally:
        pyprobes.unregister_kprobe(p)


@pytest.mark.parametrize(
    "make, attr, value",
    [
        (lambda: Kprobe(addr=target), "pre_handler", lambda seen: lambda p, ctx: seen.append(1)),
        (
            lambda: Kprobe(addr=target, post_handler=lambda p, ctx, flags: None),
            "post_handler",
            lambda seen: lambda p, ctx, flags: seen.append(1),
        ),
        (lambda: Kretprobe(addr=target), "handler", lambda seen: lambda ri, ctx: seen.append(1)),
        (
            lambda: Kretprobe(addr=target),
            "entry_handler",
            lambda seen: lambda ri, ctx: seen.append(1),
        ),
        (
            lambda: pyprobes.Jprobe(entry=lambda a, b=1: None, addr=target),
            "entry",
            lambda seen: lambda a, b=1: seen.append(1),
        ),
    ],
)
def test_a_handler_stored_after_a_hit_runs_at_the_next_hit(
    on_core: str, make: Any, attr: str, value: Any
) -> None:
    """The C core caches handlers: an attribute store (not reported to dict watchers on 3.13)
    must reach that cache before the next hit, on every handler attribute of every kind."""
    p = make()
    seen: list[int] = []
    register = {
        "k": pyprobes.register_kprobe,
        "r": pyprobes.register_kretprobe,
        "j": pyprobes.register_jprobe,
    }[p.kind]
    register(p)
    try:
        target(1)
        setattr(p, attr, value(seen))
        target(1)
        assert seen == [1]
        delattr(p, attr)
        target(1)  # a handler deleted from the probe is a fault, not the old handler
        assert seen == [1] and p.nfault == 1
    finally:
        registry.unregister(p)


def test_spare_context_found_by_the_gc_is_not_reused() -> None:
    from pyprobes import _speedups

    original = registry.use_core("c")
    grabbed: list[Any] = []
    p = Kprobe(addr=target, pre_handler=lambda p, ctx: None)
    pyprobes.register_kprobe(p)
    try:
        target(1)  # leaves a spare context
        grabbed = [o for o in gc.get_objects() if type(o) is _speedups.ProbeContext]
        for _ in range(3):
            target(1)
        assert p.nhit == 4
        for o in grabbed:
            assert o.frame is None or o.frame is not None  # still a valid object
    finally:
        pyprobes.unregister_kprobe(p)
        registry.use_core(original)


def test_callbacks_refuse_bad_calls() -> None:
    from pyprobes import _speedups

    code = target.__code__
    with pytest.raises(TypeError, match="exactly 2"):
        _speedups.on_start(code)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="exactly 3"):
        _speedups.on_return(code, 0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _speedups.on_line(code, 1, x=2)  # type: ignore[call-arg]
    # a code object without a table: nothing happens (INSTRUCTION and LINE answer DISABLE)
    assert _speedups.on_start(code, 0) is None
    assert _speedups.on_instruction(code, 2) is sys.monitoring.DISABLE
    assert _speedups.on_return(code, 2, None) is None
    assert _speedups.on_unwind(code, 2, KeyError()) is None


def loses_its_return(tamper: bool) -> int:
    """Returns with PY_RETURN switched off behind the engine's back when ``tamper`` (standing
    for any end the engine does not see): its activation is left in the pool."""
    if tamper:
        tid = pyprobes.tool_id()
        assert tid is not None
        code = loses_its_return.__code__
        ev = sys.monitoring.get_local_events(tid, code)
        sys.monitoring.set_local_events(tid, code, ev & ~sys.monitoring.events.PY_RETURN)
    return 1


@pytest.mark.parametrize("maxactive", [1, 2])
def test_activations_whose_end_went_unseen_are_reclaimed(on_core: str, maxactive: int) -> None:
    rp = Kretprobe(addr=loses_its_return, maxactive=maxactive)
    pyprobes.register_kretprobe(rp)
    try:
        for _ in range(3):
            loses_its_return(True)
            pyprobes.disable_kprobe(rp)  # (republish: PY_RETURN back on)
            pyprobes.enable_kprobe(rp)
        loses_its_return(True)
        tid = pyprobes.tool_id()
        assert tid is not None
        code = loses_its_return.__code__
        sys.monitoring.set_local_events(
            tid, code, sys.monitoring.get_local_events(tid, code) | sys.monitoring.events.PY_RETURN
        )
        # one activation left behind; the next calls reuse or reclaim its instance
        for _ in range(5):
            assert loses_its_return(False) == 1
        assert rp.nmissed == 0
        assert rp.nactive == 0
    finally:
        pyprobes.unregister_kretprobe(rp)


def sleeps(seconds: float) -> None:
    if seconds:
        time.sleep(seconds)


@pytest.mark.parametrize("clock", ["tsc", "monotonic"])
def test_entry_time_is_perf_counter_time_on_either_entry_clock(clock: str) -> None:
    """ri.entry_time_ns lies between perf_counter_ns() read just before the call and in the
    return handler, on the TSC entry clock (converted when read) as on the system clock."""
    from pyprobes import _speedups
    from pyprobes.engine import ccore

    if clock == "tsc" and ccore.ENTRY_CLOCK != "tsc":
        pytest.skip("the TSC is not this machine's clock source (the system clock is tested)")
    original = registry.use_core("c")
    seen: list[tuple[int, int, int]] = []

    def handler(ri: Any, ctx: Any) -> None:
        seen.append((time.perf_counter_ns(), ri.entry_time_ns, ri.entry_time_ns))

    rp = Kretprobe(addr=sleeps, handler=handler)
    try:
        assert _speedups.set_entry_clock(clock) == clock
        pyprobes.register_kretprobe(rp)
        for seconds in [0.0] * 50 + [0.0005, 0.002, 0.02]:
            before = time.perf_counter_ns()
            sleeps(seconds)
            in_handler, entry, again = seen[-1]
            assert entry == again  # converted once
            # the conversion's error is a few ns: allow 1 us either side
            assert before - 1000 <= entry <= in_handler + 1000
            assert in_handler - entry >= seconds * 1e9 - 1000
    finally:
        pyprobes.unregister_kretprobe(rp)
        registry.use_core(original)
        _speedups.set_entry_clock(ccore.ENTRY_CLOCK)


def test_entry_clock_names() -> None:
    from pyprobes import _speedups
    from pyprobes.engine import ccore

    with pytest.raises(ValueError, match="'tsc' or 'monotonic'"):
        _speedups.set_entry_clock("rdtsc")
    assert ccore.ENTRY_CLOCK in ("tsc", "monotonic")
    assert _speedups.set_entry_clock(ccore.ENTRY_CLOCK) == ccore.ENTRY_CLOCK


IMPORTED_AGAIN = r"""
import importlib, sys
import pyprobes.engine.ccore  # configures the module (setup())
first = sys.modules["pyprobes._speedups"]
del sys.modules["pyprobes._speedups"]
again = importlib.import_module("pyprobes._speedups")
assert again is not first
print("names:", sorted(set(dir(first)) ^ set(dir(again))))
try:
    again.setup(None, None, None, None, None, {}, {}, set(), False)
except RuntimeError as e:
    print("setup:", e)
code = (lambda: None).__code__
again.set_site(code, again.make_site([], {}, {}, [], False, False, False))
print("one table:", first.nsites(), again.nsites())
first.set_site(code, None)
print("none:", again.nsites())
try:
    import _interpreters as interpreters
except ImportError:
    import _xxsubinterpreters as interpreters
try:
    failed = interpreters.run_string(interpreters.create(), "import pyprobes._speedups")
except Exception as e:  # (3.12 raises, later versions return what was raised)
    failed = e
print("isolated:", failed)
try:
    legacy = interpreters.create("legacy")  # 3.13+: a named config
except TypeError:
    legacy = interpreters.create(isolated=False)  # 3.12
print("legacy:", interpreters.run_string(legacy, "import pyprobes._speedups"))
"""


def test_imported_again_or_in_an_isolated_subinterpreter() -> None:
    """The core's statics are the process's: a module imported again shares the configuration
    (its setup() refuses; its tables are the same), an own-GIL subinterpreter refuses it, and a
    shared-GIL (legacy) one imports it: as the single-phase module behaved."""
    r = subprocess.run(
        [sys.executable, "-c", IMPORTED_AGAIN],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYPROBES_CORE": "c"},
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    # the same names, but for the types setup() made
    assert lines[0] == "names: ['KretprobeInstance', 'ProbeContext']"
    assert lines[1] == "setup: pyprobes._speedups.setup() was called already"
    assert lines[2:4] == ["one table: 1 1", "none: 0"]
    assert lines[4].startswith("isolated:")
    assert "does not support loading in subinterpreters" in lines[4]
    assert lines[5] == "legacy: None"  # a shared-GIL subinterpreter imports it
