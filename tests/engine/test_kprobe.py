"""Kprobes: entry, line and offset probes; pre and post handlers; fault containment."""

from __future__ import annotations

import dis
import inspect
import logging
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import pyprobes
from pyprobes import Kprobe, ProbeContext

EVENTS: list[Any] = []


@contextmanager
def registered(*probes: Any) -> Iterator[None]:
    for p in probes:
        if isinstance(p, pyprobes.Jprobe):
            pyprobes.register_jprobe(p)
        elif isinstance(p, pyprobes.Kretprobe):
            pyprobes.register_kretprobe(p)
        else:
            pyprobes.register_kprobe(p)
    try:
        yield
    finally:
        for p in probes:
            pyprobes.engine.registry.unregister(p)


def line_of(func: Any, text: str) -> int:
    """The absolute line number of the first source line of ``func`` containing ``text``."""
    lines, start = inspect.getsourcelines(func)
    for i, src in enumerate(lines):
        if text in src:
            return start + i
    raise AssertionError(f"{text!r} not in {func.__name__}")


def add(a: int, b: int = 10, *rest: int, scale: int = 1, **opts: Any) -> int:
    EVENTS.append("body")
    return (a + b + sum(rest)) * scale


def loop(n: int) -> int:
    total = 0
    for i in range(n):
        total += i  # LOOP-BODY
    return total


@pytest.fixture(autouse=True)
def clear_events() -> None:
    EVENTS.clear()


def test_entry_probe_runs_before_first_line_with_arguments() -> None:
    def pre(p: Kprobe, ctx: ProbeContext) -> None:
        EVENTS.append(("pre", ctx.args, ctx.code is add.__code__, ctx.offset, p))

    p = Kprobe(addr=add, pre_handler=pre)
    with registered(p):
        assert add(1, 2, 3, scale=2, x=9) == 12
    assert [
        ("pre", {"a": 1, "b": 2, "rest": (3,), "scale": 2, "opts": {"x": 9}}, True, 0, p),
        "body",
    ] == EVENTS
    assert p.nhit == 1


def test_ctx_args_is_a_copy_and_defaults_are_applied() -> None:
    seen: list[dict[str, object]] = []

    def pre(p: Kprobe, ctx: ProbeContext) -> None:
        args = ctx.args
        seen.append(dict(args))
        args["a"] = 1000  # must not reach the function's locals

    with registered(Kprobe(addr=add, pre_handler=pre)):
        assert add(1) == 11
    assert seen == [{"a": 1, "b": 10, "rest": (), "scale": 1, "opts": {}}]


def test_ctx_fields() -> None:
    got: dict[str, Any] = {}

    def pre(p: Kprobe, ctx: ProbeContext) -> None:
        frame = ctx.frame
        assert frame is not None
        got.update(
            frame_code=frame.f_code,
            lineno=ctx.lineno,
            thread=ctx.thread_id,
            time=ctx.time_ns,
            retval=ctx.retval,
            exc=ctx.exception,
        )

    with registered(Kprobe(addr=add, pre_handler=pre)):
        add(1)
    assert got["frame_code"] is add.__code__
    assert got["lineno"] == add.__code__.co_firstlineno
    assert got["thread"] == threading.get_ident()
    assert got["time"] > 0
    assert got["retval"] is None and got["exc"] is None


def test_line_probe_runs_before_the_line_every_time() -> None:
    line = line_of(loop, "LOOP-BODY")
    totals: list[int] = []

    def pre(p: Kprobe, ctx: ProbeContext) -> None:
        frame = ctx.frame
        assert frame is not None
        totals.append(frame.f_locals["total"])
        assert ctx.lineno == line

    with registered(Kprobe(addr=loop, line=line, pre_handler=pre)) as _:
        assert loop(4) == 6
    assert totals == [0, 0, 1, 3]  # seen before each execution of the line


def test_line_probe_fires_in_a_loop_already_running_and_in_older_threads() -> None:
    started = threading.Event()
    armed = threading.Event()
    stop = threading.Event()
    seen_threads: set[int] = set()
    counts = {"after_arm": 0}

    def spin() -> None:
        started.set()
        while not stop.is_set():
            armed.wait()
            counts["after_arm"] += 1  # SPIN-LINE

    def pre(p: Kprobe, ctx: ProbeContext) -> None:
        seen_threads.add(ctx.thread_id)
        if len(seen_threads) >= 1 and p.nhit >= 5:
            stop.set()

    t = threading.Thread(target=spin)
    t.start()
    started.wait()
    p = Kprobe(addr=spin, line=line_of(spin, "SPIN-LINE"), pre_handler=pre)
    with registered(p):
        armed.set()
        t.join(timeout=30)
        assert not t.is_alive()
    assert seen_threads == {t.ident}
    assert p.nhit >= 5


def test_module_level_loop_of_a_running_script(tmp_path: Any) -> None:
    # A module-level line of code that is running right now (a script's main loop).
    import subprocess

    script = tmp_path / "main_loop.py"
    script.write_text(
        "import pyprobes, threading\n"
        "hits = []\n"
        "def arm():\n"
        "    pyprobes.register_kprobe(p)\n"
        "p = pyprobes.Kprobe(filename=__file__, line=9,\n"
        "    pre_handler=lambda p, ctx: hits.append(ctx.frame.f_locals['i']))\n"
        "for i in range(6):\n"
        "    if i == 2: arm()\n"
        "    x = i  # line 9\n"
        "pyprobes.unregister_kprobe(p)\n"
        "print(hits)\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": _src()},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[2, 3, 4, 5]"


def _src() -> str:
    import os

    return os.path.join(os.path.dirname(__file__), "..", "..", "src")


def offsets_of(func: Any, opname: str) -> list[int]:
    return [i.offset for i in dis.get_instructions(func) if i.opname == opname]


def calls(x: int) -> int:
    y = abs(x)
    return y + 1


def test_offset_probe_pre_and_post_around_the_instruction() -> None:
    call_offset = offsets_of(calls, "CALL")[0]
    order: list[str] = []

    def pre(p: Kprobe, ctx: ProbeContext) -> None:
        frame = ctx.frame
        assert frame is not None
        order.append(f"pre y={'y' in frame.f_locals}")

    def post(p: Kprobe, ctx: ProbeContext, flags: int) -> None:
        assert flags == 0
        frame = ctx.frame
        assert frame is not None
        order.append(f"post y={'y' in frame.f_locals}")

    import builtins

    real_abs = builtins.abs

    def traced_abs(v: int) -> int:
        order.append("call")
        return real_abs(v)

    calls.__globals__["abs"] = traced_abs
    try:
        p = Kprobe(addr=calls, offset=call_offset, pre_handler=pre, post_handler=post)
        with registered(p):
            assert calls(-3) == 4
    finally:
        del calls.__globals__["abs"]
    # post runs after the CALL finished, before the STORE_FAST of y.
    assert order == ["pre y=False", "call", "post y=False"]


def test_line_post_handler_runs_after_the_line_before_the_next() -> None:
    def body(n: int) -> int:
        a = n * 2  # LINE-A
        b = a + 1  # LINE-B
        return b

    seen: list[tuple[str, dict[str, Any]]] = []

    def pre(p: Kprobe, ctx: ProbeContext) -> None:
        assert ctx.frame is not None
        seen.append(("pre", dict(ctx.frame.f_locals)))

    def post(p: Kprobe, ctx: ProbeContext, flags: int) -> None:
        assert ctx.frame is not None
        seen.append(("post", dict(ctx.frame.f_locals)))

    p = Kprobe(addr=body, line=line_of(body, "LINE-A"), pre_handler=pre, post_handler=post)
    with registered(p):
        assert body(5) == 11
    assert seen == [("pre", {"n": 5}), ("post", {"n": 5, "a": 10})]


def test_post_handler_on_the_last_line_runs_at_return_not_after_a_raise() -> None:
    def last(n: int) -> int:
        return 10 // n  # LAST

    posts: list[int] = []
    p = Kprobe(
        addr=last,
        line=line_of(last, "LAST"),
        post_handler=lambda p, ctx, flags: posts.append(1),
    )
    with registered(p):
        assert last(2) == 5
        with pytest.raises(ZeroDivisionError):
            last(0)
    assert posts == [1]
    assert p.nhit == 2


def test_entry_post_handler_runs_before_the_first_line() -> None:
    order: list[str] = []
    p = Kprobe(
        addr=add,
        pre_handler=lambda p, ctx: order.append("pre"),
        post_handler=lambda p, ctx, flags: order.append("post"),
    )
    with registered(p):
        add(1)
    assert order == ["pre", "post"]
    assert EVENTS == ["body"]


def failing_target(x: int) -> int:
    if x < 0:
        raise ValueError("negative")
    return x * 2


def _run_and_capture(x: int) -> tuple[object, str]:
    try:
        return failing_target(x), ""
    except ValueError as exc:
        return exc.args, "".join(traceback.format_exception(exc))


def test_raising_handler_never_reaches_the_program(caplog: pytest.LogCaptureFixture) -> None:
    def pre(p: Kprobe, ctx: ProbeContext) -> None:
        raise RuntimeError("handler bug")

    def post(p: Kprobe, ctx: ProbeContext, flags: int) -> None:
        raise KeyError("post bug")

    baseline = [_run_and_capture(3), _run_and_capture(-1)]
    p = Kprobe(addr=failing_target, pre_handler=pre, post_handler=post)
    with caplog.at_level(logging.WARNING, logger="pyprobes"), registered(p):
        probed = [_run_and_capture(3), _run_and_capture(-1), _run_and_capture(4)]
    assert probed[:2] == baseline  # same results, same exception, same traceback text
    assert probed[2] == (8, "")
    assert p.nfault == 6  # 3 pre + 3 post (an entry's post runs at the first instruction)
    reports = [r for r in caplog.records if "handler" in r.getMessage()]
    assert len(reports) == 1  # reported once, then only counted


def test_fault_handler_gets_the_exception() -> None:
    got: list[tuple[Kprobe, type[BaseException]]] = []

    def fault(p: Any, ctx: ProbeContext, exc: BaseException) -> bool:
        got.append((p, type(exc)))
        return True

    p = Kprobe(addr=failing_target, pre_handler=lambda p, ctx: 1 / 0, fault_handler=fault)
    with registered(p):
        assert failing_target(2) == 4
    assert got == [(p, ZeroDivisionError)]
    assert p.nfault == 1


def test_probed_function_identity_and_signature_unchanged() -> None:
    code, sig, qual = failing_target.__code__, inspect.signature(failing_target), failing_target
    with registered(Kprobe(addr=failing_target, pre_handler=lambda p, ctx: None)):
        assert failing_target.__code__ is code
        assert inspect.signature(failing_target) == sig
        assert pyprobes.engine.registry.registered_probes()
        assert qual is failing_target
    assert failing_target.__code__ is code


def test_handler_exception_does_not_change_sys_exc_info() -> None:
    seen: list[object] = []

    def inside() -> None:
        seen.append(sys.exc_info()[1])

    p = Kprobe(addr=inside, pre_handler=lambda p, ctx: 1 / 0)
    with registered(p):
        try:
            raise KeyError("outer")
        except KeyError as outer:
            inside()
            assert sys.exc_info()[1] is outer
    assert isinstance(seen[0], KeyError)


def test_keyboard_interrupt_in_a_handler_belongs_to_the_program() -> None:
    def pre(p: Kprobe, ctx: ProbeContext) -> None:
        raise KeyboardInterrupt

    p = Kprobe(addr=failing_target, pre_handler=pre)
    with registered(p), pytest.raises(KeyboardInterrupt):
        failing_target(1)


def test_a_probe_hit_inside_a_handler_does_not_fire() -> None:
    inner_hits: list[int] = []

    def helper() -> int:
        return 1

    def pre(p: Kprobe, ctx: ProbeContext) -> None:
        helper()

    p_outer = Kprobe(addr=add, pre_handler=pre)
    p_inner = Kprobe(addr=helper, pre_handler=lambda p, ctx: inner_hits.append(1))
    with registered(p_outer, p_inner):
        add(1)
        helper()
    assert p_outer.nhit == 1
    assert inner_hits == [1]  # only the direct call, not the one from inside the handler


def five(x: int) -> int:
    return x + 5


def _mirror(x: int) -> None:
    pass


@pytest.mark.parametrize(
    ("make", "attr"),
    [
        (lambda: Kprobe(addr=five, pre_handler=lambda p, ctx: None), "pre_handler"),
        (lambda: Kprobe(addr=five, post_handler=lambda p, ctx, f: None), "post_handler"),
        (lambda: pyprobes.Jprobe(entry=_mirror, addr=five), "entry"),
        (lambda: pyprobes.Kretprobe(addr=five, handler=lambda ri, ctx: None), "handler"),
        (
            lambda: pyprobes.Kretprobe(addr=five, entry_handler=lambda ri, ctx: None),
            "entry_handler",
        ),
    ],
    ids=["kprobe-pre", "kprobe-post", "jprobe-entry", "kretprobe-handler", "kretprobe-entry"],
)
def test_a_handler_deleted_from_the_probe_is_a_fault(make: Any, attr: str) -> None:
    """Deleting a handler attribute from a registered probe cannot raise into the program:
    each read that fails is a fault (counted, given to the fault handler)."""
    p = make()
    faults: list[type[BaseException]] = []
    p.fault_handler = lambda probe, ctx, exc: faults.append(type(exc)) or True
    with registered(p):
        delattr(p, attr)
        assert five(1) == 6
        assert five(2) == 7
    assert p.nfault == 2
    assert faults == [AttributeError, AttributeError]


def test_a_fault_handler_deleted_from_the_probe_means_none(caplog: Any) -> None:
    p = Kprobe(addr=five, pre_handler=lambda p, ctx: 1 / 0, fault_handler=lambda *a: True)
    with registered(p), caplog.at_level(logging.WARNING, logger="pyprobes"):
        del p.fault_handler
        assert five(1) == 6
    assert p.nfault == 1
    assert "ZeroDivisionError" in caplog.text  # reported as if there were no fault handler
