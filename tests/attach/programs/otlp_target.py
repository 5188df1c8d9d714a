"""A service for ``pyprobes attach --otlp`` tests (tests/attach/test_attach_otlp.py).

It prints ``ready PID``; each line on stdin runs one request, ``outer(4, "req")`` (which calls
``inner`` four times, ``inner(2)`` raising ValueError, caught), and prints ``round N RESULT``;
with ``otel`` as its argument it runs each request under a span of its own OpenTelemetry
tracer and prints ``span TRACE SPAN`` (hex) first. EOF on stdin: ``done``, exit status 0.
"""

import os
import sys


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


def main():
    tracer = None
    if sys.argv[1:] == ["otel"]:
        from opentelemetry.sdk.trace import TracerProvider

        tracer = TracerProvider().get_tracer("service")
    print(f"ready {os.getpid()}", flush=True)
    for n, _ in enumerate(sys.stdin, 1):
        if tracer is None:
            result = outer(4, "req")
        else:
            with tracer.start_as_current_span("request") as span:
                ctx = span.get_span_context()
                print(f"span {ctx.trace_id:032x} {ctx.span_id:016x}", flush=True)
                result = outer(4, "req")
        print(f"round {n} {result}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
