"""The CPython 3.14 bootstrap: its checks (with a stand-in sys and /proc) and its script."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from attach_helpers import PROGRAMS, TIMEOUT, Child, Raw

from pyprobes.attach import bootstrap
from pyprobes.attach.errors import AttachPermissionError, NoAgentError, NoSuchProcessError


def fake_sys(version: tuple[int, int] = (3, 14), **attrs: Any) -> SimpleNamespace:
    return SimpleNamespace(version_info=(*version, 0, "final", 0), **attrs)


def with_remote(enabled: bool = True, remote_exec: Any = None) -> SimpleNamespace:
    return fake_sys(
        remote_exec=remote_exec or (lambda pid, path: None),
        is_remote_debug_enabled=lambda: enabled,
    )


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """A stand-in /proc: no Yama, pid 4242 runs python3.14 as us."""
    root = tmp_path / "proc"
    (root / "4242").mkdir(parents=True)
    os.symlink("/usr/local/bin/python3.14", root / "4242" / "exe")
    (root / "4242" / "maps").write_text("7f00 r-xp 0 0:0 0 /usr/lib/libc.so.6\n")
    (root / "self").mkdir()
    (root / "self" / "status").write_text("Name:\tpython\nCapEff:\t0000000000000000\n")
    return root


def set_scope(proc: Path, value: int) -> None:
    d = proc / "sys" / "kernel" / "yama"
    d.mkdir(parents=True, exist_ok=True)
    (d / "ptrace_scope").write_text(f"{value}\n")


def test_needs_remote_exec(proc: Path) -> None:
    problem = bootstrap.remote_exec_problem(4242, sys_module=fake_sys((3, 13)), proc=str(proc))
    assert problem is not None
    assert "runs on Python 3.13" in problem and "needs CPython 3.14+ (sys.remote_exec)" in problem


def test_remote_debugging_disabled(proc: Path) -> None:
    problem = bootstrap.remote_exec_problem(4242, sys_module=with_remote(False), proc=str(proc))
    assert problem is not None and "PYTHON_DISABLE_REMOTE_DEBUG" in problem


def test_same_version_needed(proc: Path) -> None:
    assert bootstrap.target_python_version(4242, str(proc)) == (3, 14)
    assert bootstrap.remote_exec_problem(4242, sys_module=with_remote(), proc=str(proc)) is None
    os.unlink(proc / "4242" / "exe")
    os.symlink("/usr/bin/python3", proc / "4242" / "exe")
    (proc / "4242" / "maps").write_text("7f00 r-xp 0 0:0 0 /usr/lib/libpython3.12.so.1.0\n")
    assert bootstrap.target_python_version(4242, str(proc)) == (3, 12)
    problem = bootstrap.remote_exec_problem(4242, sys_module=with_remote(), proc=str(proc))
    assert problem is not None
    assert "runs Python 3.12 but this pyprobes runs on 3.14" in problem
    assert "'python3.12 -m pyprobes attach 4242'" in problem
    assert bootstrap.target_python_version(999999, str(proc)) is None


def test_this_interpreter_version_is_found() -> None:
    mine = sys.version_info[:2]
    assert bootstrap.target_python_version(os.getpid()) == mine


def test_other_owner(proc: Path) -> None:
    me = os.geteuid()
    problem = bootstrap.remote_exec_problem(
        4242, sys_module=with_remote(), proc=str(proc), euid=me + 1
    )
    assert problem is not None and f"belongs to uid {me}" in problem


@pytest.mark.parametrize(
    ("scope", "euid", "cap", "expected"),
    [
        (0, 1000, False, None),
        (1, 1000, False, "ptrace_scope=1 lets only a parent process ptrace"),
        (1, 1000, True, None),
        (1, 0, False, None),
        (2, 1000, False, "only root may ptrace here"),
        (2, 0, False, None),
        (3, 0, False, "ptrace is disabled on this system"),
    ],
)
def test_yama_ptrace_scope(
    proc: Path, scope: int, euid: int, cap: bool, expected: str | None
) -> None:
    if os.geteuid() != 0 and euid != os.geteuid():
        pytest.skip("cannot give the stand-in process another owner")
    set_scope(proc, scope)
    if cap:
        (proc / "self" / "status").write_text("CapEff:\t0000000000080000\n")
    if os.geteuid() == 0:
        os.chown(proc / "4242", euid, -1)
    problem = bootstrap.remote_exec_problem(
        4242, sys_module=with_remote(), proc=str(proc), euid=euid
    )
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem
    assert bootstrap.ptrace_scope(str(proc)) == scope
    assert bootstrap.has_cap_sys_ptrace(str(proc)) is cap


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def test_inject_maps_failures_to_actionable_errors(sleeper: subprocess.Popen[bytes]) -> None:
    pid = sleeper.pid
    here = sys.version_info[:2]

    def raising(exc: BaseException) -> SimpleNamespace:
        def remote_exec(pid: int, path: str) -> None:
            raise exc

        return fake_sys(here, remote_exec=remote_exec, is_remote_debug_enabled=lambda: True)

    with pytest.raises(AttachPermissionError, match=f"not allowed to ptrace process {pid}"):
        bootstrap.inject(pid, sys_module=raising(PermissionError(1, "Operation not permitted")))
    with pytest.raises(NoAgentError, match=r"could not reach process .* remote debugging enabled"):
        bootstrap.inject(
            pid, sys_module=raising(RuntimeError("Failed to find the PyRuntime section"))
        )
    with pytest.raises(NoSuchProcessError):
        bootstrap.inject(pid, sys_module=raising(ProcessLookupError()))
    with pytest.raises(NoAgentError, match=r"needs CPython 3\.14"):
        bootstrap.inject(pid, sys_module=fake_sys((3, 12)))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(NoSuchProcessError, match=f"no process {gone.pid}"):
        bootstrap.inject(gone.pid, sys_module=with_remote())


def test_inject_timeout_says_what_blocks_and_leaves_the_request_queued(
    sleeper: subprocess.Popen[bytes], runtime: Path
) -> None:
    seen: list[str] = []
    here = sys.version_info[:2]
    fake = fake_sys(
        here, remote_exec=lambda pid, path: seen.append(path), is_remote_debug_enabled=lambda: True
    )
    with pytest.raises(NoAgentError) as info:
        bootstrap.inject(sleeper.pid, sys_module=fake, timeout=0.2)
    message = str(info.value)
    assert "\n" not in message
    assert f"process {sleeper.pid} did not run the bootstrap within 0.2s" in message
    # the sleeper's main thread waits in sys.stdin.read(): a read(2)
    assert "its main thread is blocked in a C call" in message
    if platform.machine() in ("x86_64", "aarch64"):
        assert "the system call read" in message
    assert f"run 'pyprobes attach {sleeper.pid}' again later" in message
    assert "PYPROBES_BOOTSTRAP_TIMEOUT" in message and "PYPROBES_AGENT=1" in message
    (script,) = seen
    workdir = Path(script).parent
    assert (workdir / bootstrap.GIVEN_UP).exists()
    # what the target does once its main thread returns: the agent starts, the files go
    src = str(PROGRAMS.parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src, "XDG_RUNTIME_DIR": str(runtime)}
    env.pop("PYPROBES_AGENT", None)
    run_it = (
        "import os, sys; exec(compile(open(sys.argv[1]).read(), 'b', 'exec'), {});"
        " print('ready', os.getpid(), flush=True); sys.stdin.read()"
    )
    runner = Child([sys.executable, "-c", run_it, script], env)
    try:
        rpid = runner.ready()
        assert (runtime / "pyprobes" / f"{rpid}.sock").exists()
        assert not workdir.exists()
        assert runner.err_lines == []
    finally:
        runner.kill()


def test_a_new_request_forgets_the_files_of_a_given_up_one(
    sleeper: subprocess.Popen[bytes],
) -> None:
    seen: list[str] = []
    fake = fake_sys(
        sys.version_info[:2],
        remote_exec=lambda pid, path: seen.append(path),
        is_remote_debug_enabled=lambda: True,
    )
    for _ in range(2):
        with pytest.raises(NoAgentError, match="did not run the bootstrap"):
            bootstrap.inject(sleeper.pid, sys_module=fake, timeout=0.05)
    first, second = (Path(s).parent for s in seen)
    assert not first.exists() and second.exists()  # the target holds one request at a time
    import shutil

    shutil.rmtree(second)


def test_an_agent_started_otherwise_ends_the_wait(
    sleeper: subprocess.Popen[bytes], runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another client's request replaced ours (the target holds one): its agent will do."""
    import socket

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    sock = runtime / "pyprobes" / f"{sleeper.pid}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    seen: list[str] = []

    def remote_exec(pid: int, path: str) -> None:
        seen.append(path)
        sock.parent.mkdir(mode=0o700)
        listener.bind(str(sock))

    fake = fake_sys(
        sys.version_info[:2], remote_exec=remote_exec, is_remote_debug_enabled=lambda: True
    )
    try:
        assert bootstrap.inject(sleeper.pid, sys_module=fake, timeout=TIMEOUT) == sock
    finally:
        listener.close()
    workdir = Path(seen[0]).parent  # ours may still run: it stays, marked to clean up
    assert (workdir / "bootstrap.py").exists() and (workdir / bootstrap.GIVEN_UP).exists()
    import shutil

    shutil.rmtree(workdir)


def test_the_timeout_comes_from_the_environment() -> None:
    assert bootstrap.bootstrap_timeout({}) == bootstrap.BOOTSTRAP_TIMEOUT
    assert bootstrap.bootstrap_timeout({"PYPROBES_BOOTSTRAP_TIMEOUT": "1.5"}) == 1.5
    for bad in ("x", "0", "-1", "nan", "inf"):
        env = {"PYPROBES_BOOTSTRAP_TIMEOUT": bad}
        assert bootstrap.bootstrap_timeout(env) == bootstrap.BOOTSTRAP_TIMEOUT


def test_remote_exec_errors_of_a_disabled_or_other_target_are_one_line(
    proc: Path,
) -> None:
    disabled = RuntimeError("Remote debugging is not enabled in the remote process")
    (proc / "4242" / "environ").write_bytes(b"A=1\0PYTHON_DISABLE_REMOTE_DEBUG=1\0")
    err = bootstrap._map_remote_exec_error(4242, disabled, "3.14", str(proc))
    assert isinstance(err, NoAgentError)
    assert str(err).startswith("remote debugging is disabled in process 4242 (its environment")
    assert "3.14+" not in str(err)  # attach's own way is the one that cannot work
    (proc / "4242" / "environ").write_bytes(b"A=1\0")
    (proc / "4242" / "cmdline").write_bytes(b"python3.14\0-X\0disable-remote-debug\0x.py\0")
    err = bootstrap._map_remote_exec_error(4242, disabled, "3.14", str(proc))
    assert "(it was started with -X disable-remote-debug)" in str(err)
    other = RuntimeError("Can't send commands from a Python 3.14 process to a Python 3.15 process")
    err = bootstrap._map_remote_exec_error(4242, other, "3.14", str(proc))
    assert "runs another Python version" in str(err)


def test_the_script_starts_an_agent_when_run_in_the_target(runtime: Path) -> None:
    """What sys.remote_exec does at the target's safe point: exec the file, fresh namespace."""
    src = str(PROGRAMS.parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src, "XDG_RUNTIME_DIR": str(runtime)}
    env.pop("PYPROBES_AGENT", None)
    status = runtime / "status"
    script = bootstrap.bootstrap_script(1234, str(status), src)
    assert "agent.start()" in script
    run_it = (
        "import os, sys; exec(compile(sys.argv[1], 'bootstrap', 'exec'), {});"
        " print('ready', os.getpid(), flush=True); sys.stdin.read()"
    )
    runner = Child([sys.executable, "-c", run_it, script], env)
    try:
        rpid = runner.ready()
        sock = runtime / "pyprobes" / f"{rpid}.sock"
        assert status.read_text() == f"ok {sock}"
        r = Raw(sock)
        assert r.hello()["pid"] == rpid
        r.close()
        # the agent stays for the next client: it answers again, the program runs on
        r = Raw(sock)
        assert r.hello()["pid"] == rpid
        r.close()
        assert runner.proc.poll() is None and runner.err_lines == []
    finally:
        runner.kill()


def test_script_reports_errors_instead_of_raising(tmp_path: Path) -> None:
    status = tmp_path / "status"
    script = bootstrap.bootstrap_script(1, str(status), str(tmp_path / "nowhere"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            "import sys; exec(compile(sys.argv[1], 'b', 'exec'), {})",
            script,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
    )
    installed = status.read_text().startswith("ok ")
    if not installed:
        assert status.read_text().startswith(
            "error ModuleNotFoundError: No module named 'pyprobes'"
        )
    assert r.returncode == 0 and r.stderr == ""


def test_how_to_start_an_agent_names_every_way() -> None:
    text = bootstrap.how_to_start_agent(12)
    for way in ("PYPROBES_AGENT=1", "pyprobes run --listen", "pyprobes.agent.start()", "3.14"):
        assert way in text
