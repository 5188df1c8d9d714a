"""Helpers for attach tests: real child programs and their environment."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROGRAMS = HERE / "programs"
LOOP = str(PROGRAMS / "loop_prog.py")
SRC = str(HERE.parents[1] / "src")
TIMEOUT = 60.0


# A stand-in for interpreter start-up: site processes our .pth from a site dir (sys.argv[1]),
# then the program runs as __main__ (as `python prog.py` would, for what the agent can see).
LAUNCH = (
    "import site, sys, runpy; site.addsitedir(sys.argv[1]); sys.argv = sys.argv[2:];"
    " runpy.run_path(sys.argv[0], run_name='__main__')"
)


def base_env(runtime: Path) -> dict[str, str]:
    """The environment of children and CLI runs: our sources, our socket dir, no agent."""
    env = {k: v for k, v in os.environ.items() if k != "PYPROBES_AGENT"}
    env["PYTHONPATH"] = SRC
    env["XDG_RUNTIME_DIR"] = str(runtime)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    """A running program whose stdout lines are collected by a thread, stderr too."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=PROGRAMS,
        )
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(
                target=self._collect, args=(self.proc.stdout, self.lines), daemon=True
            ),
            threading.Thread(
                target=self._collect, args=(self.proc.stderr, self.err_lines), daemon=True
            ),
        ]
        for t in self._threads:
            t.start()
        self.pid = self.proc.pid

    def _collect(self, stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._cond:
                into.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(
        self, pred: Callable[[str], bool], timeout: float = TIMEOUT, start: int = 0
    ) -> tuple[int, str]:
        """The first stdout line from index ``start`` on that satisfies ``pred``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.lines)):
                    if pred(self.lines[i]):
                        return i, self.lines[i]
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._threads):
                    raise AssertionError(
                        f"{self.argv} exited with {self.proc.returncode};"
                        f" stdout {self.lines[-5:]} stderr {self.err_lines[-20:]}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting; stdout {self.lines[-5:]}")
                self._cond.wait(min(left, 0.5))

    def ready(self) -> int:
        """Wait for ``ready PID``; the program's pid as it reports it."""
        _, line = self.wait_line(lambda s: s.startswith("ready "))
        return int(line.split()[1])

    def progress_after(self, index: int) -> None:
        """Wait until the loop printed another progress line (it is still running)."""
        self.wait_line(lambda s: s[:1].isdigit() or s.startswith("rate "), start=index + 1)

    def finish(self, timeout: float = TIMEOUT) -> int:
        """Close stdin (the loop ends) and wait for the exit status."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(timeout)
        return rc

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)


class Raw:
    """A bare protocol client on a socket, for what the CLI never sends."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import socket

        from pyprobes.attach.protocol import MAX_AGENT_LINE, LineReader

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(os.fspath(path))
        self._reader = LineReader(MAX_AGENT_LINE)
        self._lines: list[bytes | None] = []
        self.events: list[dict[str, object]] = []
        self.eof = False

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: dict[str, object]) -> None:
        import json

        self.send_bytes((json.dumps(message) + "\n").encode())

    def message(self, timeout: float = TIMEOUT) -> dict[str, object] | None:
        """The next message (None at EOF)."""
        import json

        self.sock.settimeout(timeout)
        while not self._lines:
            data = self.sock.recv(1 << 20)
            if not data:
                self.eof = True
                return None
            self._lines.extend(self._reader.feed(data))
        line = self._lines.pop(0)
        assert line is not None
        msg: dict[str, object] = json.loads(line)
        return msg

    def until(self, kind: str, timeout: float = TIMEOUT) -> dict[str, object]:
        """Skip to the next message of type ``kind``, keeping events."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.message(max(0.01, deadline - time.monotonic()))
            assert msg is not None, f"EOF while waiting for {kind}"
            if msg["type"] == "events":
                self.events.extend(msg["events"])  # type: ignore[arg-type]
            if msg["type"] == kind:
                return msg

    def reply(self, timeout: float = TIMEOUT) -> dict[str, object]:
        """The next message that is not an event batch, a loss report or the counters."""
        while True:
            msg = self.message(timeout)
            assert msg is not None, "EOF while waiting for a reply"
            if msg["type"] == "events":
                self.events.extend(msg["events"])  # type: ignore[arg-type]
            elif msg["type"] not in ("lost", "counts"):
                return msg

    def hello(self, version: int = 1) -> dict[str, object]:
        self.send({"type": "hello", "version": version, "client": "test"})
        return self.reply()

    def request(self, rtype: str, **fields: object) -> dict[str, object]:
        self.send({"type": rtype, **fields})
        return self.reply()

    def close(self) -> None:
        import contextlib

        with contextlib.suppress(OSError):
            self.sock.close()
