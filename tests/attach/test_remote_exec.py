"""``pyprobes attach`` to real processes started with no agent: the sys.remote_exec bootstrap.

What CPython 3.14 and 3.15 do, as these tests show: the script runs in the target's main
thread at its next eval-breaker check, at once for a thread running Python code. A main
thread blocked in a C call (``time.sleep``, a socket ``recv``) is not signalled or woken:
``remote_exec`` returns at once, the sleep goes on, and the script runs when the call returns.
A target started with ``PYTHON_DISABLE_REMOTE_DEBUG=1`` or ``-X disable-remote-debug`` makes
``remote_exec`` raise ``RuntimeError: Remote debugging is not enabled in the remote process``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from attach_helpers import LOOP, PROGRAMS, TIMEOUT, Child, base_env

from pyprobes.attach import bootstrap

pytestmark = pytest.mark.skipif(
    not hasattr(sys, "remote_exec"),
    reason="sys.remote_exec (PEP 768), which starts an agent in a running process, is new in"
    " CPython 3.14",
)

Cli = Callable[..., subprocess.CompletedProcess[str]]
Spawn = Callable[..., Child]
BLOCKED = str(PROGRAMS / "blocked_prog.py")
MINE = f"{sys.version_info[0]}.{sys.version_info[1]}"
DISABLE_ENV = "PYTHON_DISABLE_REMOTE_DEBUG"
NAMED_SYSCALLS = os.uname().machine in ("x86_64", "aarch64")


@pytest.fixture(autouse=True)
def _ptrace_allowed() -> None:
    scope = bootstrap.ptrace_scope()
    if os.geteuid() != 0 and scope not in (None, 0) and not bootstrap.has_cap_sys_ptrace():
        pytest.skip(f"kernel.yama.ptrace_scope={scope}: sys.remote_exec needs root here")


def sock_of(runtime: Path, pid: int) -> Path:
    return runtime / "pyprobes" / f"{pid}.sock"


def bootstrap_dirs(pid: int) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"pyprobes-bootstrap-{pid}-*"))


def until(pred: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Wait for a condition another process brings about (a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def blocked(pid: int) -> bool:
    state = bootstrap.main_thread_state(pid)
    return state is not None and "blocked in a C call" in state


def agent_threads(pid: int) -> int:
    """Threads of ``pid`` named pyprobes-agent (3.14 gives Python threads their OS names)."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            n += Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() == "pyprobes-agent"
        except OSError:
            pass
    return n


def listing(cli: Cli, pid: int) -> dict[str, object]:
    r = cli("list", str(pid), "--json")
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout)
    return out


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1, (r.returncode, r.stderr)
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("pyprobes: error: ")
    return line


def test_attach_starts_an_agent_streams_detaches_and_reuses_it(
    cli: Cli, spawn: Spawn, runtime: Path, tmp_path: Path
) -> None:
    child = spawn(LOOP, listen=False)
    pid = child.ready()
    sock = sock_of(runtime, pid)
    r = cli("list", str(pid))  # list only reads: it starts no agent
    assert "runs no pyprobes agent" in one_error_line(r) and not sock.exists()
    out = tmp_path / "events.jsonl"
    r = cli(
        "attach", str(pid), "-e", "p:w __main__:work n", "--format", "json", "-o", str(out),
        "--duration", "1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"pyprobes: attached to {pid} (Python {sys.version.split()[0]}:" in r.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert events and all(e["event"] == "w" and e["pid"] == pid for e in events)
    assert all(isinstance(e["args"]["n"], int) for e in events[:50])
    # detached: the program runs on, without probes; the agent stays and its files are gone
    assert sock.exists() and bootstrap_dirs(pid) == []
    after = listing(cli, pid)
    assert after["probes"] == [] and after["tool_id"] is None
    inode = os.stat(sock).st_ino
    child.progress_after(len(child.lines))
    # attach again: the same agent answers (no second bootstrap, no second thread)
    r = cli("attach", str(pid), "-e", "r:wr __main__:work $retval", "--count", "--duration", "0.5")
    assert r.returncode == 0, r.stderr
    assert "@wr: " in r.stderr
    assert os.stat(sock).st_ino == inode and agent_threads(pid) == 1
    assert listing(cli, pid)["probes"] == []
    n = len(child.lines)
    child.progress_after(n)
    assert child.finish() == 0
    numbers = [line.split() for line in child.lines if line[:1].isdigit()]
    assert numbers and all(int(t) == int(i) * (int(i) - 1) for i, t in numbers)
    assert child.lines[-1].startswith("done ") and child.err_lines == []
    assert not sock.exists()  # the agent unlinks its socket at exit


def test_a_busy_target_attaches(cli: Cli, spawn: Spawn) -> None:
    child = spawn(LOOP, "--busy", listen=False)
    pid = child.ready()
    r = cli("attach", str(pid), "-e", "p:w __main__:work n", "--count", "--duration", "0.5")
    assert r.returncode == 0, r.stderr
    (count,) = [line for line in r.stderr.splitlines() if line.startswith("@w: ")]
    assert int(count.split()[1]) > 0
    child.wait_line(lambda s: s.startswith("rate "), start=len(child.lines))
    assert child.finish() == 0 and child.err_lines == []


@pytest.mark.parametrize(
    ("args", "extra_env", "cause"),
    [
        ((), {"PYTHON_DISABLE_REMOTE_DEBUG": "1"}, f"its environment sets {DISABLE_ENV}"),
        (("-X", "disable-remote-debug"), {}, "it was started with -X disable-remote-debug"),
    ],
    ids=["env", "X-option"],
)  # fmt: skip
def test_remote_debugging_disabled_in_the_target_is_one_line(
    cli: Cli,
    spawn: Spawn,
    runtime: Path,
    args: tuple[str, ...],
    extra_env: dict[str, str],
    cause: str,
) -> None:
    child = spawn(*args, LOOP, extra_env=extra_env, listen=False)
    pid = child.ready()
    line = one_error_line(cli("attach", str(pid), "-e", "p __main__:work", "--duration", "1"))
    assert line.startswith(
        f"pyprobes: error: remote debugging is disabled in process {pid} ({cause}), so pyprobes"
        " cannot start an agent in it: restart it without that, or start it with"
        " PYPROBES_AGENT=1"
    )
    assert not sock_of(runtime, pid).exists() and bootstrap_dirs(pid) == []
    child.progress_after(len(child.lines))
    assert child.finish() == 0 and child.err_lines == []


def test_a_main_thread_in_time_sleep_is_not_woken(
    cli: Cli, spawn: Spawn, env: dict[str, str], runtime: Path
) -> None:
    child = spawn(BLOCKED, "sleep", listen=False)
    pid = child.ready()
    until(lambda: blocked(pid), "the main thread to sleep")
    env[bootstrap.TIMEOUT_ENV] = "1"
    started = time.monotonic()
    line = one_error_line(cli("attach", str(pid), "-e", "p __main__:work"))
    assert time.monotonic() - started < TIMEOUT
    assert f"process {pid} did not run the bootstrap within 1s: its main thread is blocked" in line
    if NAMED_SYSCALLS:
        assert "(the system call clock_nanosleep, as in time.sleep)" in line
    assert f"run 'pyprobes attach {pid}' again later" in line
    # remote_exec neither interrupted the sleep nor disturbed the program
    assert blocked(pid) and child.proc.poll() is None
    assert "slept" not in child.lines and child.err_lines == []
    assert not sock_of(runtime, pid).exists()
    child.kill()


def test_a_main_thread_in_recv_runs_the_bootstrap_when_the_call_returns(
    cli: Cli, spawn: Spawn, env: dict[str, str], runtime: Path
) -> None:
    path = runtime / "feed"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(TIMEOUT)
    child = spawn(BLOCKED, "recv", str(path), listen=False)
    conn, _ = server.accept()
    try:
        pid = child.ready()
        until(lambda: blocked(pid), "the main thread to block in recv")
        env[bootstrap.TIMEOUT_ENV] = "1"
        line = one_error_line(cli("attach", str(pid), "-e", "p __main__:work"))
        assert "did not run the bootstrap within 1s: its main thread is blocked" in line
        if NAMED_SYSCALLS:
            assert "(the system call recvfrom, as in a socket recv)" in line
        sock = sock_of(runtime, pid)
        assert not sock.exists() and len(bootstrap_dirs(pid)) == 1
        # the request stayed queued: once recv returns, the main thread starts the agent
        conn.sendall(b"go\n")
        child.wait_line(lambda s: s == "woke go")
        until(sock.exists, "the agent's socket")
        until(lambda: bootstrap_dirs(pid) == [], "the bootstrap to remove its files")
        r = cli("attach", str(pid), "-e", "p:w __main__:work n", "--count", "--duration", "0.5")
        assert r.returncode == 0, r.stderr
        assert any(line.startswith("@w: ") for line in r.stderr.splitlines())
        assert child.finish() == 0 and child.err_lines == []
        assert child.lines[-1].startswith("done ")
    finally:
        conn.close()
        server.close()


def ps_rows(cli: Cli) -> dict[int, dict[str, object]]:
    r = cli("ps", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    return {int(row["pid"]): row for row in rows}


def test_ps_lists_a_process_without_an_agent_and_then_with_one(cli: Cli, spawn: Spawn) -> None:
    hostile = "\x1b[31mred\nline"
    child = spawn(LOOP, hostile, listen=False)
    pid = child.ready()
    row = ps_rows(cli)[pid]
    assert row["agent"] is False and row["attachable"] is True and row["python"] == MINE
    assert row["argv"] == [sys.executable, LOOP, hostile]
    assert row["note"] == f"no agent yet: 'pyprobes attach {pid}' starts one"
    r = cli("ps")
    assert r.stdout.splitlines()[0].split() == [
        "PID", "PYTHON", "AGENT", "CLIENTS", "PROBES", "COMMAND",
    ]  # fmt: skip
    (line,) = [s for s in r.stdout.splitlines() if s.split()[0] == str(pid)]
    assert line.split()[1:5] == [MINE, "no", "-", "-"]
    assert line.endswith(f"loop_prog.py \\x1b[31mred\\nline  ({row['note']})")
    assert "\x1b" not in r.stdout  # the target's text cannot drive the terminal
    r = cli("attach", str(pid), "-e", "p __main__:work", "--duration", "0.3")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stderr and "\\x1b[31mred\\nline" in r.stderr
    row = ps_rows(cli)[pid]
    assert row["agent"] is True and row["clients"] == 0 and row["probes"] == 0
    assert row["python"] == sys.version.split()[0]
    assert child.finish() == 0


def test_ps_and_attach_name_the_python_another_version_needs(
    cli: Cli, runtime: Path, env: dict[str, str]
) -> None:
    other = next(
        (v for v in ("3.15", "3.14", "3.16") if v != MINE and shutil.which(f"python{v}")), None
    )
    if other is None:
        pytest.skip("needs a second CPython 3.14+ (python3.14/python3.15 on PATH)")
    child = Child([str(shutil.which(f"python{other}")), LOOP], base_env(runtime))
    try:
        pid = child.ready()
        row = ps_rows(cli)[pid]
        assert row["agent"] is False and row["attachable"] is False
        assert row["python"] == other
        assert row["note"] == f"no agent; attach needs pyprobes on {other}"
        line = one_error_line(cli("attach", str(pid), "-e", "p __main__:work"))
        assert f"process {pid} runs Python {other} but this pyprobes runs on {MINE}" in line
        assert f"'python{other} -m pyprobes attach {pid}'" in line
        assert bootstrap_dirs(pid) == []
    finally:
        child.kill()
