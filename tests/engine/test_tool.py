"""Our sys.monitoring tool id: which one, living beside other tools, releasing everything."""

from __future__ import annotations

import cProfile
import os
import pstats
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyprobes
from pyprobes import Kprobe, Kretprobe, ToolIdInUseError

M = sys.monitoring
SRC = str(Path(__file__).resolve().parents[2] / "src")


def work(x: int) -> int:
    return x + 1


def other(x: int) -> int:
    return x - 1


@pytest.fixture
def hold_ids() -> Iterator[list[int]]:
    held: list[int] = []
    yield held
    for tid in held:
        M.free_tool_id(tid)


def test_takes_a_free_id_never_0_to_2() -> None:
    p = Kprobe(addr=work)
    pyprobes.register_kprobe(p)
    try:
        tid = pyprobes.tool_id()
        assert tid in (3, 4, 5)
        assert M.get_tool(tid) == "pyprobes"
    finally:
        pyprobes.unregister_kprobe(p)
    assert pyprobes.tool_id() is None


def test_skips_an_id_held_by_another_tool(hold_ids: list[int]) -> None:
    M.use_tool_id(3, "someone")
    hold_ids.append(3)
    p = Kprobe(addr=work)
    pyprobes.register_kprobe(p)
    try:
        assert pyprobes.tool_id() == 4
        work(1)
        assert p.nhit == 1
    finally:
        pyprobes.unregister_kprobe(p)


def test_no_free_id_names_the_holders_and_registers_nothing(hold_ids: list[int]) -> None:
    for tid, name in ((3, "tool-three"), (4, "tool-four"), (5, "tool-five")):
        M.use_tool_id(tid, name)
        hold_ids.append(tid)
    with pytest.raises(ToolIdInUseError, match="3: 'tool-three', 4: 'tool-four'"):
        pyprobes.register_kprobe(Kprobe(addr=work))
    assert pyprobes.registered_probes() == []


def test_releases_callbacks_and_local_events_when_the_last_probe_goes() -> None:
    a = Kprobe(addr=work, post_handler=lambda p, ctx, f: None)
    b = Kretprobe(addr=other)
    pyprobes.register_kprobe(a)
    pyprobes.register_kretprobe(b)
    tid = pyprobes.tool_id()
    assert tid is not None
    assert M.get_local_events(tid, work.__code__) != 0
    if sys.version_info >= (3, 15):  # gh-142186: PY_UNWIND local to the probed code
        assert M.get_local_events(tid, other.__code__) & M.events.PY_UNWIND
    else:
        assert M.get_events(tid) & M.events.PY_UNWIND
    pyprobes.unregister_kprobe(a)
    assert M.get_local_events(tid, work.__code__) == 0
    pyprobes.unregister_kretprobe(b)
    assert M.get_tool(tid) is None
    # Take the id ourselves: nothing of pyprobes may be left on it (3.12/3.13 keep it all).
    M.use_tool_id(tid, "inspector")
    try:
        assert M.get_events(tid) == 0
        assert M.get_local_events(tid, work.__code__) == 0
        assert M.get_local_events(tid, other.__code__) == 0
        for event in (
            M.events.PY_START,
            M.events.PY_RETURN,
            M.events.PY_UNWIND,
            M.events.LINE,
            M.events.INSTRUCTION,
            M.events.PY_YIELD,
        ):
            assert M.register_callback(tid, event, None) is None
    finally:
        M.free_tool_id(tid)


def test_coexists_with_cprofile() -> None:
    p = Kprobe(addr=work)
    prof = cProfile.Profile()
    pyprobes.register_kprobe(p)
    try:
        prof.enable()
        for i in range(5):
            work(i)
        prof.disable()
    finally:
        pyprobes.unregister_kprobe(p)
    assert p.nhit == 5
    stats = pstats.Stats(prof)
    counts = {k[2]: v[1] for k, v in stats.stats.items()}  # type: ignore[attr-defined]
    assert counts["work"] == 5


def test_coexists_with_coverage_sysmon_core(tmp_path: Path) -> None:
    pytest.importorskip("coverage")
    script = tmp_path / "covered.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import pyprobes

            def f(x):
                if x > 0:
                    return x
                return -x

            p = pyprobes.Kprobe(addr=f)
            pyprobes.register_kprobe(p)
            for i in range(-3, 4):
                f(i)
            print("hits", p.nhit, "tool", pyprobes.tool_id(), sys.monitoring.get_tool(1))
            pyprobes.unregister_kprobe(p)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": SRC, "COVERAGE_CORE": "sysmon"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "coverage",
            "run",
            "--data-file",
            str(tmp_path / "cov"),
            str(script),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["hits", "7", "tool", "3", "coverage.py"]
    report = subprocess.run(
        [sys.executable, "-m", "coverage", "report", "--data-file", str(tmp_path / "cov"), "-m"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    assert "100%" in report.stdout  # coverage saw every line while our probe was armed
