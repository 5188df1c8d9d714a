"""Kretprobes on generators, coroutines and async generators: one activation from first start
to final return or raise, across every suspension and thread; closing, dropping, cancelling;
reclaim of activations that can never end; funclatency."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any

import pytest

from pyprobes import Kprobe, Kretprobe, KretprobeInstance, ProbeContext

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from _kret_targets import CLOSE_EMITS_NOTHING, TIMEOUT, registered

# --- functions probed by address -------------------------------------------------------------


class Boom(Exception):
    pass


def accumulate(n: int) -> Generator[int, int, int]:
    """Yield n times; return the sum of what was sent."""
    total = 0
    for i in range(n):
        total += yield i
    return total


def plain_gen() -> Iterator[int]:
    """Its yields sit outside any try block: on 3.13.0 close() takes the silent fast path."""
    yield 1
    yield 2


def gen_with_finally(log: list[str]) -> Iterator[int]:
    try:
        yield 1
        yield 2
    finally:
        log.append("finally")


def resilient() -> Generator[str, None, str]:
    while True:
        try:
            yield "waiting"
        except Boom:
            continue
        except ValueError:
            raise
        return "done"


def other() -> None:
    pass


class Suspend:
    """An awaitable that suspends its coroutine once and resumes with the value sent."""

    def __await__(self) -> Generator[str, int, int]:
        return (yield "suspended")


async def two_steps(a: int) -> int:
    b = await Suspend()
    c = await Suspend()
    return a + b + c


async def wait_for(ev: asyncio.Event, started: asyncio.Event) -> str:
    started.set()
    await ev.wait()
    return "done"


async def raises_after_await(ev: asyncio.Event) -> None:
    await ev.wait()
    raise Boom("async")


async def ticker(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await asyncio.sleep(0)
        yield i


# --- helpers ----------------------------------------------------------------------------------


def recorder() -> tuple[list[Any], Callable[..., None], Callable[..., None]]:
    """(log, entry_handler, handler): entry stores the arguments in ri.data; the handler logs
    (data, retval, exception, thread, entry thread)."""
    log: list[Any] = []

    def entry(ri: KretprobeInstance, ctx: ProbeContext) -> None:
        ri.data["args"] = ctx.args
        ri.data["entry_thread"] = threading.get_ident()

    def handler(ri: KretprobeInstance, ctx: ProbeContext) -> None:
        log.append(
            {
                "args": ri.data.get("args"),
                "retval": ctx.retval,
                "exc": ctx.exception,
                "thread": threading.get_ident(),
                "ri_thread": ri.thread_id,
                "entry_thread": ri.data.get("entry_thread"),
            }
        )

    return log, entry, handler


def in_thread(func: Callable[[], object]) -> object:
    out: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(func())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive()
    if errors:
        raise errors[0]
    return out[0]


def finish(gen: Generator[Any, Any, Any], value: object) -> object:
    try:
        gen.send(value)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the generator did not finish")


# --- generators -------------------------------------------------------------------------------


def test_generator_is_one_activation_from_first_start_to_return() -> None:
    log, entry, handler = recorder()
    rp = Kretprobe(addr=accumulate, entry_handler=entry, handler=handler)
    with registered(rp):
        gen = accumulate(3)
        assert rp.nactive == 0  # creating it runs nothing
        assert next(gen) == 0
        assert rp.nactive == 1
        assert gen.send(10) == 1
        assert gen.send(20) == 2
        assert (log, rp.nactive) == ([], 1)  # yields and resumptions do not end it
        assert finish(gen, 30) == 60
        assert rp.nactive == 0
    assert len(log) == 1
    assert log[0]["args"] == {"n": 3}  # data stored at entry survived every suspension
    assert (log[0]["retval"], log[0]["exc"]) == (60, None)
    assert (rp.nhit, rp.nmissed, rp.nfault) == (1, 0, 0)


def test_generator_resumed_on_other_threads() -> None:
    log, entry, handler = recorder()
    rp = Kretprobe(addr=accumulate, entry_handler=entry, handler=handler)
    with registered(rp):
        gen = accumulate(3)
        starter = threading.get_ident()
        assert next(gen) == 0
        assert in_thread(lambda: gen.send(1)) == 1  # this thread exits with gen suspended
        assert rp.nactive == 1
        assert in_thread(lambda: gen.send(2)) == 2
        finisher: list[int] = []
        assert in_thread(lambda: (finisher.append(threading.get_ident()), finish(gen, 3))[1]) == 6
        assert rp.nactive == 0
    assert len(log) == 1
    assert log[0]["retval"] == 6
    assert log[0]["args"] == {"n": 3}
    assert log[0]["ri_thread"] == log[0]["entry_thread"] == starter
    assert log[0]["thread"] == finisher[0]


def test_coroutine_driven_across_threads_is_one_activation() -> None:
    log, entry, handler = recorder()
    rp = Kretprobe(addr=two_steps, entry_handler=entry, handler=handler)
    with registered(rp):
        coro = two_steps(1)
        assert coro.send(None) == "suspended"
        assert in_thread(lambda: coro.send(2)) == "suspended"
        assert rp.nactive == 1
        ends: list[object] = []

        def last() -> None:
            ends.append(threading.get_ident())
            try:
                coro.send(3)
            except StopIteration as stop:
                ends.append(stop.value)

        in_thread(last)
        assert rp.nactive == 0
    assert len(log) == 1
    assert (log[0]["retval"], log[0]["exc"], log[0]["args"]) == (6, None, {"a": 1})
    assert log[0]["ri_thread"] == threading.get_ident()
    assert [log[0]["thread"], 6] == ends


def test_throw_into_a_generator() -> None:
    log, entry, handler = recorder()
    rp = Kretprobe(addr=resilient, entry_handler=entry, handler=handler)
    with registered(rp):
        gen = resilient()
        next(gen)
        assert gen.throw(Boom()) == "waiting"  # caught inside: the activation goes on
        assert (log, rp.nactive) == ([], 1)
        err = ValueError("out")
        with pytest.raises(ValueError) as info:
            gen.throw(err)
        assert info.value is err
        assert rp.nactive == 0
        gen2 = resilient()
        next(gen2)
        with pytest.raises(StopIteration) as stop:
            gen2.send(None)
        assert stop.value.value == "done"
    assert [(e["retval"], e["exc"]) for e in log] == [(None, err), ("done", None)]


@pytest.mark.parametrize("how", ["close-kept", "close-dropped", "dropped", "cycle-collected"])
def test_unfinished_generator_ends_by_version(how: str) -> None:
    """3.12: GeneratorExit reaches the frame, PY_UNWIND arrives, the handler sees it. 3.13.0
    (gh-140373): no event at all; the engine reclaims the instance without a handler."""
    log, entry, handler = recorder()
    rp = Kretprobe(addr=plain_gen, entry_handler=entry, handler=handler, maxactive=1)
    with registered(rp):
        gen: Any = plain_gen()
        assert next(gen) == 1
        assert rp.nactive == 1
        gc_was_enabled = gc.isenabled()
        gc.disable()  # so that only our collect() finds the cycle
        try:
            if how.startswith("close"):
                gen.close()
                if how == "close-dropped":
                    del gen
            elif how == "dropped":
                del gen
            else:
                box: list[Any] = [gen]
                box.append(box)
                del gen, box
                assert rp.nactive == 1  # still alive in its cycle
                gc.collect()
        finally:
            if gc_was_enabled:
                gc.enable()
        assert rp.nactive == 0
        if CLOSE_EMITS_NOTHING:
            assert log == []
        else:
            assert len(log) == 1
            assert isinstance(log[0]["exc"], GeneratorExit)
            assert log[0]["retval"] is None
        # The instance is back: with maxactive=1 the next activation is tracked.
        assert list(plain_gen()) == [1, 2]
        assert (rp.nhit, rp.nmissed, rp.nactive) == (2, 0, 0)
        assert log[-1]["exc"] is None


@pytest.mark.parametrize("how", ["close", "drop"])
def test_generator_with_finally_ends_with_generator_exit_on_every_version(how: str) -> None:
    log, entry, handler = recorder()
    rp = Kretprobe(addr=gen_with_finally, entry_handler=entry, handler=handler)
    with registered(rp):
        ran: list[str] = []
        gen = gen_with_finally(ran)
        next(gen)
        if how == "close":
            gen.close()
        else:
            del gen
        assert ran == ["finally"]
        assert rp.nactive == 0
    assert len(log) == 1
    assert isinstance(log[0]["exc"], GeneratorExit)


def test_sequentially_dropped_generators_never_miss() -> None:
    """Each generator is gone before the next starts: no instance is ever really in use."""
    log, entry, handler = recorder()
    rp = Kretprobe(addr=plain_gen, entry_handler=entry, handler=handler, maxactive=3)
    with registered(rp):
        for _ in range(30):
            gen = plain_gen()
            next(gen)
            del gen
        assert (rp.nhit, rp.nmissed) == (30, 0)
        assert rp.nactive == 0
    assert len(log) == (0 if CLOSE_EMITS_NOTHING else 30)


def test_generator_finalized_inside_a_monitoring_callback_is_reclaimed() -> None:
    """No tool sees events raised inside a callback: a generator whose last reference goes
    away inside a handler (or a collection run there) ends without any event, on every
    version. Its instance must still come back."""
    log, entry, handler = recorder()
    rp = Kretprobe(addr=gen_with_finally, entry_handler=entry, handler=handler, maxactive=2)
    holder: list[Any] = []
    kp = Kprobe(addr=other, pre_handler=lambda p, ctx: holder.clear())
    with registered(rp, kp):
        ran: list[str] = []
        for _ in range(2):
            holder.append(gen_with_finally(ran))
            next(holder[-1])
        assert rp.nactive == 2
        other()  # drops both generators inside the kprobe's handler
        assert ran == ["finally", "finally"]  # they were closed...
        assert log == []  # ...but no event told the engine
        assert rp.nactive == 0
        # The whole pool is usable again.
        gens = [gen_with_finally(ran) for _ in range(2)]
        for g in gens:
            next(g)
        assert (rp.nactive, rp.nmissed) == (2, 0)
        for g in gens:
            g.close()
        assert rp.nactive == 0
    assert len(log) == 2


def test_suspended_generators_hold_instances() -> None:
    log, entry, handler = recorder()
    rp = Kretprobe(addr=accumulate, entry_handler=entry, handler=handler, maxactive=2)
    with registered(rp):
        gens = [accumulate(1) for _ in range(3)]
        for g in gens:
            next(g)
        assert (rp.nactive, rp.nhit, rp.nmissed) == (2, 2, 1)
        assert [finish(g, i) for i, g in enumerate(gens)] == [0, 1, 2]
        assert rp.nactive == 0
    assert sorted(e["retval"] for e in log) == [0, 1]  # the missed one had no handler


# --- coroutines and tasks ---------------------------------------------------------------------


def test_cancelled_task_ends_its_activation_with_cancelled_error() -> None:
    log, entry, handler = recorder()
    rp = Kretprobe(addr=wait_for, entry_handler=entry, handler=handler)

    async def main() -> BaseException:
        ev, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(wait_for(ev, started))
        await started.wait()
        assert rp.nactive == 1
        task.cancel()
        try:
            await task
        except asyncio.CancelledError as exc:
            return exc
        raise AssertionError("not cancelled")

    with registered(rp):
        exc = asyncio.run(main())
        assert rp.nactive == 0
    assert isinstance(exc, asyncio.CancelledError)
    assert len(log) == 1
    assert isinstance(log[0]["exc"], asyncio.CancelledError)
    assert log[0]["retval"] is None


def test_coroutine_raising_after_an_await() -> None:
    log, entry, handler = recorder()
    rp = Kretprobe(addr=raises_after_await, entry_handler=entry, handler=handler)

    async def main() -> BaseException:
        ev = asyncio.Event()
        task = asyncio.create_task(raises_after_await(ev))
        ev.set()
        try:
            await task
        except Boom as exc:
            return exc
        raise AssertionError("did not raise")

    with registered(rp):
        exc = asyncio.run(main())
        assert rp.nactive == 0
    assert len(log) == 1
    assert log[0]["exc"] is exc


def test_funclatency_includes_the_awaited_time() -> None:
    """bcc's funclatency: entry stores a timestamp, return computes the duration."""
    latencies: list[int] = []

    def entry(ri: KretprobeInstance, ctx: ProbeContext) -> None:
        ri.data["ts"] = time.perf_counter_ns()

    def handler(ri: KretprobeInstance, ctx: ProbeContext) -> None:
        if ctx.retval == "done":
            latencies.append(time.perf_counter_ns() - ri.data["ts"])

    rp = Kretprobe(addr=wait_for, entry_handler=entry, handler=handler)

    async def setter(ev: asyncio.Event, started: asyncio.Event) -> int:
        await started.wait()  # the probed coroutine has entered
        t0 = time.perf_counter_ns()
        await asyncio.sleep(0.02)  # the wait being measured (not a synchronisation)
        waited = time.perf_counter_ns() - t0
        ev.set()
        return waited

    async def main() -> int:
        ev, started = asyncio.Event(), asyncio.Event()
        probed = asyncio.create_task(wait_for(ev, started))
        waited = await asyncio.create_task(setter(ev, started))
        assert await probed == "done"
        return waited

    with registered(rp):
        waited = asyncio.run(main())
    assert len(latencies) == 1
    assert latencies[0] >= waited > 0


# --- async generators -------------------------------------------------------------------------


def test_async_generator_is_one_activation() -> None:
    log, entry, handler = recorder()
    rp = Kretprobe(addr=ticker, entry_handler=entry, handler=handler)

    async def main() -> list[int]:
        out = []
        async for i in ticker(4):
            out.append(i)
            assert rp.nactive == 1
            await asyncio.sleep(0)
        return out

    with registered(rp):
        assert asyncio.run(main()) == [0, 1, 2, 3]
        assert rp.nactive == 0
    assert len(log) == 1
    assert (log[0]["retval"], log[0]["exc"]) == (None, None)
    assert log[0]["args"]["n"] == 4


def test_async_generator_aclose_ends_with_generator_exit() -> None:
    log, entry, handler = recorder()
    rp = Kretprobe(addr=ticker, entry_handler=entry, handler=handler)

    async def main() -> None:
        agen = ticker(4)
        assert await agen.__anext__() == 0
        assert rp.nactive == 1
        await agen.aclose()

    with registered(rp):
        asyncio.run(main())
        assert rp.nactive == 0
    assert len(log) == 1
    assert isinstance(log[0]["exc"], GeneratorExit)


# --- nothing leaks ------------------------------------------------------------------------------


def test_no_instance_leaks_after_a_mix_of_endings() -> None:
    m = 3
    log, entry, handler = recorder()
    rp_gen = Kretprobe(addr=plain_gen, entry_handler=entry, handler=handler, maxactive=m)
    rp_acc = Kretprobe(addr=accumulate, entry_handler=entry, handler=handler, maxactive=m)
    rp_coro = Kretprobe(addr=wait_for, entry_handler=entry, handler=handler, maxactive=m)
    rp_agen = Kretprobe(addr=ticker, entry_handler=entry, handler=handler, maxactive=m)
    probes = (rp_gen, rp_acc, rp_coro, rp_agen)

    async def tasks_round() -> None:
        # returned, cancelled, and an async generator run out and one closed early
        ev, started = asyncio.Event(), asyncio.Event()
        t = asyncio.create_task(wait_for(ev, started))
        await started.wait()
        ev.set()
        assert await t == "done"
        ev, started = asyncio.Event(), asyncio.Event()
        t = asyncio.create_task(wait_for(ev, started))
        await started.wait()
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert [i async for i in ticker(2)] == [0, 1]
        agen = ticker(3)
        await agen.__anext__()
        await agen.aclose()

    with registered(*probes):
        for _ in range(3 * m):  # each kind of ending more often than there are instances
            assert list(plain_gen()) == [1, 2]
            gen = plain_gen()
            next(gen)
            gen.close()
            gen = plain_gen()
            next(gen)
            del gen
            gen = plain_gen()
            next(gen)
            box: list[Any] = [gen]
            box.append(box)
            del gen, box
            gc.collect()
            acc = accumulate(2)
            next(acc)
            with pytest.raises(Boom):
                acc.throw(Boom())
            acc = accumulate(1)
            next(acc)
            assert in_thread(lambda acc=acc: finish(acc, 5)) == 5  # finished by a thread
            asyncio.run(tasks_round())
        assert [p.nactive for p in probes] == [0] * 4
        assert [p.nmissed for p in probes] == [0] * 4
        assert [p.nfault for p in probes] == [0] * 4
        expected = (type(None), GeneratorExit, Boom, asyncio.CancelledError)
        assert all(type(e["exc"]) in expected for e in log)
        assert len(log) > 0

        # A new run of maxactive concurrent activations of each is fully tracked.
        gens = [plain_gen() for _ in range(m)]
        accs = [accumulate(1) for _ in range(m)]
        for g in (*gens, *accs):
            next(g)

        async def concurrent() -> None:
            ev = asyncio.Event()
            starts = [asyncio.Event() for _ in range(m)]
            ts = [asyncio.create_task(wait_for(ev, s)) for s in starts]
            agens = [ticker(2) for _ in range(m)]
            for a in agens:
                await a.__anext__()
            for s in starts:
                await s.wait()
            assert [p.nactive for p in probes] == [m] * 4
            ev.set()
            assert await asyncio.gather(*ts) == ["done"] * m
            for a in agens:
                assert [i async for i in a] == [1]

        asyncio.run(concurrent())
        for g in gens:
            assert list(g) == [2]
        for i, g in enumerate(accs):
            assert finish(g, i) == i
        assert [p.nactive for p in probes] == [0] * 4
        assert [p.nmissed for p in probes] == [0] * 4
