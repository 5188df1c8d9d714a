"""Kretprobes on plain functions: return values, exceptions, threads, maxactive, entry vetoes,
recursion, unregister/disable in flight, mixing with kprobes and jprobes, faults, PY_UNWIND,
registration errors. Generators and coroutines: test_kretprobe_generators.py; fork:
test_kretprobe_fork.py."""

from __future__ import annotations

import dis
import os
import sys
import threading
import traceback
from collections.abc import Callable
from types import CodeType
from typing import Any

import pytest

import pyprobes
from pyprobes import (
    InvalidProbeError,
    Jprobe,
    Kprobe,
    Kretprobe,
    KretprobeInstance,
    ProbeContext,
    regs_return_value,
)

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import _kret_targets as targets
from _kret_targets import TIMEOUT, HeldThreads, registered, run_concurrently

# --- functions probed by address -------------------------------------------------------------


class Boom(Exception):
    pass


def traced(log: list[Any], x: int) -> int:
    log.append(("body", x))
    return 2 * x


def _raise(exc: BaseException) -> None:
    raise exc


def fails(exc: BaseException) -> None:
    _raise(exc)


def recovers() -> str:
    try:
        _raise(Boom("inner"))
    except Boom:
        return "recovered"
    return "unreachable"


def countdown(n: int, at_bottom: Callable[[], object]) -> int:
    """n + (n-1) + ... + 0, one recursion level per term; ``at_bottom`` runs at the deepest."""
    if n == 0:
        at_bottom()
        return 0
    return n + countdown(n - 1, at_bottom)


def mixed(a: int, b: int) -> int:
    c = a * b  # MIXED-BODY
    return c + 1


def for_errors(x: int) -> int:
    y = x + 1
    return y


def tri(n: int) -> int:
    return n * (n + 1) // 2


#: gh-142186: from 3.15 PY_UNWIND can be set per code object (before, global only).
LOCAL_UNWIND = sys.version_info >= (3, 15)


def unwind_on(*codes: CodeType) -> bool:
    """Whether our PY_UNWIND is on: globally before 3.15, else on any of ``codes``."""
    tid = pyprobes.tool_id()
    if tid is None:
        return False
    unwind = sys.monitoring.events.PY_UNWIND
    if sys.monitoring.get_events(tid) & unwind:
        assert not LOCAL_UNWIND, "3.15+: PY_UNWIND must be local to the probed code"
        return True
    return any(sys.monitoring.get_local_events(tid, c) & unwind for c in codes)


def tool_free() -> bool:
    return pyprobes.tool_id() is None and all(
        sys.monitoring.get_tool(t) != "pyprobes" for t in range(6)
    )


# --- basics -----------------------------------------------------------------------------------


def test_handler_runs_once_per_call_after_return_with_its_return_value() -> None:
    log: list[Any] = []
    rp: Kretprobe

    def entry(ri: KretprobeInstance, ctx: ProbeContext) -> None:
        log.append(("entry", dict(ri.data), ctx.args["x"]))
        ri.data["x"] = ctx.args["x"]
        ri.data["entry_tid"] = ri.thread_id

    def handler(ri: KretprobeInstance, ctx: ProbeContext) -> None:
        log.append(
            (
                "ret",
                ri.rp is rp,
                dict(ri.data),
                ctx.retval,
                regs_return_value(ctx),
                ctx.exception,
                threading.get_ident(),
                0 < ri.entry_time_ns <= ctx.time_ns,
            )
        )

    rp = Kretprobe(addr=traced, handler=handler, entry_handler=entry, maxactive=1)
    me = threading.get_ident()
    with registered(rp):
        assert [traced(log, x) for x in (1, 2, 3)] == [2, 4, 6]
        assert rp.nactive == 0
    # One pool instance served every call: its data was fresh ({}) at each entry, and each
    # handler ran after its body had finished.
    expected: list[Any] = []
    for x in (1, 2, 3):
        expected += [
            ("entry", {}, x),
            ("body", x),
            ("ret", True, {"x": x, "entry_tid": me}, 2 * x, 2 * x, None, me, True),
        ]
    assert log == expected
    assert (rp.nhit, rp.nmissed, rp.nfault) == (3, 0, 0)


def test_listed_with_kind_r_and_registered_as_a_batch() -> None:
    rp1 = Kretprobe(addr=traced)
    rp2 = Kretprobe(symbol_name="_kret_targets:Calc.mul")
    pyprobes.register_kretprobes([rp1, rp2])
    try:
        traced([], 1)
        assert targets.Calc(3).mul(4) == 12
        recs = pyprobes.list_probes()
        assert [r.kind for r in recs] == ["r", "r"]
        assert recs[1].symbol == "_kret_targets:Calc.mul"
        assert [(r.nhit, r.nmissed) for r in recs] == [(1, 0), (1, 0)]
        assert " r  " in pyprobes.format_probe_list()
    finally:
        pyprobes.unregister_kretprobes([rp1, rp2])
    assert pyprobes.registered_probes() == []
    assert tool_free()


def test_symbol_name_probe_on_a_method_sees_its_return_value() -> None:
    seen: list[Any] = []
    rp = Kretprobe(
        symbol_name="_kret_targets:Calc.mul",
        entry_handler=lambda ri, ctx: ri.data.update(x=ctx.args["x"]),
        handler=lambda ri, ctx: seen.append((ri.data["x"], ctx.retval)),
    )
    with registered(rp):
        calc = targets.Calc(5)
        assert [calc.mul(x) for x in range(4)] == [0, 5, 10, 15]
    assert seen == [(0, 0), (1, 5), (2, 10), (3, 15)]


def test_the_def_line_addresses_the_entry() -> None:
    seen: list[object] = []
    rp = Kretprobe(
        filename=targets.__file__,
        line=targets.add.__code__.co_firstlineno,
        handler=lambda ri, ctx: seen.append(ctx.retval),
    )
    with registered(rp):
        assert targets.add(2, 3) == 5
        assert pyprobes.list_probes()[0].symbol == "_kret_targets:add"
    assert seen == [5]


def test_exception_reaches_the_handler_and_propagates_unchanged() -> None:
    def run() -> tuple[BaseException, list[tuple[str, str, int | None]]]:
        exc = Boom("x")
        try:
            fails(exc)
        except Boom as got:
            assert got is exc
            tb = traceback.extract_tb(got.__traceback__)
            return got, [(fs.filename, fs.name, fs.lineno) for fs in tb]
        raise AssertionError("fails() did not raise")

    _, frames_without = run()
    seen: list[Any] = []
    rp = Kretprobe(addr=fails, handler=lambda ri, ctx: seen.append((ctx.exception, ctx.retval)))
    with registered(rp):
        got, frames_with = run()
        assert rp.nactive == 0
    assert frames_with == frames_without
    assert [name for _, name, _ in frames_with] == ["run", "fails", "_raise"]
    assert seen == [(got, None)]
    assert seen[0][0] is got


def test_exception_handled_inside_the_function_is_a_normal_return() -> None:
    seen: list[Any] = []
    rp = Kretprobe(addr=recovers, handler=lambda ri, ctx: seen.append((ctx.retval, ctx.exception)))
    with registered(rp):
        assert recovers() == "recovered"
    assert seen == [("recovered", None)]


@pytest.mark.parametrize("exc_type", [Boom, KeyError, SystemExit, GeneratorExit])
def test_any_exception_type_ends_the_activation(exc_type: type[BaseException]) -> None:
    seen: list[Any] = []
    rp = Kretprobe(addr=fails, handler=lambda ri, ctx: seen.append(ctx.exception), maxactive=1)
    with registered(rp):
        for _ in range(3):
            exc = exc_type("e")
            with pytest.raises(exc_type) as info:
                fails(exc)
            assert info.value is exc
            assert seen[-1] is exc
        assert rp.nactive == 0
    assert (rp.nhit, rp.nmissed) == (3, 0)


def test_handler_runs_in_the_thread_where_the_function_returned() -> None:
    seen: list[tuple[object, int, int, int]] = []
    rp = Kretprobe(
        symbol_name="_kret_targets:held",
        handler=lambda ri, ctx: seen.append(
            (ctx.retval, threading.get_ident(), ctx.thread_id, ri.thread_id)
        ),
    )
    with registered(rp):
        n = min(4, rp.maxactive)
        results, idents = run_concurrently(n)
    assert results == {i: i for i in range(n)}
    assert sorted(s[0] for s in seen) == list(range(n))  # type: ignore[type-var]
    for value, tid, ctx_tid, entry_tid in seen:
        assert tid == ctx_tid == entry_tid == idents[value]  # type: ignore[index]


# --- maxactive --------------------------------------------------------------------------------


@pytest.mark.parametrize("given", [0, -1, -50])
def test_maxactive_not_positive_resolves_to_the_kernel_default(given: int) -> None:
    rp = Kretprobe(addr=traced, maxactive=given)
    with registered(rp):
        assert rp.maxactive == max(10, 2 * (os.cpu_count() or 1))
        assert rp.maxactive == pyprobes.default_maxactive()
        assert rp.nactive == 0


def test_maxactive_positive_is_kept() -> None:
    rp = Kretprobe(addr=traced, maxactive=3)
    with registered(rp):
        assert rp.maxactive == 3


def test_threads_beyond_maxactive_are_missed_without_any_handler() -> None:
    entries: list[object] = []
    returns: list[object] = []
    rp = Kretprobe(
        symbol_name="_kret_targets:held",
        entry_handler=lambda ri, ctx: entries.append(ctx.args["value"]),
        handler=lambda ri, ctx: returns.append(ctx.retval),
    )  # default maxactive
    with registered(rp):
        m = rp.maxactive
        with HeldThreads(m + 3) as group:
            # Every thread is inside the function: maxactive of them hold an instance.
            assert rp.nactive == m
            assert (rp.nhit, rp.nmissed) == (m, 3)
            assert len(entries) == m
            assert returns == []
        assert not group.errors
        assert group.results == {i: i for i in range(m + 3)}  # missed calls run normally
        assert sorted(returns) == sorted(entries)  # type: ignore[type-var]
        assert rp.nactive == 0
        # The pool is whole again: a new run of maxactive concurrent calls is fully tracked.
        returns.clear()
        run_concurrently(m)
        assert len(returns) == m
        assert (rp.nhit, rp.nmissed) == (2 * m, 3)
        assert rp.nactive == 0


@pytest.mark.parametrize("maxactive", [1, 4, 0])
def test_recursion_deeper_than_maxactive(maxactive: int) -> None:
    entries: list[int] = []
    returns: list[tuple[int, object]] = []
    at_bottom: list[int] = []

    def entry(ri: KretprobeInstance, ctx: ProbeContext) -> None:
        ri.data["n"] = ctx.args["n"]
        entries.append(ctx.args["n"])  # type: ignore[arg-type]

    rp = Kretprobe(
        addr=countdown,
        entry_handler=entry,
        handler=lambda ri, ctx: returns.append((ri.data["n"], ctx.retval)),
        maxactive=maxactive,
    )
    with registered(rp):
        m = rp.maxactive
        depth = m + 2  # levels depth..0: m + 3 activations at once
        assert countdown(depth, lambda: at_bottom.append(rp.nactive)) == tri(depth)
        assert at_bottom == [m]
        assert rp.nactive == 0
        # The outermost m levels were tracked; the 3 deepest missed, entry_handler skipped.
        assert entries == list(range(depth, depth - m, -1))
        assert returns == [(n, tri(n)) for n in reversed(entries)]
        assert (rp.nhit, rp.nmissed) == (m, 3)
        # Nothing leaked: a run of exactly maxactive levels is fully tracked.
        entries.clear()
        returns.clear()
        assert countdown(m - 1, lambda: at_bottom.append(rp.nactive)) == tri(m - 1)
        assert at_bottom == [m, m]
        assert len(returns) == m
        assert (rp.nhit, rp.nmissed) == (2 * m, 3)


def test_recursion_each_level_sees_the_data_its_own_entry_stored() -> None:
    returns: list[tuple[int, object, int]] = []

    def entry(ri: KretprobeInstance, ctx: ProbeContext) -> None:
        assert not ri.data
        ri.data["n"] = ctx.args["n"]
        ri.data["token"] = object()
        ri.data["id"] = id(ri.data["token"])

    rp = Kretprobe(
        addr=countdown,
        entry_handler=entry,
        handler=lambda ri, ctx: returns.append(
            (ri.data["n"], ctx.retval, id(ri.data["token"]) == ri.data["id"])  # type: ignore[arg-type]
        ),
    )
    with registered(rp):
        depth = rp.maxactive - 1
        assert countdown(depth, lambda: None) == tri(depth)
        assert rp.nfault == 0
    assert returns == [(n, tri(n), True) for n in range(depth + 1)]


def test_entry_handler_truthy_vetoes_the_activation_and_takes_no_instance() -> None:
    entries: list[int] = []
    returns: list[tuple[int, object]] = []
    at_bottom: list[int] = []

    def entry(ri: KretprobeInstance, ctx: ProbeContext) -> object:
        n: int = ctx.args["n"]  # type: ignore[assignment]
        entries.append(n)
        ri.data["n"] = n
        return "skip me" if n % 2 else None

    rp = Kretprobe(
        addr=countdown,
        entry_handler=entry,
        handler=lambda ri, ctx: returns.append((ri.data["n"], ctx.retval)),
        maxactive=3,
    )
    with registered(rp):
        # Six levels at once, three vetoed: the other three fit the pool of three.
        assert countdown(5, lambda: at_bottom.append(rp.nactive)) == tri(5)
        assert rp.nactive == 0
    assert entries == [5, 4, 3, 2, 1, 0]
    assert at_bottom == [3]
    assert returns == [(0, 0), (2, tri(2)), (4, tri(4))]
    assert (rp.nhit, rp.nmissed, rp.nfault) == (3, 0, 0)


def test_counters_and_pool_stay_exact_under_contention() -> None:
    """Many threads calling at once, switching as often as the interpreter allows: every call
    is either tracked (one entry, one return handler) or missed, and no instance is lost."""
    entries: list[int] = []
    returns: list[tuple[object, object]] = []
    rp = Kretprobe(
        addr=traced,
        entry_handler=lambda ri, ctx: entries.append(ri.data.setdefault("x", ctx.args["x"])),
        handler=lambda ri, ctx: returns.append((ri.data["x"], ctx.retval)),
        maxactive=3,
    )
    n_threads, n_calls = 8, 500
    start = threading.Barrier(n_threads, timeout=TIMEOUT)
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            start.wait()
            for i in range(n_calls):
                x = t * n_calls + i
                assert traced([], x) == 2 * x
        except BaseException as exc:
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with registered(rp):
            threads = [threading.Thread(target=run, args=(t,)) for t in range(n_threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(TIMEOUT)
            assert not errors, errors
            assert rp.nhit + rp.nmissed == n_threads * n_calls
            assert len(entries) == len(returns) == rp.nhit
            assert sorted(returns) == sorted((x, 2 * x) for x in entries)  # type: ignore[type-var]
            assert rp.nactive == 0  # every instance is back in the pool
            assert rp.nfault == 0
    finally:
        sys.setswitchinterval(interval)


# --- unregister, disable ----------------------------------------------------------------------


def test_unregister_while_calls_in_flight() -> None:
    returns: list[object] = []
    rp = Kretprobe(
        symbol_name="_kret_targets:held", handler=lambda ri, ctx: returns.append(ctx.retval)
    )
    pyprobes.register_kretprobe(rp)
    try:
        m = rp.maxactive
        with HeldThreads(3) as group:
            assert rp.nactive == 3
            pyprobes.unregister_kretprobe(rp)
            assert rp.nactive == 0
            assert tool_free()
        assert not group.errors
        assert group.results == {0: 0, 1: 1, 2: 2}  # they returned normally
        assert returns == []  # without running the handler
    finally:
        pyprobes.unregister_kretprobe(rp)
    # Registered again, the pool is whole.
    with registered(rp):
        run_concurrently(m)
        assert (len(returns), rp.nhit, rp.nmissed, rp.nactive) == (m, m, 0, 0)


def test_unregister_from_inside_the_probed_recursion() -> None:
    returns: list[object] = []
    rp = Kretprobe(addr=countdown, handler=lambda ri, ctx: returns.append(ctx.retval))
    pyprobes.register_kretprobe(rp)
    try:
        assert countdown(4, lambda: pyprobes.unregister_kretprobe(rp)) == tri(4)
        assert returns == []
        assert rp.nactive == 0
        assert not rp.registered
    finally:
        pyprobes.unregister_kretprobe(rp)
    with registered(rp):
        assert countdown(4, lambda: None) == tri(4)
    assert returns == [tri(n) for n in range(5)]


def test_disable_ends_tracking_of_activations_in_flight() -> None:
    returns: list[object] = []
    rp = Kretprobe(
        symbol_name="_kret_targets:held", handler=lambda ri, ctx: returns.append(ctx.retval)
    )
    with registered(rp):
        m = rp.maxactive
        with HeldThreads(3) as group:
            assert rp.nactive == 3
            pyprobes.disable_kretprobe(rp)
            assert rp.disabled
            assert rp.nactive == 0
        assert group.results == {0: 0, 1: 1, 2: 2}
        assert returns == []
        run_concurrently(2)  # disabled: not tracked at all
        assert (returns, rp.nhit) == ([], 3)
        pyprobes.enable_kretprobe(rp)
        run_concurrently(m)
        assert (len(returns), rp.nhit, rp.nmissed, rp.nactive) == (m, 3 + m, 0, 0)


def test_registered_disabled_tracks_nothing_until_enabled() -> None:
    returns: list[object] = []
    rp = Kretprobe(addr=traced, handler=lambda ri, ctx: returns.append(ctx.retval), disabled=True)
    with registered(rp):
        assert pyprobes.list_probes()[0].flags == ("DISABLED",)
        traced([], 1)
        assert (returns, rp.nhit) == ([], 0)
        pyprobes.enable_kretprobe(rp)
        traced([], 2)
        assert (returns, rp.nhit) == ([4], 1)


def test_global_switch_off_ends_tracking_in_flight_and_back_on_restores() -> None:
    returns: list[object] = []
    rp = Kretprobe(
        symbol_name="_kret_targets:held", handler=lambda ri, ctx: returns.append(ctx.retval)
    )
    with registered(rp):
        try:
            with HeldThreads(2) as group:
                assert rp.nactive == 2
                pyprobes.set_enabled(False)
                assert rp.nactive == 0
                assert not unwind_on(targets.held.__code__)
            assert group.results == {0: 0, 1: 1}
            assert returns == []
        finally:
            pyprobes.set_enabled(True)
        assert not rp.disabled
        assert unwind_on(targets.held.__code__)
        run_concurrently(rp.maxactive)
        assert (len(returns), rp.nmissed, rp.nactive) == (rp.maxactive, 0, 0)


# --- mixing with kprobes and jprobes ------------------------------------------------------------


def test_mix_of_kprobes_jprobe_and_kretprobes_on_one_function() -> None:
    log: list[Any] = []
    body_line = mixed.__code__.co_firstlineno + 1
    kp = Kprobe(
        addr=mixed,
        pre_handler=lambda p, ctx: log.append(("k-pre", ctx.args["a"])),
        post_handler=lambda p, ctx, flags: log.append(("k-post", flags)),
    )
    jp = Jprobe(entry=lambda a, b: log.append(("j", a, b)), addr=mixed)
    rp1 = Kretprobe(
        addr=mixed,
        entry_handler=lambda ri, ctx: ri.data.update(who="rp1"),
        handler=lambda ri, ctx: log.append(("r1", ri.data["who"], ctx.retval)),
    )
    kl = Kprobe(addr=mixed, line=body_line, pre_handler=lambda p, ctx: log.append("line"))
    rp2 = Kretprobe(
        addr=mixed,
        entry_handler=lambda ri, ctx: ri.data.update(who="rp2"),
        handler=lambda ri, ctx: log.append(("r2", ri.data["who"], ctx.retval)),
    )
    with registered(kp, jp, rp1, kl, rp2):
        assert mixed(3, 4) == 13
        assert log[:2] == [("k-pre", 3), ("j", 3, 4)]
        assert sorted(map(str, log)) == sorted(
            map(
                str,
                [
                    ("k-pre", 3),
                    ("j", 3, 4),
                    ("k-post", 0),
                    "line",
                    ("r1", "rp1", 13),
                    ("r2", "rp2", 13),
                ],
            )
        )
        assert log[-2:] == [("r1", "rp1", 13), ("r2", "rp2", 13)]
        # Take the others away one by one: the return probes keep pairing correctly.
        for p in (kp, jp, kl):
            pyprobes.engine.registry.unregister(p)
            log.clear()
            assert mixed(2, 2) == 5
            assert log[-2:] == [("r1", "rp1", 5), ("r2", "rp2", 5)]
        assert log == [("r1", "rp1", 5), ("r2", "rp2", 5)]
        assert (rp1.nactive, rp2.nactive) == (0, 0)
        assert (rp1.nhit, rp2.nhit, rp1.nfault, rp2.nfault) == (4, 4, 0, 0)


@pytest.mark.parametrize("kret_first", [True, False])
def test_kprobe_and_kretprobe_at_entry_fire_in_registration_order(kret_first: bool) -> None:
    log: list[str] = []
    kp = Kprobe(addr=traced, pre_handler=lambda p, ctx: log.append("kprobe"))
    rp = Kretprobe(
        addr=traced,
        entry_handler=lambda ri, ctx: log.append("kretprobe-entry"),
        handler=lambda ri, ctx: log.append("kretprobe-return"),
    )
    order = (rp, kp) if kret_first else (kp, rp)
    with registered(*order):
        traced([], 1)
    first = ["kretprobe-entry", "kprobe"] if kret_first else ["kprobe", "kretprobe-entry"]
    assert log == [*first, "kretprobe-return"]


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fault_handler", ["handles", "declines", "raises", None])
def test_raising_return_handler_goes_to_the_fault_path(fault_handler: str | None) -> None:
    faults: list[tuple[object, BaseException]] = []

    def fh(p: pyprobes.Probe, ctx: ProbeContext, exc: BaseException) -> bool:
        faults.append((p, exc))
        if fault_handler == "raises":
            raise RuntimeError("fault handler bug")
        return fault_handler == "handles"

    def handler(ri: KretprobeInstance, ctx: ProbeContext) -> None:
        raise ValueError(f"handler bug {ctx.retval}")

    rp = Kretprobe(addr=traced, handler=handler, fault_handler=fh if fault_handler else None)
    rp_exc = Kretprobe(addr=fails, handler=handler, fault_handler=fh if fault_handler else None)
    with registered(rp, rp_exc):
        assert traced([], 5) == 10
        boom = Boom()
        with pytest.raises(Boom) as info:
            fails(boom)
        assert info.value is boom  # the program sees its own exception, not the handler's
        assert (rp.nfault, rp_exc.nfault) == (1, 1)
        assert (rp.nactive, rp_exc.nactive) == (0, 0)
        assert traced([], 6) == 12
        assert rp.nfault == 2
    if fault_handler:
        assert [p for p, _ in faults] == [rp, rp_exc, rp]
        assert [str(e) for _, e in faults] == [
            "handler bug 10",
            "handler bug None",
            "handler bug 12",
        ]


def test_raising_entry_handler_goes_to_the_fault_path() -> None:
    faults: list[tuple[object, BaseException]] = []

    def entry(ri: KretprobeInstance, ctx: ProbeContext) -> None:
        raise KeyError("entry bug")

    rp = Kretprobe(
        addr=traced,
        entry_handler=entry,
        fault_handler=lambda p, ctx, exc: faults.append((p, exc)) or True,
        maxactive=2,
    )
    with registered(rp):
        for x in range(5):
            assert traced([], x) == 2 * x
        assert rp.nfault == 5
        assert rp.nactive == 0
    assert [p for p, _ in faults] == [rp] * 5
    assert all(isinstance(e, KeyError) for _, e in faults)


# --- PY_UNWIND is global: on only while a return probe is armed ---------------------------------


RP_CODE = targets.add.__code__


def test_py_unwind_is_on_only_while_a_kretprobe_is_registered_and_enabled() -> None:
    kp = Kprobe(addr=traced, pre_handler=lambda p, ctx: None)
    kl = Kprobe(addr=mixed, line=mixed.__code__.co_firstlineno + 1, pre_handler=lambda p, c: None)
    rp = Kretprobe(addr=targets.add)
    try:
        pyprobes.register_kprobe(kp)
        pyprobes.register_kprobe(kl)
        tid = pyprobes.tool_id()
        assert tid is not None
        assert not unwind_on(RP_CODE)  # kprobes without post handlers need no PY_UNWIND
        pyprobes.register_kretprobe(rp)
        assert unwind_on(RP_CODE)
        pyprobes.disable_kretprobe(rp)
        assert not unwind_on(RP_CODE)
        pyprobes.enable_kretprobe(rp)
        assert unwind_on(RP_CODE)
        pyprobes.unregister_kretprobe(rp)
        assert not unwind_on(RP_CODE)
        assert pyprobes.tool_id() == tid
        pyprobes.register_kretprobe(rp)
        assert unwind_on(RP_CODE)
        pyprobes.unregister_kprobes([kp, kl])
        assert unwind_on(RP_CODE)
        pyprobes.unregister_kretprobe(rp)
        assert tool_free()
        assert sys.monitoring.get_tool(tid) is None
    finally:
        pyprobes.unregister_kprobes([kp, kl])
        pyprobes.unregister_kretprobe(rp)


def test_registered_disabled_kretprobe_does_not_turn_on_py_unwind() -> None:
    rp = Kretprobe(addr=traced, disabled=True)
    with registered(rp):
        assert pyprobes.tool_id() is not None
        assert not unwind_on(traced.__code__)
        pyprobes.enable_kretprobe(rp)
        assert unwind_on(traced.__code__)


@pytest.mark.skipif(not LOCAL_UNWIND, reason="PY_UNWIND is a global event before 3.15 (gh-142186)")
def test_on_315_py_unwind_is_local_to_the_probed_code() -> None:
    rp = Kretprobe(addr=targets.add)
    with registered(rp):
        tid = pyprobes.tool_id()
        assert tid is not None
        assert sys.monitoring.get_events(tid) == 0  # nothing global: unprobed code pays nothing
        assert sys.monitoring.get_local_events(tid, RP_CODE) & sys.monitoring.events.PY_UNWIND
        assert sys.monitoring.get_local_events(tid, traced.__code__) == 0
        with pytest.raises(TypeError):
            targets.add(1, None)  # type: ignore[arg-type]
        assert rp.nhit == 1 and rp.nactive == 0  # the unwind ended the activation


# --- registration errors ------------------------------------------------------------------------


def _first_body_offset() -> int:
    return next(i.offset for i in dis.get_instructions(for_errors) if i.opname != "RESUME")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"addr": for_errors, "offset": "body"}, id="offset-body"),
        pytest.param({"addr": for_errors, "offset": 1}, id="offset-not-boundary"),
        pytest.param({"addr": for_errors, "offset": 10_000}, id="offset-past-end"),
        pytest.param({"addr": for_errors, "line": 1}, id="line-body"),
        pytest.param({"addr": for_errors, "line": 2}, id="line-no-code"),
        pytest.param({"symbol_name": "_kret_targets:add", "offset": 2}, id="symbol-offset"),
        pytest.param({"symbol_name": "_kret_targets:add", "line": 1}, id="symbol-line-body"),
    ],
)
def test_not_at_the_entry_is_invalid_and_nothing_is_half_registered(kwargs: dict[str, Any]) -> None:
    kwargs = dict(kwargs)
    if kwargs.get("offset") == "body":
        kwargs["offset"] = _first_body_offset()
    if "line" in kwargs:
        code = (for_errors if "addr" in kwargs else targets.add).__code__
        kwargs["line"] = code.co_firstlineno + kwargs["line"]
    rp = Kretprobe(**kwargs)
    with pytest.raises(InvalidProbeError):
        pyprobes.register_kretprobe(rp)
    assert not rp.registered
    assert pyprobes.registered_probes() == []
    assert tool_free()
    # The same with another probe registered: that one stays, the bad one is not added.
    kp = Kprobe(addr=for_errors)
    with registered(kp):
        with pytest.raises(InvalidProbeError):
            pyprobes.register_kretprobe(rp)
        assert pyprobes.registered_probes() == [kp]
        assert not unwind_on(for_errors.__code__)
        assert for_errors(1) == 2
        assert kp.nhit == 1
    assert tool_free()


def test_failed_batch_registers_nothing() -> None:
    good = Kretprobe(addr=traced)
    bad = Kretprobe(addr=for_errors, line=for_errors.__code__.co_firstlineno + 2)
    with pytest.raises(InvalidProbeError):
        pyprobes.register_kretprobes([good, bad])
    assert not good.registered and not bad.registered
    assert pyprobes.registered_probes() == []
    assert tool_free()


# --- nothing leaks ------------------------------------------------------------------------------


def _call_in_thread(func: Callable[[], object]) -> list[BaseException]:
    """Run ``func`` in a new thread that then exits; return what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            func()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive()
    return errors


def test_no_instance_leaks_after_returns_raises_and_thread_exits() -> None:
    ends: list[str] = []

    def handler(ri: KretprobeInstance, ctx: ProbeContext) -> None:
        ends.append("raise" if ctx.exception is not None else "return")

    rp = Kretprobe(symbol_name="_kret_targets:held", handler=handler, maxactive=3)
    rp_fails = Kretprobe(addr=fails, handler=handler, maxactive=3)
    rp_count = Kretprobe(addr=countdown, handler=handler, maxactive=3)
    ready = threading.Barrier(1)
    go = threading.Event()
    go.set()
    with registered(rp, rp_fails, rp_count):
        for _ in range(10):  # each kind of ending more often than there are instances
            targets.held(ready, go, 1)
            with pytest.raises(Boom):
                fails(Boom())
            countdown(2, lambda: None)
            with pytest.raises(Boom):
                countdown(2, lambda: _raise(Boom()))
            assert _call_in_thread(lambda: targets.held(threading.Barrier(1), go, 2)) == []
            [err] = _call_in_thread(lambda: fails(Boom()))
            assert isinstance(err, Boom)
        assert (rp.nactive, rp_fails.nactive, rp_count.nactive) == (0, 0, 0)
        assert (rp.nmissed, rp_fails.nmissed, rp_count.nmissed) == (0, 0, 0)
        assert ends.count("return") == 10 * 2 + 10 * 3
        assert ends.count("raise") == 10 * 2 + 10 * 3
        run_concurrently(3)
        assert (rp.nhit, rp.nmissed, rp.nactive) == (23, 0, 0)


@pytest.mark.parametrize("where", ["entry", "return"])
def test_keyboard_interrupt_from_a_fault_handler_keeps_the_pool_whole(where: str) -> None:
    """A fault handler raising KeyboardInterrupt (the user's Ctrl-C) reaches the program, and
    the activation's instance still goes back to the pool: a one-instance pool serves on."""
    calls: list[str] = []

    def failing(ri: Any, ctx: Any) -> None:
        calls.append(where)
        if len(calls) == 1:
            raise ValueError("handler bug")

    def fh(p: Any, ctx: Any, exc: BaseException) -> bool:
        raise KeyboardInterrupt

    def target(x: int) -> int:
        return x * 2

    handlers = {"entry_handler" if where == "entry" else "handler": failing}
    rp = Kretprobe(addr=target, maxactive=1, fault_handler=fh, **handlers)  # type: ignore[arg-type]
    pyprobes.register_kretprobe(rp)
    try:
        with pytest.raises(KeyboardInterrupt):
            target(1)
        assert target(2) == 4  # the pool's one instance is back: no miss
        assert rp.nmissed == 0
        assert calls == [where, where]
        assert rp.nactive == 0
    finally:
        pyprobes.unregister_kretprobe(rp)


def test_a_large_maxactive_costs_only_the_instances_used() -> None:
    """The pool grows lazily up to maxactive: registering a million costs no million objects,
    and calls that overlap get instances made on demand, then kept for reuse."""
    import gc
    import tracemalloc

    rp = Kretprobe(symbol_name="_kret_targets:held", handler=lambda ri, ctx: None)
    rp.maxactive = 1_000_000
    gc.collect()
    tracemalloc.start()
    try:
        with registered(rp):
            used, _ = tracemalloc.get_traced_memory()
            assert used < 1_000_000  # bytes: a preallocated pool would be about 100 MB
            with HeldThreads(5):
                assert rp.nactive == 5
            assert (rp.nhit, rp.nmissed, rp.nactive) == (5, 0, 0)
    finally:
        tracemalloc.stop()
