"""``pyprobes run --otlp``: a real run of a small program exports its return probes'
activations as spans and its aggregations as metrics to an OTLP/HTTP receiver on loopback."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from otlp_receiver import Received, attrs, receiver

from pyprobes.cli.otlp import INSTALL_HINT

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAMS = os.path.join(HERE, "programs")
SRC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "src")
ENV = {**os.environ, "PYTHONPATH": SRC}
PROBES = [
    "-e", "r:outer __main__:outer n tag",
    "-e", "r:inner __main__:inner x",
    "-e", "r:handler __main__:handler name",
    "-e", "r:child __main__:child name",
    "-e", "r:numbers __main__:numbers",
    "-e", "r:consume __main__:consume",
]  # fmt: skip


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env or ENV,
        cwd=PROGRAMS,
        timeout=120,
    )


def _pyprobes(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return _run("-m", "pyprobes", "run", *args, env=env)


def _by_name(spans: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


def _within(child: Any, parent: Any) -> bool:
    return (
        child.trace_id == parent.trace_id
        and child.parent_span_id == parent.span_id
        and parent.start_time_unix_nano <= child.start_time_unix_nano
        and child.end_time_unix_nano <= parent.end_time_unix_nano
    )


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[subprocess.CompletedProcess[str], Received]]:
    with receiver() as (url, got):
        proc = _pyprobes("--otlp", url, *PROBES, "--count", "otlp_prog.py", "otel")
        yield proc, got  # the run has ended: its exports were answered before it exited


def test_the_program_runs_as_without_pyprobes(traced: Any) -> None:
    proc, _ = traced
    plain = _run("otlp_prog.py", "otel")
    assert proc.returncode == plain.returncode == 3, proc.stderr
    assert proc.stdout.splitlines()[:3] == plain.stdout.splitlines()[:3]
    assert re.search(r"^pyprobes: OTLP: 19 spans sent to http://127\.0\.0\.1:\d+/v1/traces$",
                     proc.stderr, re.M), proc.stderr  # fmt: skip
    assert "not delivered" not in proc.stderr


def test_spans_nest_as_the_calls_did_on_each_thread(traced: Any) -> None:
    _, got = traced
    spans = _by_name(got.spans)
    assert {k: len(v) for k, v in spans.items()} == {
        "outer": 3, "inner": 3 + 2 + 2 + 1, "handler": 2, "child": 4, "numbers": 1, "consume": 1,
    }  # fmt: skip
    outers = {attrs(s)["tag"]: s for s in spans["outer"]}
    assert set(outers) == {"main", "thread", "otel"}
    for tag, n in (("main", 3), ("thread", 2)):
        parent = outers[tag]
        assert parent.parent_span_id == b""  # a root: no enclosing activation, no program span
        kids = [s for s in spans["inner"] if s.parent_span_id == parent.span_id]
        assert len(kids) == n
        assert all(_within(k, parent) for k in kids)
        assert sorted(attrs(k)["x"] for k in kids) == list(range(n))
    assert outers["main"].trace_id != outers["thread"].trace_id  # one trace per root
    assert attrs(outers["thread"])["thread.name"] == "worker"
    assert attrs(outers["main"])["code.function.name"] == "__main__:outer"


def test_an_activation_that_raised_has_error_status_with_its_type(traced: Any) -> None:
    _, got = traced
    inners = _by_name(got.spans)["inner"]
    raised = [s for s in inners if attrs(s)["x"] == 2]
    assert len(raised) == 1
    assert raised[0].status.code == raised[0].status.STATUS_CODE_ERROR
    assert raised[0].status.message == "ValueError"
    assert attrs(raised[0])["exception.type"] == "ValueError"
    ok = [s for s in inners if attrs(s)["x"] != 2]
    assert all(s.status.code == s.status.STATUS_CODE_UNSET for s in ok)


def test_asyncio_tasks_nest_in_their_own_task(traced: Any) -> None:
    _, got = traced
    spans = _by_name(got.spans)
    handlers = {attrs(s)["name"]: s for s in spans["handler"]}
    for name, h in handlers.items():
        kids = [s for s in spans["child"] if s.parent_span_id == h.span_id]
        assert sorted(attrs(k)["name"] for k in kids) == [name, name + "!"]
        assert all(_within(k, h) for k in kids)
        assert attrs(h)["pyprobes.async"] is True
    # the two tasks ran interleaved, yet neither handler encloses the other
    assert handlers["a"].parent_span_id != handlers["b"].span_id
    assert handlers["b"].parent_span_id != handlers["a"].span_id


def test_a_suspended_generator_encloses_nothing(traced: Any) -> None:
    _, got = traced
    spans = _by_name(got.spans)
    consume, numbers = spans["consume"][0], spans["numbers"][0]
    assert _within(numbers, consume)
    kids = [s for s in spans["inner"] if s.parent_span_id == consume.span_id]
    assert len(kids) == 2  # called between the generator's yields: children of consume


def test_a_root_activation_takes_the_programs_active_span_as_parent(traced: Any) -> None:
    proc, got = traced
    m = re.search(r"^otel ([0-9a-f]{32}) ([0-9a-f]{16})$", proc.stdout, re.M)
    assert m is not None, proc.stdout
    outer = next(s for s in got.spans if s.name == "outer" and attrs(s)["tag"] == "otel")
    assert outer.trace_id.hex() == m.group(1)
    assert outer.parent_span_id.hex() == m.group(2)
    (kid,) = [s for s in got.spans if s.parent_span_id == outer.span_id]
    assert _within(kid, outer)


def test_aggregations_go_out_as_metrics(traced: Any) -> None:
    _, got = traced
    assert got.metrics, "no metrics were sent"
    last = got.metrics[-1]  # sent at the end: the final figures
    (rm,) = last.resource_metrics
    metrics = {m.name: m for sm in rm.scope_metrics for m in sm.metrics}
    events = {attrs(p)["event"]: p.as_int for p in metrics["pyprobes.events"].sum.data_points}
    assert events == {"outer": 3, "inner": 8, "handler": 2, "child": 4, "numbers": 1,
                      "consume": 1}  # fmt: skip
    assert metrics["pyprobes.events"].sum.is_monotonic
    hits = {attrs(p)["event"]: p.as_int for p in metrics["pyprobes.probe.hits"].sum.data_points}
    assert hits == events
    res = {kv.key: kv.value for kv in rm.resource.attributes}
    assert res["service.name"].string_value == "otlp_prog"


def test_hist_goes_out_as_an_otlp_histogram_in_seconds() -> None:
    with receiver() as (url, got):
        proc = _pyprobes("--otlp", url, "-e", "r:inner __main__:inner", "--hist", "otlp_prog.py")
    assert proc.returncode == 3, proc.stderr
    rm = got.metrics[-1].resource_metrics[0]
    (hist,) = [m for sm in rm.scope_metrics for m in sm.metrics if m.name == "pyprobes.duration"]
    assert hist.unit == "s"
    (point,) = hist.histogram.data_points
    assert point.count == 7 == sum(point.bucket_counts)
    assert len(point.bucket_counts) == len(point.explicit_bounds) + 1
    assert point.explicit_bounds[:3] == [1e-9, 3e-9, 7e-9]  # log2 buckets: 2**k - 1 ns
    assert list(point.explicit_bounds) == sorted(point.explicit_bounds)
    durations = [s.end_time_unix_nano - s.start_time_unix_nano for s in got.spans]
    assert len(durations) == 7
    assert point.max == pytest.approx(max(durations) / 1e9, rel=1e-6)


@contextmanager
def _refusing_port() -> Iterator[int]:
    """A loopback port bound and not listening: every connection to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_a_stopped_receiver_loses_spans_without_changing_the_program() -> None:
    plain = _run("otlp_prog.py")
    with _refusing_port() as port:
        proc = _pyprobes("--otlp", f"http://127.0.0.1:{port}", *PROBES, "otlp_prog.py")
    assert proc.returncode == plain.returncode == 3
    assert proc.stdout == plain.stdout
    assert f"pyprobes: OTLP: 0 spans sent to http://127.0.0.1:{port}/v1/traces" in proc.stderr
    m = re.search(r"^pyprobes: warning: OTLP: (\d+) spans not delivered \((.*)\): (.*)$",
                  proc.stderr, re.M)  # fmt: skip
    assert m is not None, proc.stderr
    assert int(m.group(1)) == 17  # every span of the run (no "otel" part: 19 - 2)
    assert m.group(3) == "[Errno 111] Connection refused"
    assert "Traceback" not in proc.stderr


def test_spans_past_the_export_queue_are_counted_as_dropped() -> None:
    env = {**ENV, "OTEL_BSP_MAX_QUEUE_SIZE": "4", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4"}
    with _refusing_port() as port:
        proc = _pyprobes("--otlp", f"http://127.0.0.1:{port}", *PROBES, "otlp_prog.py", env=env)
    assert proc.returncode == 3
    m = re.search(r"^pyprobes: warning: OTLP: 17 spans not delivered \((.*)\)", proc.stderr, re.M)
    assert m is not None, proc.stderr
    counts = [int(n.replace(",", "")) for n in re.findall(r"([\d,]+) (?:dropped|in exports)",
                                                          m.group(1))]  # fmt: skip
    assert sum(counts) == 17


def test_otlp_events_also_go_to_a_file_when_asked(tmp_path: Any) -> None:
    out = tmp_path / "events.jsonl"
    with receiver() as (url, got):
        proc = _pyprobes("--otlp", url, "-e", "r:inner __main__:inner x", "-o", str(out),
                         "--format", "json", "otlp_prog.py")  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 7 == len(got.spans)
    # each line names its activation, as the span's id and parent are made from it
    assert sorted(line["activation"][0] for line in lines) == list(range(1, 8))


def test_without_the_sdk_otlp_is_one_line_saying_how_to_install_it(tmp_path: Any) -> None:
    # A stand-in package that fails to import, first on the path, as a missing SDK would.
    fake = tmp_path / "opentelemetry"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no opentelemetry here')\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(tmp_path), SRC])}
    proc = _pyprobes("--otlp", "http://127.0.0.1:4318", "-e", "r __main__:inner", "otlp_prog.py",
                     env=env)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"pyprobes: error: {INSTALL_HINT}"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--otlp", "ftp://x", "-e", "r __main__:inner"], "an OTLP/HTTP endpoint is http://"),
        (["--otlp", "http://127.0.0.1:4318", "-e", "p __main__:inner"], "give an r probe"),
        (["--otlp", "http://127.0.0.1:4318", "-e", "r __main__:inner", "--count",
          "--interval", "1"], "--interval resets"),
    ],
)  # fmt: skip
def test_bad_otlp_options_are_one_line(args: list[str], message: str) -> None:
    proc = _pyprobes(*args, "otlp_prog.py")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr


def test_the_exports_fire_no_probe() -> None:
    # The exporter posts with urllib3 and http.client on the SDK's threads: probes there would
    # make spans of the export itself. The program never uses them; it waits (for a line on
    # its stdin) until spans were exported while its probes are armed.
    env = {**ENV, "OTEL_BSP_SCHEDULE_DELAY": "10"}
    with receiver() as (url, got):
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyprobes", "run", "--otlp", url,
             "-e", "r:inner __main__:inner", "-e", "r:begin http.client:HTTPResponse.begin",
             "-e", "r:req urllib3.connection:HTTPConnection.request", "otlp_prog.py", "wait"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env, cwd=PROGRAMS,
        )  # fmt: skip
        try:
            assert got.got_spans.wait(60), "no span was exported while the program ran"
        finally:
            out, err = proc.communicate("go\n", timeout=120)
    assert proc.returncode == 3, err
    assert re.search(r"^begin\s+0\s", err, re.M), err
    assert re.search(r"^req\s+0\s", err, re.M), err
    assert {s.name for s in got.spans} == {"inner"}
    assert out.startswith("[0, 2, None]\n")


def test_check_says_which_probes_make_spans_from_records() -> None:
    proc = _run("-m", "pyprobes", "check", "--script", "otlp_prog.py", "--otlp",
                "http://127.0.0.1:4318", "r __main__:inner x", "r __main__:inner x:repr",
                "--count")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first.endswith("[program, spans from records in the core]"), proc.stdout
    assert "[python: " in second and "repr" in second, proc.stdout


def test_a_forked_child_sends_and_reports_nothing() -> None:
    with receiver() as (url, got):
        proc = _pyprobes("--otlp", url, "-e", "r:inner __main__:inner x", "otlp_prog.py", "fork")
    assert proc.returncode == 3, proc.stderr
    assert sorted(attrs(s)["x"] for s in got.spans) == [0, 0, 0, 1, 1, 1, 2]  # no 5: the child's
    assert len(re.findall(r"^pyprobes: OTLP:", proc.stderr, re.M)) == 1, proc.stderr
    rm = got.metrics[-1].resource_metrics[0]
    pids = {kv.value.int_value for kv in rm.resource.attributes if kv.key == "process.pid"}
    main = next(s for s in got.spans if attrs(s)["thread.name"] == "MainThread")
    assert len(got.metrics) == 1 and pids == {attrs(main)["thread.id"]}  # the parent's pid
