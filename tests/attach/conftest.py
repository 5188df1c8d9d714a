"""Fixtures for attach tests: a private socket directory, real child programs, the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from attach_helpers import PROGRAMS, TIMEOUT, Child, base_env


@pytest.fixture
def runtime() -> Iterator[Path]:
    """A short private XDG_RUNTIME_DIR (AF_UNIX paths are short)."""
    d = Path(tempfile.mkdtemp(prefix="ppt", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def env(runtime: Path) -> dict[str, str]:
    return base_env(runtime)


@pytest.fixture
def spawn(env: dict[str, str]) -> Iterator[Callable[..., Child]]:
    """Start children; every one is killed at the end of the test."""
    children: list[Child] = []

    def start(*args: str, extra_env: dict[str, str] | None = None, listen: bool = True) -> Child:
        e = {**env, **(extra_env or {})}
        argv = [sys.executable, "-m", "pyprobes", "run", "--listen"] if listen else [sys.executable]
        child = Child([*argv, *args], e)
        children.append(child)
        return child

    try:
        yield start
    finally:
        for c in children:
            c.kill()


@pytest.fixture
def cli(env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m pyprobes ARGS`` to completion."""

    def run(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pyprobes", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=PROGRAMS,
            timeout=timeout,
        )

    return run


@pytest.fixture
def sitedir(tmp_path: Path) -> Path:
    """A site dir holding our .pth, for LAUNCH (attach_helpers)."""
    from pyprobes.attach.autostart import PTH_LINE, PTH_NAME

    d = tmp_path / "site"
    d.mkdir()
    (d / PTH_NAME).write_text(PTH_LINE + "\n")
    return d
