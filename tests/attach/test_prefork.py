"""Pre-fork servers under ``PYPROBES_AGENT=1``: every forked worker serves an agent of its own.

And the errors of attaching to what has no agent say why: not a CPython process, no such
process, or an environment that asked for an agent that is not there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from attach_helpers import LAUNCH, LOOP, PROGRAMS, TIMEOUT, Child

from pyprobes.attach.autostart import ENV_VAR

Cli = Callable[..., subprocess.CompletedProcess[str]]
PREFORK = str(PROGRAMS / "prefork_prog.py")


def _probes(cli: Cli, pid: int) -> list[object]:
    r = cli("list", str(pid), "--json")
    assert r.returncode == 0, r.stderr
    probes: list[object] = json.loads(r.stdout)["probes"]
    return probes


@pytest.mark.parametrize("mode", ["fork", "mp"])
def test_each_forked_worker_is_attachable(
    mode: str, sitedir: Path, env: dict[str, str], cli: Cli, runtime: Path
) -> None:
    child = Child(
        [sys.executable, "-c", LAUNCH, str(sitedir), PREFORK, mode], {**env, ENV_VAR: "1"}
    )
    try:
        parent = child.ready()
        workers = {}
        for k in range(2):
            _, line = child.wait_line(lambda s, k=k: s.startswith(f"worker {k} "))
            workers[k] = int(line.split()[2])
        assert len({parent, *workers.values()}) == 3
        for k, pid in workers.items():
            assert (runtime / "pyprobes" / f"{pid}.sock").exists()
            r = cli("attach", str(pid), "-e", f"p:w{k} __main__:work n", "--duration", "0.5")
            assert r.returncode == 0, r.stderr
            assert f": w{k}: (__main__:work+0) n=" in r.stderr
            assert _probes(cli, pid) == []
        assert _probes(cli, parent) == []  # the parent serves its own agent still
        assert child.finish() == 0
        assert sorted(child.lines) == sorted(
            [f"ready {parent}", "done"]
            + [f"worker {k} {pid}" for k, pid in workers.items()]
            + [f"worker {k} done" for k in workers]
            + [f"exit {k} {10 + k}" for k in workers]
        )
        assert child.err_lines == []
    finally:
        child.kill()
    for pid in (parent, *workers.values()):
        assert not (runtime / "pyprobes" / f"{pid}.sock").exists()  # each removed its own


def test_a_program_that_is_not_python_is_said_to_be_so(cli: Cli) -> None:
    other = subprocess.Popen(["sleep", "600"])
    try:
        for command in (["attach", str(other.pid), "-e", "p json:loads"], ["list", str(other.pid)]):
            r = cli(*command)
            assert r.returncode == 1
            (line,) = r.stderr.strip().splitlines()
            assert line.startswith(f"pyprobes: error: process {other.pid} is not a CPython")
            assert "sleep" in line and "no pyprobes agent" not in line
    finally:
        other.kill()
        other.wait(TIMEOUT)
    r = cli("attach", str(other.pid), "-e", "p json:loads")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"pyprobes: error: no process {other.pid}"]


def test_an_environment_asking_for_an_agent_that_is_not_there_is_said(
    env: dict[str, str], cli: Cli
) -> None:
    # -S: site never runs the hook, so PYPROBES_AGENT=1 is set and no agent serves
    child = Child([sys.executable, "-S", LOOP], {**env, ENV_VAR: "1"})
    try:
        pid = child.ready()
        r = cli("list", str(pid))
        assert r.returncode == 1
        (line,) = r.stderr.strip().splitlines()
        assert f"process {pid} runs no pyprobes agent (it has no agent socket)" in line
        assert "its environment sets PYPROBES_AGENT=1" in line
        assert "failed to start" in line
        assert child.finish() == 0
    finally:
        child.kill()


def test_a_fork_of_an_agent_that_does_not_follow_forks_is_said_so(
    spawn: Callable[..., Child], cli: Cli
) -> None:
    child = spawn(LOOP)  # pyprobes run --listen: an explicit agent, which does not follow
    pid = child.ready()
    child.send("fork\n")
    _, line = child.wait_line(lambda s: s.startswith("child "))
    forked = int(line.split()[1])
    try:
        r = cli("list", str(forked))
        assert r.returncode == 1
        (line,) = r.stderr.strip().splitlines()
        assert f"process {forked} runs no pyprobes agent (it has no agent socket)" in line
        assert f"it is a fork of process {pid}, whose agent does not follow forks" in line
    finally:
        os.kill(forked, 9)
    assert child.finish() == 0


def test_a_fork_that_execs_another_program_is_not_python_and_its_socket_goes(
    sitedir: Path, env: dict[str, str], cli: Cli, runtime: Path
) -> None:
    # The forked child serves from right after the fork, then execs: its socket stays behind
    code = (
        "import os, sys\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.execvp('sh', ['sh', '-c', 'echo execd; exec sleep 600'])\n"
        "print('ready', pid, flush=True)\n"
        "sys.stdin.read()\n"
        "os.kill(pid, 9)\n"
        "os.waitpid(pid, 0)\n"
    )
    prog = runtime / "fork_exec.py"
    prog.write_text(code)
    child = Child([sys.executable, "-c", LAUNCH, str(sitedir), str(prog)], {**env, ENV_VAR: "1"})
    try:
        pid = child.ready()
        child.wait_line(lambda s: s == "execd")
        sock = runtime / "pyprobes" / f"{pid}.sock"
        assert sock.exists()
        r = cli("attach", str(pid), "-e", "p json:loads")
        assert r.returncode == 1
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(f"pyprobes: error: process {pid} is not a CPython process (")
        assert not sock.exists()  # nobody listened on it: removed
        assert child.finish() == 0
        assert not any("pyprobes" in e for e in child.err_lines)  # (3.12+ warns of the fork)
    finally:
        child.kill()


def test_workers_listen_beside_a_parent_that_fell_back_and_warn_nothing_more(
    sitedir: Path, env: dict[str, str], cli: Cli, runtime: Path
) -> None:
    (runtime / "pyprobes").write_text("not a directory")  # the usual directory is taken
    e = {**env, ENV_VAR: "1", "TMPDIR": str(runtime)}
    child = Child([sys.executable, "-c", LAUNCH, str(sitedir), PREFORK, "fork"], e)
    try:
        child.ready()
        _, line = child.wait_line(lambda s: s.startswith("worker 0 "))
        worker = int(line.split()[2])
        (fallback,) = runtime.glob("pyprobes-*")
        assert (fallback / f"{worker}.sock").exists()
        r = cli("attach", str(worker), "-e", "p:w __main__:work n", "--duration", "0.5")
        assert r.returncode == 0, r.stderr
        assert ": w: (__main__:work+0) n=" in r.stderr
        assert child.finish() == 0
        (warning,) = child.err_lines  # the parent's, once; none from the workers
        assert warning.startswith(f"pyprobes agent: {runtime / 'pyprobes'} must be a directory")
    finally:
        child.kill()
