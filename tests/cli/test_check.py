"""``pyprobes check``: specs parsed and resolved, nothing run or imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def check(*specs: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyprobes", "check", *specs],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=60,
    )


def test_check_resolves_without_importing() -> None:
    run = check("r:lat json.decoder:JSONDecoder.decode $retval", "p __main__:main", "p json:*load*")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(
        "r:pyprobes/lat json.decoder:JSONDecoder.decode%return -> JSONDecoder.decode at "
    )
    assert "decoder.py:" in lines[0]
    assert "the program's own code" in lines[1]
    assert "wildcard" in lines[2]


def test_check_stops_at_the_first_bad_spec() -> None:
    run = check("p json:loads", "p json:lods", "p json:dumps")
    assert run.returncode == 1
    assert run.stdout.count("\n") == 1
    assert "did you mean 'loads'" in run.stderr and "Traceback" not in run.stderr
