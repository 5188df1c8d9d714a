"""``pyprobes attach`` to real CPython 3.12/3.13 processes started with no agent: the gdb bootstrap.

Each target is attached (gdb queues the agent's start, a pending call runs it), probed,
detached and attached again (the same agent: no second gdb session), and its own output
and exit status are checked at the end. Synchronisation is on what the processes show:
their output lines, their /proc entries (TracerPid, state), files and sockets appearing.
What these tests show CPython 3.12 and 3.13 do: the pending call runs at once in a target
running Python code in any thread (a main thread blocked in ``join`` does not stop it), runs
when ``recv`` or ``time.sleep`` returns, and never while every thread is blocked in C.
"""

from __future__ import annotations

import dis
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from attach_helpers import PROGRAMS, SRC, TIMEOUT, Child, base_env

from pyprobes.attach import bootstrap, gdbinject
from pyprobes.attach.errors import AttachPermissionError, NoAgentError, NoSuchProcessError

pytestmark = [
    pytest.mark.skipif(
        not gdbinject.GDB_SINCE <= sys.version_info[:2] < gdbinject.GDB_UNTIL,
        reason="the gdb bootstrap is for CPython 3.12 and 3.13 (3.14+ use sys.remote_exec)",
    ),
    # The bootstrap is the same whichever core the agent then runs: these tests (the longest
    # of the suite) are core-independent (tests/conftest.py: run once per CPython by
    # scripts/dev test, in the C-core run); test_attach_process and test_agent attach to
    # agents of both cores.
    pytest.mark.core_independent,
]

Cli = Callable[..., subprocess.CompletedProcess[str]]
Spawn = Callable[..., Child]
PROG = str(PROGRAMS / "gdb_prog.py")
MINE = f"{sys.version_info[0]}.{sys.version_info[1]}"
PROBE = ("-e", "p:w __main__:work", "--count")


@pytest.fixture(autouse=True)
def _gdb_and_ptrace() -> None:
    if gdbinject.find_gdb() is None:
        pytest.fail(
            "gdb is not installed: these tests need it ('scripts/dev test' installs it as root;"
            " or apt-get install gdb)"
        )
    scope = bootstrap.ptrace_scope()
    if os.geteuid() != 0 and scope not in (None, 0) and not bootstrap.has_cap_sys_ptrace():
        pytest.skip(f"kernel.yama.ptrace_scope={scope}: gdb may not attach here (needs root)")


@pytest.fixture
def target(env: dict[str, str]) -> Iterator[Callable[..., Child]]:
    """Start gdb_prog.py MODE with no agent (no PYPROBES_AGENT, no --listen)."""
    children: list[Child] = []

    def start(*args: str, python: str = sys.executable) -> Child:
        child = Child([python, PROG, *args], env)
        children.append(child)
        return child

    try:
        yield start
    finally:
        for c in children:
            c.kill()


def sock_of(runtime: Path, pid: int) -> Path:
    return runtime / "pyprobes" / f"{pid}.sock"


def workdirs(pid: int) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"{gdbinject.WORKDIR_PREFIX}{pid}-*"))


def until(pred: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Wait for a condition another process brings about (a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def states(pid: int) -> set[str]:
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out.add(Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            pass
    return out


def untouched(pid: int) -> None:
    """Not traced any more, no thread stopped."""
    assert gdbinject.tracer_of(pid) == 0
    assert not {"T", "t"} & states(pid), states(pid)


def count_of(r: subprocess.CompletedProcess[str]) -> int:
    assert r.returncode == 0, r.stderr
    (line,) = [s for s in r.stderr.splitlines() if s.startswith("@w: ")]
    return int(line.split()[1])


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1, (r.returncode, r.stderr)
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("pyprobes: error: ")
    return line


def finished_cleanly(child: Child, prefix: str = "done") -> None:
    assert child.finish() == 0
    (line,) = [s for s in child.lines if s.startswith(prefix + " ")]
    _, calls, total, expected = line.split()
    assert int(calls) > 0 and total == expected
    assert child.err_lines == []
    assert not any(s.startswith("bad") for s in child.lines)


def attach_cycle(cli: Cli, runtime: Path, pid: int) -> None:
    """Attach (gdb starts the agent), probe, detach; attach again to the same agent."""
    assert not sock_of(runtime, pid).exists()
    r = cli("attach", str(pid), *PROBE, "--duration", "0.5")
    assert count_of(r) > 0
    assert f"pyprobes: attached to {pid} (Python {sys.version.split()[0]}:" in r.stderr
    sock = sock_of(runtime, pid)
    assert sock.exists() and workdirs(pid) == []
    untouched(pid)
    inode = os.stat(sock).st_ino
    r = cli("attach", str(pid), *PROBE, "--duration", "0.3")
    assert count_of(r) > 0
    assert os.stat(sock).st_ino == inode and workdirs(pid) == []
    listed = json.loads(cli("list", str(pid), "--json").stdout)
    assert listed["probes"] == []


@pytest.mark.parametrize("mode", ["busy", "sleep", "threads", "asyncio"])
def test_attach_probe_detach_and_attach_again(
    cli: Cli, target: Callable[..., Child], runtime: Path, mode: str
) -> None:
    child = target(mode)
    pid = child.ready()
    if mode == "threads":  # the main thread waits in join(): a worker runs the pending call
        until(lambda: "blocked in a C call" in (bootstrap.main_thread_state(pid) or ""), "join")
    attach_cycle(cli, runtime, pid)
    n = len(child.lines)
    finished_cleanly(child)
    assert len(child.lines) > n - 1
    assert not sock_of(runtime, pid).exists()  # the agent unlinks its socket at exit


def _feeder(runtime: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(runtime / "feed"))
    server.listen(1)
    server.settimeout(TIMEOUT)
    return server


def _queued(pid: int) -> bool:
    return any((d / "queued").exists() for d in workdirs(pid))


def _probes(cli: Cli, pid: int) -> list[object]:
    r = cli("list", str(pid), "--json")
    return list(json.loads(r.stdout)["probes"]) if r.returncode == 0 else []


def _background_attach(env: dict[str, str], pid: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pyprobes", "attach", str(pid), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=PROGRAMS,
    )


def _probe_while_feeding(cli: Cli, env: dict[str, str], pid: int, conn: socket.socket,
                         child: Child, n: int) -> str:  # fmt: skip
    """Attach (no agent needed), send n lines once the probe is in, detach: the stderr."""
    client = _background_attach(env, pid, *PROBE)
    until(lambda: bool(_probes(cli, pid)), "the client's probe")
    start = len(child.lines)
    conn.sendall(b"x\n" * n)
    for _ in range(n):
        start = child.wait_line(lambda s: s.startswith("ok "), start=start)[0] + 1
    client.send_signal(signal.SIGINT)
    _, err = client.communicate(timeout=TIMEOUT)
    assert client.returncode == 0, err
    return err


def test_a_target_blocked_in_recv_starts_its_agent_when_recv_returns(
    cli: Cli, target: Callable[..., Child], runtime: Path, env: dict[str, str]
) -> None:
    server = _feeder(runtime)
    child = target("recv", str(runtime / "feed"))
    conn, _ = server.accept()
    try:
        pid = child.ready()
        until(lambda: "recvfrom" in (bootstrap.main_thread_state(pid) or ""), "recv")
        client = _background_attach(env, pid, *PROBE)
        until(lambda: _queued(pid), "gdb to queue the start")
        untouched(pid)  # gdb has detached; the target is blocked in recv, not stopped
        assert client.poll() is None and not sock_of(runtime, pid).exists()
        conn.sendall(b"wake\n")  # recv returns, Python code runs: the pending call with it
        child.wait_line(lambda s: s == "ok 4")
        until(lambda: bool(_probes(cli, pid)), "the agent and the client's probe")
        start = len(child.lines)
        conn.sendall(b"abc\n" * 5)
        for _ in range(5):
            start = child.wait_line(lambda s: s == "ok 3", start=start)[0] + 1
        client.send_signal(signal.SIGINT)
        _, err = client.communicate(timeout=TIMEOUT)
        assert client.returncode == 0, err
        assert "@w: 5" in err.splitlines()
        assert workdirs(pid) == []
        # attach again: the agent is there, no gdb; the main thread is back in recv
        until(lambda: "recvfrom" in (bootstrap.main_thread_state(pid) or ""), "recv")
        err = _probe_while_feeding(cli, env, pid, conn, child, 3)
        assert "@w: 3" in err.splitlines() and workdirs(pid) == []
        conn.close()
        child.wait_line(lambda s: s.startswith("done "))
        finished_cleanly(child)
    finally:
        conn.close()
        server.close()


def test_no_safe_point_gives_up_cleanly_and_queues_nothing_twice(
    cli: Cli, target: Callable[..., Child], runtime: Path, env: dict[str, str]
) -> None:
    child = target("longsleep")
    pid = child.ready()
    until(lambda: "clock_nanosleep" in (bootstrap.main_thread_state(pid) or ""), "the sleep")
    env[bootstrap.TIMEOUT_ENV] = "1"
    line = one_error_line(cli("attach", str(pid), *PROBE))
    assert line.startswith(
        f"pyprobes: error: process {pid} reached no safe point within 1s: its main thread is"
        " blocked in a C call (the system call clock_nanosleep, as in time.sleep)"
    )
    assert "its start stays queued, so it happens then" in line
    assert f"run 'pyprobes attach {pid}' again later" in line
    untouched(pid)
    assert child.proc.poll() is None and child.err_lines == []
    (queued,) = workdirs(pid)
    # a second attach waits for the queued start instead of queueing another (no gdb)
    line = one_error_line(cli("attach", str(pid), *PROBE))
    assert "its start was queued earlier and still waits" in line
    assert workdirs(pid) == [queued] and (queued / "gdb.log").exists()
    row = {r["pid"]: r for r in map(json.loads, cli("ps", "--json").stdout.splitlines())}[pid]
    assert row["agent"] is False and row["attachable"] is True and "queued" in str(row["note"])
    untouched(pid)
    child.kill()
    assert gdbinject.queued_bootstrap(pid) is None and workdirs(pid) == []  # a dead pid's


def test_the_target_exiting_during_the_bootstrap_is_one_line(
    cli: Cli, target: Callable[..., Child], runtime: Path, env: dict[str, str]
) -> None:
    server = _feeder(runtime)
    child = target("recv", str(runtime / "feed"))
    conn, _ = server.accept()
    try:
        pid = child.ready()
        client = _background_attach(env, pid, *PROBE)
        until(lambda: _queued(pid), "gdb to queue the start")
        child.proc.kill()  # it dies blocked in recv: the queued start never runs
        _, err = client.communicate(timeout=TIMEOUT)
        assert client.returncode == 1, err
        assert err.strip().splitlines() == [
            f"pyprobes: error: process {pid} exited during the attach"
        ]
        assert workdirs(pid) == []
    finally:
        conn.close()
        server.close()


def test_a_client_killed_during_the_gdb_session_leaves_the_target_running(
    cli: Cli, target: Callable[..., Child], runtime: Path, env: dict[str, str]
) -> None:
    child = target("busy")
    pid = child.ready()
    client = _background_attach(env, pid, *PROBE)
    until(lambda: gdbinject.tracer_of(pid) != 0, "gdb to attach", timeout=TIMEOUT)
    client.kill()  # SIGKILL: gdb, in a session of its own, finishes and detaches anyway
    client.communicate(timeout=TIMEOUT)
    until(lambda: gdbinject.tracer_of(pid) == 0, "gdb to detach")
    untouched(pid)
    sock = sock_of(runtime, pid)
    until(sock.exists, "the queued start to run")  # nobody waits, the agent starts all the same
    n = len(child.lines)
    # the thread that started the agent removed the files the killed client left
    until(lambda: workdirs(pid) == [], "the bootstrap's files to go")
    assert count_of(cli("attach", str(pid), *PROBE, "--duration", "0.3")) > 0
    assert child.proc.poll() is None and len(child.lines) >= n
    finished_cleanly(child)


def test_two_clients_at_once_start_one_agent(
    cli: Cli, target: Callable[..., Child], runtime: Path, env: dict[str, str]
) -> None:
    child = target("busy")
    pid = child.ready()
    clients = [_background_attach(env, pid, *PROBE, "--duration", "0.5") for _ in range(2)]
    for c in clients:
        _, err = c.communicate(timeout=TIMEOUT)
        assert c.returncode == 0, err
        assert any(line.startswith("@w: ") for line in err.splitlines())
    assert sorted(p.name for p in (runtime / "pyprobes").glob("*.sock")) == [f"{pid}.sock"]
    listed = json.loads(cli("list", str(pid), "--json").stdout)
    assert listed["pid"] == pid and listed["probes"] == []
    until(lambda: workdirs(pid) == [], "the bootstrap files to go")
    untouched(pid)
    finished_cleanly(child)


def test_a_client_killed_while_waiting_for_a_safe_point_leaves_a_start_that_runs_later(
    cli: Cli, target: Callable[..., Child], runtime: Path, env: dict[str, str]
) -> None:
    server = _feeder(runtime)
    child = target("recv", str(runtime / "feed"))
    conn, _ = server.accept()
    try:
        pid = child.ready()
        client = _background_attach(env, pid, *PROBE)
        until(lambda: _queued(pid), "gdb to queue the start")
        client.kill()
        client.communicate(timeout=TIMEOUT)
        untouched(pid)
        conn.sendall(b"wake\n")
        child.wait_line(lambda s: s == "ok 4")
        until(sock_of(runtime, pid).exists, "the agent")
        until(lambda: workdirs(pid) == [], "the files of the killed client to go")
        err = _probe_while_feeding(cli, env, pid, conn, child, 2)
        assert "@w: 2" in err.splitlines()
        conn.close()
        child.wait_line(lambda s: s.startswith("done "))
        finished_cleanly(child)
    finally:
        conn.close()
        server.close()


def test_a_forked_target_and_its_child_each_get_their_own_agent(
    cli: Cli, target: Callable[..., Child], runtime: Path
) -> None:
    child = target("fork")
    pid = child.ready()
    r = cli("attach", str(pid), *PROBE, "--duration", "0.5")
    assert count_of(r) > 0
    parent_sock = sock_of(runtime, pid)
    inode = os.stat(parent_sock).st_ino
    child.send("fork\n")
    _, line = child.wait_line(lambda s: s.startswith("child "))
    forked = int(line.split()[1])
    assert not sock_of(runtime, forked).exists()  # the agent does not follow forks
    r = cli("attach", str(forked), *PROBE, "--duration", "0.5")
    assert count_of(r) > 0 and f"attached to {forked} " in r.stderr
    assert sock_of(runtime, forked).exists() and workdirs(forked) == []
    untouched(forked)
    r = cli("attach", str(pid), *PROBE, "--duration", "0.3")  # the parent: its own agent
    assert count_of(r) > 0 and os.stat(parent_sock).st_ino == inode
    r = cli("attach", str(forked), *PROBE, "--duration", "0.3")
    assert count_of(r) > 0
    finished_cleanly(child)
    assert "child-status 0" in child.lines
    (done,) = [s for s in child.lines if s.startswith("child-done ")]
    assert done.split()[2] == done.split()[3]


def test_a_call_that_does_not_return_is_abandoned_and_the_target_runs_on(
    cli: Cli, target: Callable[..., Child], runtime: Path, tmp_path: Path
) -> None:
    """What a queueing call blocked on a lock would do (here pause(), which never returns):
    gdb is interrupted, unwinds the call, restores the thread and detaches."""
    child = target("busy")
    pid = child.ready()
    commands = tmp_path / "hang.gdb"
    commands.write_text(
        "set confirm off\nset pagination off\nset unwindonsignal on\n"
        "sharedlibrary libc[.-]\necho PYPROBES-QUEUE\\n\noutput (int) pause()\n"
        "echo \\nPYPROBES-QUEUED\\n\n"
    )
    gdb = gdbinject.find_gdb()
    assert gdb is not None
    argv = gdbinject.gdb_argv(gdb, pid, str(commands), 30)
    started = time.monotonic()
    run = gdbinject.run_gdb(argv, tmp_path / "gdb.log", pid, 30, call_bound=1)
    assert time.monotonic() - started < 15
    assert run.call_hung and not run.queued
    assert "GDB has restored the context to what it was before the call" in run.output
    assert "PYPROBES-DETACHED" in run.output
    assert "did not return within" in str(gdbinject.gdb_failure(pid, run, 30))
    untouched(pid)
    attach_cycle(cli, runtime, pid)  # it runs Python code, its agent starts as usual
    finished_cleanly(child)  # no KeyboardInterrupt, no lost work


def test_a_target_that_never_imported_threading_keeps_its_main_thread(
    cli: Cli, runtime: Path, env: dict[str, str]
) -> None:
    # no PYTHONPATH either: the target imports pyprobes from the client's package directory
    plain_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    child = Child([sys.executable, "-I", str(PROGRAMS / "plain_prog.py")], plain_env)
    try:
        pid = child.ready()
        attach_cycle(cli, runtime, pid)
        # threading was imported by the pending call, in the main thread: it knows which it is
        child.send("check\n")
        child.wait_line(lambda s: s.startswith("main-thread "))
        assert "main-thread True True" in child.lines
        finished_cleanly(child)
    finally:
        child.kill()


def test_a_gdb_that_does_not_finish_is_killed_and_the_target_resumed(
    cli: Cli, target: Callable[..., Child], runtime: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    child = target("busy")
    pid = child.ready()
    commands = tmp_path / "stuck.gdb"
    commands.write_text("echo PYPROBES-STOPPED\\n\nshell sleep 600\n")  # ignores SIGINT
    monkeypatch.setattr(gdbinject, "GDB_GRACE", 1.0)
    gdb = gdbinject.find_gdb()
    assert gdb is not None
    run = gdbinject.run_gdb(
        gdbinject.gdb_argv(gdb, pid, str(commands), 1), tmp_path / "log", pid, 1
    )
    assert run.killed and not run.queued and "PYPROBES-STOPPED" in run.output
    assert "PYPROBES-DETACHED" not in run.output
    until(lambda: gdbinject.tracer_of(pid) == 0, "the kernel to detach the killed gdb")
    untouched(pid)  # not left stopped
    assert "did not finish with process" in str(gdbinject.gdb_failure(pid, run, 1))
    attach_cycle(cli, runtime, pid)
    finished_cleanly(child)


def test_a_missing_symbol_is_found_before_any_call(
    target: Callable[..., Child], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real command file, with one more symbol to check that no python has."""
    child = target("busy")
    pid = child.ready()
    symbols = (*gdbinject.SYMBOLS[:2], "PyNoSuch_Symbol", *gdbinject.SYMBOLS[2:])
    monkeypatch.setattr(gdbinject, "SYMBOLS", symbols)
    payload = tmp_path / "payload.py"
    payload.write_text("raise SystemExit('must not run')\n")
    commands = tmp_path / "commands.gdb"
    commands.write_text(gdbinject.gdb_commands(str(payload), sys.version_info[:2]))
    gdb = gdbinject.find_gdb()
    assert gdb is not None
    argv = gdbinject.gdb_argv(gdb, pid, str(commands), 30)
    run = gdbinject.run_gdb(argv, tmp_path / "gdb.log", pid, 30)
    assert not run.queued and not run.killed and "PYPROBES-DETACHED" in run.output
    assert "PYPROBES-QUEUE" not in run.output and "Restoring binary file" not in run.output
    err = str(gdbinject.gdb_failure(pid, run, 30))
    assert err.startswith(f"gdb finds no symbol PyNoSuch_Symbol in its python of process {pid}")
    untouched(pid)
    finished_cleanly(child)


def test_another_python_version_is_one_line_before_any_gdb(
    cli: Cli, target: Callable[..., Child], runtime: Path
) -> None:
    theirs = "3.13" if MINE == "3.12" else "3.12"
    other = other_python(theirs)
    if other is None:
        pytest.skip(f"needs CPython {theirs} too (python{theirs} on PATH, or pyenv's)")
    child = target("busy", python=other)
    pid = child.ready()
    line = one_error_line(cli("attach", str(pid), *PROBE))
    assert f"process {pid} runs Python {theirs} but this pyprobes runs on {MINE}" in line
    assert f"'python{theirs} -m pyprobes attach {pid}'" in line
    assert workdirs(pid) == [] and not sock_of(runtime, pid).exists()
    row = {r["pid"]: r for r in map(json.loads, cli("ps", "--json").stdout.splitlines())}[pid]
    assert (
        row["attachable"] is False and row["note"] == f"no agent; attach needs pyprobes on {theirs}"
    )
    finished_cleanly(child)


def test_gdb_missing_is_one_line_saying_how_to_install_it(
    cli: Cli, target: Callable[..., Child], env: dict[str, str]
) -> None:
    child = target("busy")
    pid = child.ready()
    env[gdbinject.GDB_ENV] = "/nonexistent/gdb"
    line = one_error_line(cli("attach", str(pid), *PROBE))
    assert "needs gdb and /nonexistent/gdb is not found: install gdb (Debian/Ubuntu:" in line
    assert "apt-get install gdb" in line and "PYPROBES_AGENT=1" in line
    row = {r["pid"]: r for r in map(json.loads, cli("ps", "--json").stdout.splitlines())}[pid]
    assert row["attachable"] is False and "apt-get install gdb" in str(row["note"])
    del env[gdbinject.GDB_ENV]
    row = {r["pid"]: r for r in map(json.loads, cli("ps", "--json").stdout.splitlines())}[pid]
    assert row["attachable"] is True
    assert row["note"] == f"no agent yet: 'pyprobes attach {pid}' starts one (through gdb)"
    finished_cleanly(child)


def test_a_program_that_is_not_cpython_is_one_line(cli: Cli, env: dict[str, str]) -> None:
    other = subprocess.Popen(["sleep", "600"], env=env)
    try:
        line = one_error_line(cli("attach", str(other.pid), *PROBE))
        assert f"process {other.pid} is not a CPython process" in line
        assert workdirs(other.pid) == []
    finally:
        other.kill()
        other.wait()


# -- the pieces, without a target -------------------------------------------------------------


def test_the_payload_names_nothing_and_survives_a_missing_script(tmp_path: Path) -> None:
    text = gdbinject.payload_text(os.getpid(), str(tmp_path / "gone.py"))
    assert len(text.encode()) < gdbinject.PAGE
    namespace: dict[str, object] = {"__name__": "__main__"}
    code = compile(text, "<payload>", "exec")
    stores = {"STORE_NAME", "STORE_GLOBAL", "DELETE_NAME", "DELETE_GLOBAL", "IMPORT_NAME"}
    assert not [i for i in dis.get_instructions(code) if i.opname in stores]
    # what PyRun_SimpleString does with it, in a process of its own: nothing on stderr
    r = subprocess.run(
        [sys.executable, "-c", f"import time; exec({text!r}); time.sleep(0.2)"],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert r.returncode == 0 and r.stderr == "" and r.stdout == ""
    exec(code, namespace)  # another pid: it starts nothing, adds nothing
    assert set(namespace) == {"__name__", "__builtins__"}


def test_the_payload_starts_the_agent_on_a_thread_of_its_own(runtime: Path) -> None:
    status = runtime / "status"
    script = runtime / "bootstrap.py"
    script.write_text(bootstrap.bootstrap_script(0, str(status), SRC))
    env = {**base_env(runtime), "PYTHONPATH": ""}
    prog = (
        "import os, sys, threading; exec(sys.argv[1].replace('PID', str(os.getpid())));"
        " print('ready', os.getpid(), flush=True); sys.stdin.read()"
    )
    text = gdbinject.payload_text(0, str(script)).replace("==0:", "==PID:")
    child = Child([sys.executable, "-c", prog, text], env)
    try:
        pid = child.ready()
        until(status.exists, "the status")
        assert status.read_text() == f"ok {runtime / 'pyprobes' / f'{pid}.sock'}"
        assert child.finish() == 0 and child.err_lines == []
    finally:
        child.kill()


def test_the_command_file_checks_before_it_calls() -> None:
    text = gdbinject.gdb_commands("/tmp/x/payload.py", (3, 13))
    lines = text.splitlines()
    checks = [i for i, s in enumerate(lines) if s.startswith("info address ")]
    calls = [i for i, s in enumerate(lines) if "mmap(" in s or "_PyEval_AddPendingCall(" in s]
    assert [lines[i].split()[-1] for i in checks] == list(gdbinject.SYMBOLS)
    assert max(checks) < min(calls)
    assert "!= 0x030d" in text and "set unwindonsignal on" in lines
    argv = gdbinject.gdb_argv("/usr/bin/gdb", 42, "/tmp/x/commands.gdb", 7)
    gdb_at = argv.index("/usr/bin/gdb")
    assert argv[gdb_at : gdb_at + 5] == ["/usr/bin/gdb", "-nx", "-nh", "-batch", "-p"]
    assert argv[-4:] == ["-ex", "detach", "-ex", "echo PYPROBES-DETACHED\\n"]
    if gdb_at:  # coreutils' timeout bounds gdb even when the client is gone
        assert argv[gdb_at - 1] == "7" and "INT" in argv[:gdb_at]


def other_python(version: str) -> str | None:
    """A CPython ``version`` interpreter that really runs (not a pyenv shim of another)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [
        shutil.which(f"python{version}"),
        *map(str, pyenv.glob(f"{version}.*/bin/python")),
    ]
    for c in candidates:
        if c is None:
            continue
        r = subprocess.run(
            [c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
        if r.returncode == 0 and r.stdout.strip() == version:
            return c
    return None


def fake_proc(root: Path, pid: int, exe: str, *, scope: int | None = None, uid: int = 0) -> str:
    d = root / str(pid)
    d.mkdir(parents=True)
    if uid != os.geteuid():
        os.chown(d, uid, -1)  # process_uid reads the owner of /proc/PID
    (d / "exe").symlink_to(exe)
    (d / "maps").write_text("")
    (d / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nTracerPid:\t0\n")
    (d / "stat").write_text(f"{pid} (x) S 1 " + " ".join(["0"] * 40) + "\n")
    if scope is not None:
        y = root / "sys" / "kernel" / "yama"
        y.mkdir(parents=True, exist_ok=True)
        (y / "ptrace_scope").write_text(f"{scope}\n")
    return str(root)


def test_problems_found_in_proc_are_one_line(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "a", 7, "/usr/bin/python3.12")
    me = os.geteuid()
    p = gdbinject.gdb_problem(7, proc=proc, mine=(3, 13), free_threaded=False, euid=me)
    assert p is not None and "runs Python 3.12 but this pyprobes runs on 3.13" in p
    proc = fake_proc(tmp_path / "b", 7, "/usr/bin/python3.13t")
    p = gdbinject.gdb_problem(7, proc=proc, mine=(3, 13), free_threaded=False, euid=me)
    assert p is not None and "free-threaded build of CPython 3.13" in p and "python3.13t" in p
    uid = 1000 if me == 0 else me  # only root may give the fake process another owner
    proc = fake_proc(tmp_path / "c", 7, "/usr/bin/python3.13", scope=1, uid=uid)
    p = gdbinject.gdb_problem(7, proc=proc, mine=(3, 13), free_threaded=False, euid=uid)
    assert p is not None and "kernel.yama.ptrace_scope=1" in p and "CAP_SYS_PTRACE" in p
    p = gdbinject.gdb_problem(7, proc=proc, mine=(3, 13), free_threaded=False, euid=uid + 1)
    assert p == (
        f"process 7 belongs to uid {uid} and you are uid {uid + 1}: run pyprobes as that user"
        " or as root"
    )
    proc = fake_proc(tmp_path / "d", 7, "/usr/bin/python3.13")
    env = {gdbinject.GDB_ENV: "/nonexistent/gdb"}
    p = gdbinject.gdb_problem(7, proc=proc, mine=(3, 13), free_threaded=False, environ=env, euid=me)
    assert p is not None and p.endswith(gdbinject.INSTALL_HINT)
    assert gdbinject.target_build(7, proc) == (3, 13, False)
    proc = fake_proc(tmp_path / "e", 7, "/usr/bin/python3.13")
    status = Path(proc) / "7" / "status"
    status.write_text(status.read_text().replace("TracerPid:\t0", "TracerPid:\t99"))
    p = gdbinject.gdb_problem(7, proc=proc, mine=(3, 13), free_threaded=False, euid=me)
    assert (
        p == "process 7 is already traced by process 99 (a debugger or strace): detach that first"
    )


def run_of(output: str, killed: bool = False) -> gdbinject.GdbRun:
    return gdbinject.GdbRun(output, gdbinject._queued(output), killed)


def test_what_gdb_said_becomes_one_line() -> None:
    me = os.getpid()  # alive, so "exited" is not the answer
    ok = "PYPROBES-STOPPED\nPYPROBES-SYMBOLS-OK\nPYPROBES-QUEUE\n0\nPYPROBES-QUEUED\n"
    assert run_of(ok).queued and not run_of(ok.replace("\n0\n", "\n-1\n")).queued
    full = gdbinject.gdb_failure(me, run_of(ok.replace("\n0\n", "\n-1\n")), 20)
    assert "pending-call queue" in str(full) and "full" in str(full)
    eperm = "ptrace: Operation not permitted.\nCould not attach to process.  If your uid..."
    err = gdbinject.gdb_failure(me, run_of(eperm), 20)
    assert isinstance(err, AttachPermissionError) and "CAP_SYS_PTRACE" in str(err)
    stripped = (
        'PYPROBES-STOPPED\nPYPROBES-CHECK Py_Version\nSymbol "Py_Version" is at 0x1.\n'
        "PYPROBES-CHECK PyInterpreterState_Main\nSymbol ...\nPYPROBES-CHECK"
        " _PyEval_AddPendingCall\n/tmp/x/commands.gdb:12: Error in sourced command file:\n"
        'No symbol "_PyEval_AddPendingCall" in current context.\n'
    )
    err = gdbinject.gdb_failure(me, run_of(stripped), 20)
    assert isinstance(err, NoAgentError)
    assert "no symbol _PyEval_AddPendingCall in its python" in str(err)
    assert "static or stripped" in str(err) and "PYPROBES_AGENT=1" in str(err)
    notpy = (
        'PYPROBES-STOPPED\nPYPROBES-CHECK Py_Version\nNo symbol "Py_Version" in current context.\n'
    )
    assert "no CPython 3.12+ process" in str(gdbinject.gdb_failure(me, run_of(notpy), 20))
    other = "PYPROBES-STOPPED\nPYPROBES-SYMBOLS-OK\nPYPROBES-VERSION-MISMATCH\n$1 = 0x30c01f0\n"
    err = gdbinject.gdb_failure(me, run_of(other), 20)
    assert f"runs Python 3.12 (its Py_Version) but this pyprobes runs on {MINE}" in str(err)
    err = gdbinject.gdb_failure(me, run_of("Attaching...", killed=True), 20)
    assert "did not finish with process" in str(err) and "within 20s" in str(err)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    err = gdbinject.gdb_failure(dead.pid, run_of("ptrace: No such process."), 20)
    assert isinstance(err, NoSuchProcessError)
    for e in (full, err):
        assert "\n" not in str(e)
    assert re.fullmatch(r"[^\n]+", str(gdbinject.gdb_failure(me, run_of("weird\n"), 20)))
