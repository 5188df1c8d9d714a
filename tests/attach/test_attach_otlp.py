"""``pyprobes attach PID --otlp``: a running service's return probes become spans, exported
from the client to an OTLP/HTTP receiver on loopback; the target only streams its events."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from attach_helpers import PROGRAMS, SRC, TIMEOUT, Child, Raw

from cli.otlp_receiver import Received, attrs, receiver

Spawn = Callable[..., Child]
TARGET = str(PROGRAMS / "otlp_target.py")
PROBES = ["-e", "r:outer __main__:outer n tag", "-e", "r:inner __main__:inner x"]
RESULT = "[0, 2, None, 6]"


@contextmanager
def _refusing_port() -> Iterator[int]:
    """A loopback port bound and not listening: every connection to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _attach(env: dict[str, str], pid: int, *args: str) -> subprocess.Popen[str]:
    """``pyprobes attach`` running, returned once it said its probes are placed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyprobes", "attach", str(pid), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=PROGRAMS,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert f"pyprobes: attached to {pid}" in first, first + proc.communicate(timeout=TIMEOUT)[1]
    return proc


def _detach(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Ctrl-C the attach: it detaches, exports what is left, reports; (status, stderr)."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, err


def _request(child: Child, n: int) -> str:
    """Have the service run request ``n``; its result line."""
    start = len(child.lines)
    child.send("go\n")
    _, line = child.wait_line(lambda s: s.startswith(f"round {n} "), start=start)
    return line


def _by_name(spans: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


@pytest.fixture
def traced(
    spawn: Spawn, env: dict[str, str]
) -> Iterator[tuple[Child, subprocess.Popen[str], int, str, Received]]:
    """A service running one request under its own OpenTelemetry span while attached with
    --otlp: (the service, the finished attach, its status, its stderr, what was received)."""
    child = spawn(TARGET, "otel")
    pid = child.ready()
    with receiver() as (url, got):
        proc = _attach(env, pid, "--otlp", url, *PROBES, "--count")
        assert _request(child, 1) == f"round 1 {RESULT}"
        rc, err = _detach(proc)
        yield child, proc, rc, err, got


def test_attached_spans_nest_with_attributes_and_error_status(traced: Any) -> None:
    child, _, rc, err, got = traced
    assert rc == 0, err
    assert "pyprobes: OTLP: 5 spans sent to http://127.0.0.1:" in err, err
    assert "not delivered" not in err
    spans = _by_name(got.spans)
    assert {k: len(v) for k, v in spans.items()} == {"outer": 1, "inner": 4}
    (outer,) = spans["outer"]
    assert attrs(outer)["n"] == 4 and attrs(outer)["tag"] == "req"
    assert attrs(outer)["code.function.name"] == "__main__:outer"
    assert attrs(outer)["thread.name"] == "MainThread"
    for kid in spans["inner"]:
        assert kid.trace_id == outer.trace_id and kid.parent_span_id == outer.span_id
        assert outer.start_time_unix_nano <= kid.start_time_unix_nano
        assert kid.end_time_unix_nano <= outer.end_time_unix_nano
    assert sorted(attrs(k)["x"] for k in spans["inner"]) == [0, 1, 2, 3]
    raised = [s for s in spans["inner"] if attrs(s)["x"] == 2]
    assert raised[0].status.code == raised[0].status.STATUS_CODE_ERROR
    assert raised[0].status.message == "ValueError"
    assert attrs(raised[0])["exception.type"] == "ValueError"
    assert all(
        s.status.code == s.status.STATUS_CODE_UNSET for s in spans["inner"] if attrs(s)["x"] != 2
    )
    # the root's parent is the span the service had active (its own tracer, in the target)
    (line,) = [s for s in child.lines if s.startswith("span ")]
    _, trace_hex, span_hex = line.split()
    assert outer.trace_id.hex() == trace_hex and outer.parent_span_id.hex() == span_hex
    # the resource is the target's, not the client's
    resource = {a.key: a.value for a in got.resources[0].attributes}
    assert resource["process.pid"].int_value == child.pid
    assert resource["service.name"].string_value == "otlp_target"


def test_attached_aggregations_go_out_as_metrics(traced: Any) -> None:
    _, _, rc, err, got = traced
    assert rc == 0, err
    sums: dict[tuple[str, str], int] = {}
    for req in got.metrics:
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.WhichOneof("data") == "sum":
                        for p in m.sum.data_points:
                            sums[(m.name, str(attrs(p)["event"]))] = p.as_int
    # the last export (at the end) holds the session's counts
    assert sums[("pyprobes.events", "inner")] == 4
    assert sums[("pyprobes.probe.hits", "outer")] == 1


def test_a_receiver_that_is_down_loses_spans_and_changes_nothing_in_the_target(
    spawn: Spawn, env: dict[str, str]
) -> None:
    child = spawn(TARGET)
    pid = child.ready()
    with _refusing_port() as port:
        proc = _attach(env, pid, "--otlp", f"http://127.0.0.1:{port}", *PROBES)
        assert _request(child, 1) == f"round 1 {RESULT}"
        rc, err = _detach(proc)
    assert rc == 0, err
    assert "pyprobes: OTLP: 0 spans sent" in err, err
    assert "pyprobes: warning: OTLP: 5 spans not delivered (5 in exports that failed" in err
    assert "Connection refused" in err
    # the service goes on as it would have, and ends as it would have
    assert _request(child, 2) == f"round 2 {RESULT}"
    assert child.finish() == 0
    assert child.lines[-1] == "done"
    assert child.err_lines == []


def test_otlp_without_the_sdk_in_the_client_is_one_line(
    spawn: Spawn, env: dict[str, str], tmp_path: Path
) -> None:
    """The SDK is the client's need alone: a client without it says how to install it before
    touching the target."""
    from pyprobes.cli.otlp import INSTALL_HINT

    child = spawn(TARGET)
    pid = child.ready()
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "opentelemetry").mkdir()
    (blocker / "opentelemetry" / "__init__.py").write_text("raise ImportError('no otel')\n")
    r = subprocess.run(
        [sys.executable, "-m", "pyprobes", "attach", str(pid), "--otlp", "http://x:1", *PROBES],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": f"{blocker}:{SRC}"},
        timeout=TIMEOUT,
    )
    assert r.returncode == 2 and r.stderr.strip().endswith(INSTALL_HINT), r.stderr
    assert "attached" not in r.stderr
    assert _request(child, 1) == f"round 1 {RESULT}"


def _agent_socket(runtime: Path, pid: int) -> Path:
    return runtime / "pyprobes" / f"{pid}.sock"


def test_the_protocol_without_spans_is_unchanged_and_spans_carry_links(
    spawn: Spawn, runtime: Path
) -> None:
    child = spawn(TARGET)
    pid = child.ready()
    # no spans: the events have no activation, as before
    plain = _events_of(runtime, pid, child, {})
    assert sorted(e["event"] for e in plain) == ["in"] * 4 + ["inner"] * 4 + ["outer"]
    assert all("activation" not in e for e in plain)
    # spans: every return carries its link, numbered across the client's specs
    linked = _events_of(runtime, pid, child, {"spans": True})
    (outer,) = [e for e in linked if e["event"] == "outer"]
    inners = [e for e in linked if e["event"] == "inner"]
    n, parent, root, trace, span = outer["activation"]  # type: ignore[misc]
    assert parent == 0 and root == n and trace == span == ""
    assert len(inners) == 4
    for e in inners:
        kid = e["activation"]
        assert kid[1:] == [n, n, "", ""], kid  # type: ignore[index]
    assert len({e["activation"][0] for e in inners}) == 4  # type: ignore[index]
    entries = [e for e in linked if e["event"] == "in"]
    assert len(entries) == 4 and all("activation" not in e for e in entries)


def _events_of(
    runtime: Path, pid: int, child: Child, fields: dict[str, object]
) -> list[dict[str, object]]:
    """The events a raw client gets for one request of the service, adding with ``fields``."""
    raw = Raw(_agent_socket(runtime, pid))
    try:
        assert raw.hello()["type"] == "welcome"
        specs = ["r:outer __main__:outer n", "r:inner __main__:inner", "p:in __main__:inner"]
        ok = raw.request("add", id=1, specs=specs, **fields)
        assert ok["type"] == "ok", ok
        _request(child, len([s for s in child.lines if s.startswith("round ")]) + 1)
        raw.send({"type": "detach", "id": 2})
        raw.until("detached")
        return raw.events
    finally:
        raw.close()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"spans": 1}, "add.spans must be true or false"),
        ({"spans": True, "aggregate": {"count": True}}, "ask for one of them"),
    ],
)
def test_bad_spans_requests_are_refused_placing_nothing(
    spawn: Spawn, runtime: Path, fields: dict[str, object], message: str
) -> None:
    child = spawn(TARGET)
    pid = child.ready()
    raw = Raw(_agent_socket(runtime, pid))
    try:
        raw.hello()
        reply = raw.request("add", id=1, specs=["r __main__:outer"], **fields)
        assert reply["type"] == "error" and reply["code"] == "bad-message"
        assert message in str(reply["message"])
        assert raw.request("status", id=2)["probes"] == []
    finally:
        raw.close()


def test_an_agent_that_predates_spans_is_a_one_line_refusal() -> None:
    """An older agent refuses the unknown field (and places nothing): the client says why."""
    from pyprobes.attach.errors import AttachError, RemoteError
    from pyprobes.cli.attach import _add_spans

    class Old:
        pid = 4242
        welcome = {"pyprobes": "0.9"}

        def request(self, rtype: str, **fields: object) -> dict[str, object]:
            raise RemoteError(
                "bad-message",
                "process 4242: add has no field 'spans': allowed are id, specs, aggregate",
            )

    with pytest.raises(AttachError, match=r"its agent \(pyprobes 0\.9\) cannot send spans"):
        _add_spans(Old(), ["r m:f"])  # type: ignore[arg-type]
