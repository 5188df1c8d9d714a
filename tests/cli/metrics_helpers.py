"""A ``pyprobes run --metrics-port 0 ... metrics_prog.py`` driven through its stdin, scraped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PROGRAMS = HERE / "programs"
SRC = str(HERE.parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC}
URL_LINE = re.compile(r"pyprobes: metrics at (http://\S+/metrics)\n")


class Run:
    """``pyprobes run ... metrics_prog.py``, driven line by line through its stdin."""

    def __init__(self, *options: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyprobes", "run", *options, "metrics_prog.py"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=PROGRAMS,
        )
        assert self.proc.stderr is not None
        first = self.proc.stderr.readline()  # said before the program's first line
        m = URL_LINE.fullmatch(first)
        if m is None:
            self.proc.kill()
            rest = self.proc.communicate()[1]
            pytest.fail(f"no metrics line: {first!r} {rest!r}")
        self.url = m.group(1)

    def work(self, n: int) -> int:
        """Make the program call work() n times; returns its total so far."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line.startswith("done "), line
        return int(line.split()[1])

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as resp:
            assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            body: bytes = resp.read()
        return body.decode("utf-8")

    def finish(self) -> tuple[int, str]:
        """Let the program end; returns (status, the rest of stderr)."""
        assert self.proc.stdin is not None and self.proc.stderr is not None
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except OSError:  # it ended already
            pass
        rest = self.proc.stderr.read()  # to its end: the program and pyprobes are done
        try:
            return self.proc.wait(timeout=60), rest
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def samples(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[re.sub(r',?(hostname|pid)="[^"]*"', "", series).replace("{,", "{")] = value
    return out
