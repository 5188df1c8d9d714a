"""Calls that nest for ``pyprobes run --otlp`` (tests/cli/test_run_otlp.py): plain calls,
one that raises, a thread, asyncio tasks, a generator and, with ``otel`` as its argument, a
span of the program's own OpenTelemetry tracer around a call; with ``wait``, it waits for
a line on stdin after its first calls; with ``fork``, a forked child calls and exits."""

import asyncio
import logging
import sys
import threading

# Whatever reaches the program's logging shows in its output: pyprobes' exporter must not.
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="log: %(name)s %(message)s")


def inner(x):
    if x == 2:
        raise ValueError("two")
    return x * 2


def outer(n, tag):
    out = []
    for i in range(n):
        try:
            out.append(inner(i))
        except ValueError:
            out.append(None)
    return out


async def child(name):
    await asyncio.sleep(0)
    return name.upper()


async def handler(name):
    first = await child(name)
    await asyncio.sleep(0)
    return first + (await child(name + "!"))


async def serve():
    return await asyncio.gather(handler("a"), handler("b"))


def numbers(n):
    yield from range(n)


def consume():
    total = 0
    for v in numbers(3):
        total += inner(v) if v != 2 else 0  # inner between the generator's yields
    return total


def main():
    print(outer(3, "main"))
    if sys.argv[1:] == ["fork"]:
        import os

        child = os.fork()
        if child == 0:
            inner(5)  # the child's events are the child's: pyprobes' writers stay in the parent
            sys.exit(0)
        os.waitpid(child, 0)
    if sys.argv[1:] == ["wait"]:
        sys.stdout.flush()
        sys.stdin.readline()  # until the test saw the spans exported while this runs
    t = threading.Thread(target=outer, args=(2, "thread"), name="worker")
    t.start()
    t.join()
    print(asyncio.run(serve()))
    print(consume())
    if sys.argv[1:] == ["otel"]:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        tracer = TracerProvider().get_tracer("prog")
        with tracer.start_as_current_span("request") as span:
            ctx = span.get_span_context()
            print(f"otel {ctx.trace_id:032x} {ctx.span_id:016x}")
            outer(1, "otel")
        assert trace.get_current_span().get_span_context().is_valid is False
    return 3


sys.exit(main())
