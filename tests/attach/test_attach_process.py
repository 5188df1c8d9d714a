"""The agent in real processes: stalled clients, other users, fork, exit, garbage."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from attach_helpers import LOOP, TIMEOUT, Child, Raw

Cli = Callable[..., subprocess.CompletedProcess[str]]
Spawn = Callable[..., Child]


def sock_of(runtime: Path, pid: int) -> Path:
    return runtime / "pyprobes" / f"{pid}.sock"


def probes_of(cli: Cli, pid: int) -> list[dict[str, object]]:
    r = cli("list", str(pid), "--json")
    assert r.returncode == 0, r.stderr
    probes: list[dict[str, object]] = json.loads(r.stdout)["probes"]
    return probes


def rates(child: Child, start: int, n: int) -> list[int]:
    """The next ``n`` ``rate`` lines of a --busy child after line ``start``."""
    out: list[int] = []
    index = start
    while len(out) < n:
        index, line = child.wait_line(lambda s: s.startswith("rate "), start=index + 1)
        out.append(int(line.split()[1]))
    return out


def test_stalled_client_costs_the_program_nothing_and_is_told_its_losses(
    spawn: Spawn, runtime: Path, cli: Cli
) -> None:
    child = spawn(LOOP, "--busy")
    pid = child.ready()
    spec = "p:w __main__:work n"
    # a client that keeps up: drains everything on a thread
    fast = Raw(sock_of(runtime, pid))
    assert fast.hello()["type"] == "welcome"
    assert fast.request("add", id=1, specs=[spec])["type"] == "ok"
    got = [0]
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            try:
                msg = fast.message(1.0)
            except TimeoutError:
                continue
            except OSError:
                return
            if msg is None:
                return
            if msg["type"] == "events":
                got[0] += len(msg["events"])  # type: ignore[arg-type]

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    rates(child, len(child.lines), 2)  # settle
    keeping_up = rates(child, len(child.lines), 5)
    stop.set()
    t.join(TIMEOUT)
    fast.close()
    assert got[0] > 0
    # a client that stops reading: the target must neither block nor slow down
    slow = Raw(sock_of(runtime, pid))
    try:
        slow.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
        assert slow.hello()["type"] == "welcome"
        assert slow.request("add", id=1, specs=[spec])["type"] == "ok"
        rates(child, len(child.lines), 2)  # the queue fills
        stalled = rates(child, len(child.lines), 5)
        assert min(stalled) > 0
        assert statistics.median(stalled) >= 0.6 * statistics.median(keeping_up), (
            stalled,
            keeping_up,
        )
        lost = slow.until("lost")
        assert lost["total"] > 0
        slow.send({"type": "detach", "id": 2})
        done = slow.until("detached")
        (row,) = done["summary"]  # type: ignore[misc]
        assert row["event"] == "w" and row["lost"] > 0 and row["hits"] > row["lost"]
    finally:
        slow.close()
    assert probes_of(cli, pid) == []
    assert child.finish() == 0
    assert child.err_lines == []


def test_several_cli_clients_at_once(
    spawn: Spawn, cli: Cli, env: dict[str, str], tmp_path: Path
) -> None:
    child = spawn(LOOP)
    pid = child.ready()
    outs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]

    def attach(name: str, out: Path) -> subprocess.Popen[str]:
        argv = ["attach", str(pid), "-e", f"p:{name} __main__:work n", "--format", "json"]
        return subprocess.Popen(
            [sys.executable, "-m", "pyprobes", *argv, "-o", str(out), "--duration", "2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    procs = [attach(name, out) for name, out in zip(("a", "b"), outs, strict=True)]
    try:
        for p in procs:
            assert p.wait(TIMEOUT) == 0, p.stderr.read() if p.stderr else ""
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for name, out in zip(("a", "b"), outs, strict=True):
        events = [json.loads(line) for line in out.read_text().splitlines()]
        assert events and {e["event"] for e in events} == {name}
    assert probes_of(cli, pid) == []
    assert child.finish() == 0


def test_the_program_exits_while_a_client_is_attached(spawn: Spawn, runtime: Path) -> None:
    child = spawn(LOOP)
    pid = child.ready()
    r = Raw(sock_of(runtime, pid))
    try:
        assert r.hello()["type"] == "welcome"
        assert r.request("add", id=1, specs=["r __main__:work"])["type"] == "ok"
        r.until("events")
        # Read while the program ends, as a client does: one that stops reading fills the
        # socket, and the agent then gives up on the bye rather than keep the program alive.
        seen: list[dict[str, object]] = []

        def read() -> None:
            while (msg := r.message()) is not None:
                seen.append(msg)

        reader = threading.Thread(target=read)
        reader.start()
        assert child.finish() == 0  # the agent does not keep it alive
        reader.join(TIMEOUT)
        assert not reader.is_alive()
        assert {m["type"] for m in seen} <= {"events", "lost", "counts", "bye"}
        assert seen[-1] == {"type": "bye", "reason": "the program ended"}
    finally:
        r.close()
    assert child.lines[-1].startswith("done ")
    assert child.err_lines == []
    assert not sock_of(runtime, pid).exists()


def test_garbage_from_a_client_leaves_the_program_alone(
    spawn: Spawn, runtime: Path, cli: Cli
) -> None:
    child = spawn(LOOP)
    pid = child.ready()
    r = Raw(sock_of(runtime, pid))
    try:
        r.send_bytes(b"\xff\xfe\x00\n")
        assert r.reply()["code"] == "bad-json"
        assert r.hello()["type"] == "welcome"
        r.send_bytes(b'{"type": "add", "specs": ["p __main__:work"\n')
        assert r.reply()["code"] == "bad-json"
        r.send_bytes(b"x" * (1 << 20) + b"\n")
        assert r.reply()["code"] == "too-large"
        assert r.request("nope", id=1)["code"] == "unknown-type"
        assert (
            r.request("add", id=2, specs=["p __main__:work if $retval > 1"])["code"] == "bad-spec"
        )
        assert r.request("add", id=3, specs=["p __main__:missing"])["code"] == "probe-error"
        assert r.request("ping", id=4) == {"type": "ok", "re": 4}
    finally:
        r.close()
    assert probes_of(cli, pid) == []
    n = len(child.lines)
    child.progress_after(n)
    assert child.finish() == 0
    assert child.err_lines == []


def test_fork_child_does_not_serve_the_parents_socket(
    spawn: Spawn, runtime: Path, cli: Cli
) -> None:
    child = spawn(LOOP)
    pid = child.ready()
    child.send("fork\n")
    _, line = child.wait_line(lambda s: s.startswith("child "))
    forked = int(line.split()[1])
    try:
        r = cli("list", str(forked))
        assert r.returncode == 1 and f"process {forked} runs no pyprobes agent" in r.stderr
        assert sock_of(runtime, pid).exists()
        assert probes_of(cli, pid) == []
    finally:
        os.kill(forked, 9)
    assert child.finish() == 0
    assert not sock_of(runtime, pid).exists()


def test_follow_fork_gives_the_child_its_own_agent_without_the_parents_probes(
    spawn: Spawn, runtime: Path, cli: Cli, env: dict[str, str]
) -> None:
    code = (
        "import runpy, sys, pyprobes.agent; pyprobes.agent.start(follow_fork=True);"
        f" sys.argv = [{LOOP!r}]; runpy.run_path({LOOP!r}, run_name='__main__')"
    )
    child = spawn("-c", code, listen=False)
    pid = child.ready()
    r = Raw(sock_of(runtime, pid))
    try:
        assert r.hello()["type"] == "welcome"
        assert r.request("add", id=1, specs=["p:mine __main__:work"])["type"] == "ok"
        r.until("events")
        child.send("fork\n")
        _, line = child.wait_line(lambda s: s.startswith("child "))
        forked = int(line.split()[1])
        try:
            assert probes_of(cli, forked) == []  # its own agent, none of the parent's probes
            assert [p["owner"]["event"] for p in probes_of(cli, pid)] == ["mine"]  # type: ignore[index]
        finally:
            os.kill(forked, 9)
        r.send({"type": "detach", "id": 2})
        r.until("detached")
    finally:
        r.close()
    assert probes_of(cli, pid) == []
    assert child.finish() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_client_of_another_uid_is_refused(spawn: Spawn, runtime: Path, cli: Cli) -> None:
    from pyprobes.cli.main import main

    child = spawn(LOOP)
    pid = child.ready()
    path = sock_of(runtime, pid)

    def talk_directly() -> int:
        """Connect to the socket itself (discovery skips a directory open to others)."""
        from pyprobes.attach.client import AgentConnection, connect_socket
        from pyprobes.attach.errors import AttachError

        try:
            AgentConnection(connect_socket(pid, path), pid, path).handshake("nobody")
        except AttachError as exc:
            sys.stderr.write(f"{exc}\n")
            return 1
        return 0

    def as_nobody(argv: list[str] | Callable[[], int]) -> tuple[int, str]:
        """Run the CLI in a forked child that became uid 65534 (nothing to exec)."""
        rfd, wfd = os.pipe()
        kid = os.fork()
        if kid == 0:  # pragma: no cover - child
            try:
                os.close(rfd)
                sys.stderr = open(wfd, "w", closefd=False)  # noqa: SIM115
                os.environ["XDG_RUNTIME_DIR"] = str(runtime)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                rc = argv() if callable(argv) else main(argv)
                sys.stderr.flush()
                os._exit(rc)
            except BaseException:
                os._exit(99)
        os.close(wfd)
        with os.fdopen(rfd) as f:
            text = f.read()
        _, status = os.waitpid(kid, 0)
        return os.waitstatus_to_exitcode(status), text

    # as deployed: the directory is 0700, so the other user cannot even reach the socket
    rc, text = as_nobody(["list", str(pid)])
    assert rc == 1
    assert f"process {pid} belongs to uid 0 and you are uid 65534" in text
    # let it reach the socket (test only): the agent's own SO_PEERCRED check refuses it
    os.chmod(runtime, 0o711)
    os.chmod(path.parent, 0o711)
    os.chmod(path, 0o666)
    rc, text = as_nobody(["list", str(pid)])
    assert rc == 1  # the client does not use a socket directory open to others
    assert f"process {pid} belongs to uid 0 and you are uid 65534" in text
    rc, text = as_nobody(talk_directly)
    assert rc == 1
    assert "refused: this process belongs to uid 0" in text and "you are uid 65534" in text
    child.wait_line(lambda s: True)  # still running
    os.chmod(path.parent, 0o700)  # as deployed again: clients use only private directories
    assert probes_of(cli, pid) == []  # root is served as before
    assert child.finish() == 0
    assert any("refused a connection from uid 65534" in line for line in child.err_lines)
