"""pyprobes beside the real tools that use sys.monitoring, each run as its CLI in a subprocess.

coverage.py (tool id 1) uses sys.monitoring by default from 3.14 (coverage >= 7.9.1), and with
COVERAGE_CORE=sysmon on 3.12/3.13: these tests force it there, so they run on every version.
pdb's sys.monitoring backend (tool id 0, what breakpoint() uses) exists from 3.14; on 3.12/3.13
the same session runs on its settrace backend and checks that pyprobes still works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SRC = str(HERE.parents[1] / "src")
SYSMON_DEFAULT = sys.version_info >= (3, 14)
PDB_MONITORING = sys.version_info >= (3, 14)

coverage = pytest.importorskip("coverage")


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("COVERAGE_", "PYTHONBREAKPOINT"))
    }
    env["PYTHONPATH"] = SRC
    if not SYSMON_DEFAULT:
        env["COVERAGE_CORE"] = "sysmon"  # 3.12/3.13: coverage's default is its C tracer
    env.update(extra)
    return env


def _run(
    args: list[str], cwd: Path, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=env if env is not None else _env(),
        cwd=cwd,
        timeout=120,
    )


def _covered_lines(data_file: Path, source: Path) -> set[int]:
    data = coverage.CoverageData(basename=str(data_file))
    data.read()
    lines = data.lines(str(source.resolve()))
    assert lines is not None, f"coverage measured nothing in {source}: {data.measured_files()}"
    return set(lines)


def _line_no(source: Path, marker: str) -> int:
    for n, text in enumerate(source.read_text().splitlines(), 1):
        if f"# {marker}" in text:
            return n
    raise AssertionError(marker)


LIBRARY_PROG = """\
import json, sys
import pyprobes
M = sys.monitoring

def price(item, qty):
    total = 0
    for _ in range(qty):
        total += len(item)  # PROBED
    return total

def after_release(n):
    return n * 2  # AFTER

def cov_state(code):
    return [M.get_tool(1), M.get_events(1), M.get_local_events(1, code)]

price("warmup", 1)  # coverage arms its local events at a function's first call
before = cov_state(price.__code__)
seen = []
entry = pyprobes.Kprobe(
    symbol_name="__main__:price", pre_handler=lambda p, ctx: seen.append(ctx.args["item"])
)
line = pyprobes.Kprobe(addr=price, line=PROBED_LINE)
ret = pyprobes.Kretprobe(addr=price)
pyprobes.register_kprobes([entry, line])
pyprobes.register_kretprobe(ret)
ours = pyprobes.tool_id()
during = cov_state(price.__code__)
for item, qty in (("fig", 2), ("pear", 3), ("kiwi", 1)):
    price(item, qty)
counts = [entry.nhit, line.nhit, ret.nhit]
pyprobes.unregister_kprobes([entry, line])
pyprobes.unregister_kretprobe(ret)
after = cov_state(price.__code__)
after_release(3)
print(json.dumps({"ours": ours, "tools": [M.get_tool(i) for i in range(6)], "seen": seen,
                  "counts": counts, "before": before, "during": during, "after": after}))
"""


@pytest.mark.parametrize(
    "branch",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.skipif(
                not SYSMON_DEFAULT, reason="coverage measures branches with sysmon from 3.14"
            ),
        ),
    ],
    ids=["lines", "branch"],
)
def test_coverage_run_of_a_program_that_registers_probes(tmp_path: Path, branch: bool) -> None:
    prog = tmp_path / "prog.py"
    prog.write_text(LIBRARY_PROG)
    prog.write_text(LIBRARY_PROG.replace("PROBED_LINE", str(_line_no(prog, "PROBED"))))
    data_file = tmp_path / "cov.data"
    args = ["-m", "coverage", "run", "--data-file", str(data_file)]
    run = _run([*args, *(["--branch"] if branch else []), str(prog)], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Can't use core=sysmon" not in run.stderr
    out = json.loads(run.stdout)
    # coverage.py really measured through sys.monitoring (id 1), and pyprobes took 3, not 0-2.
    assert out["before"][0] == "coverage.py"
    assert out["ours"] == 3
    assert out["tools"][:3] == [None, "coverage.py", None] and out["tools"][3] is None
    assert out["seen"] == ["fig", "pear", "kiwi"]
    assert out["counts"] == [3, 6, 3]
    # pyprobes neither changed coverage's events while armed nor on release.
    assert out["during"] == out["before"] == out["after"]
    lines = _covered_lines(data_file, prog)
    for marker in ("PROBED", "AFTER"):
        assert _line_no(prog, marker) in lines, marker
    report = _run(["-m", "coverage", "report", "--data-file", str(data_file), "-m"], tmp_path)
    assert report.returncode == 0, report.stderr
    assert "prog.py" in report.stdout and "100%" in report.stdout, report.stdout


TRACED_PROG = """\
import sys

def work(n):
    acc = 0
    for i in range(n):
        acc += i  # PROBED
    return acc

print("tools", sys.monitoring.get_tool(1), [sys.monitoring.get_tool(i) for i in (3, 4, 5)])
print("sum", sum(work(n) for n in (3, 4, 5)))
"""


def test_coverage_run_of_pyprobes_run(tmp_path: Path) -> None:
    prog = tmp_path / "traced.py"
    prog.write_text(TRACED_PROG)
    data_file = tmp_path / "cov.data"
    events = tmp_path / "ev.jsonl"
    probed = _line_no(prog, "PROBED")
    run = _run(
        [
            "-m",
            "coverage",
            "run",
            "--data-file",
            str(data_file),
            "-m",
            "pyprobes",
            "run",
            "-e",
            "r:done __main__:work n $retval",
            "-e",
            f"p:body {prog}:{probed} i",
            "--format",
            "json",
            "-o",
            str(events),
            str(prog),
        ],
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "tools coverage.py ['pyprobes', None, None]",
        "sum 19",
    ]
    evs = [json.loads(x) for x in events.read_text().splitlines()]
    assert [e["retval"] for e in evs if e["event"] == "done"] == [3, 6, 10]
    body = [e["args"]["i"] for e in evs if e["event"] == "body"]
    assert body == [0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4]
    assert "0 events lost" in run.stderr
    lines = _covered_lines(data_file, prog)
    assert {probed, probed + 1} <= lines  # the probed line and the return after it ran


PYTEST_MODULE = """\
import sys
import pyprobes

M = sys.monitoring

def checksum(data):
    total = 0
    for b in data:
        total = (total * 31 + b) % 65521  # PROBED
    return total

def test_probes_under_pytest_cov():
    assert M.get_tool(1) == "coverage.py"
    checksum(b"")  # coverage arms its local events at a function's first call
    coverage_events = M.get_local_events(1, checksum.__code__)
    assert coverage_events
    calls = []
    entry = pyprobes.Kprobe(
        addr=checksum, pre_handler=lambda p, ctx: calls.append(ctx.args["data"])
    )
    line = pyprobes.Kprobe(addr=checksum, line=PROBED_LINE)
    pyprobes.register_kprobes([entry, line])
    try:
        assert pyprobes.tool_id() == 3
        assert checksum(b"ab") == (97 * 31 + 98) % 65521
        assert checksum(b"xyz") > 0
    finally:
        pyprobes.unregister_kprobes([entry, line])
    assert calls == [b"ab", b"xyz"]
    assert entry.nhit == 2 and line.nhit == 5
    assert M.get_tool(1) == "coverage.py" and pyprobes.tool_id() is None
    assert M.get_local_events(1, checksum.__code__) == coverage_events
"""


def test_pytest_cov_runs_a_test_module_that_uses_pyprobes(tmp_path: Path) -> None:
    pytest.importorskip("pytest_cov")
    mod = tmp_path / "test_mod.py"
    mod.write_text(PYTEST_MODULE)
    mod.write_text(PYTEST_MODULE.replace("PROBED_LINE", str(_line_no(mod, "PROBED"))))
    run = _run(
        [
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            "--cov",
            str(tmp_path),
            "--cov-report",
            "term-missing",
            str(mod),
        ],
        tmp_path,
        env=_env(COVERAGE_FILE=str(tmp_path / "cov.data")),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
    assert "Can't use core=sysmon" not in run.stdout + run.stderr
    report = [ln for ln in run.stdout.splitlines() if ln.startswith("test_mod.py")]
    assert report and report[0].split()[3] == "100%", run.stdout
    assert _line_no(mod, "PROBED") in _covered_lines(tmp_path / "cov.data", mod)


PDB_PROG = """\
import sys
import pyprobes

def step(x):
    y = x * 2  # PROBED
    return y

hits = []
k = pyprobes.Kprobe(addr=step, pre_handler=lambda p, ctx: hits.append(ctx.args["x"]))
line = pyprobes.Kprobe(addr=step, line=PROBED_LINE)
pyprobes.register_kprobes([k, line])
before = [step(i) for i in range(3)]
x = 41
breakpoint()
z = step(x)
after = [step(i) for i in range(10, 13)]  # AFTER
print("RESULT", hits, k.nhit, line.nhit, pyprobes.tool_id(), sys.monitoring.get_tool(0))
pyprobes.unregister_kprobes([k, line])
"""

PDB_COMMANDS = """\
p ('X', x)
p ('TOOLS', sys.monitoring.get_tool(0), pyprobes.tool_id())
p ('HITS', len(hits))
until AFTER_LINE
p ('Z', z, len(hits))
c
"""


def test_breakpoint_session_in_a_probed_program(tmp_path: Path) -> None:
    prog = tmp_path / "dbg.py"
    prog.write_text(PDB_PROG)
    prog.write_text(PDB_PROG.replace("PROBED_LINE", str(_line_no(prog, "PROBED"))))
    commands = PDB_COMMANDS.replace("AFTER_LINE", str(_line_no(prog, "AFTER")))
    run = _run([str(prog)], tmp_path, stdin=commands)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "(Pdb)" in out, out
    assert "('X', 41)" in out, out
    # While pdb stops: on 3.14+ its monitoring backend holds tool id 0 (bdb's name for it);
    # on 3.12/3.13 breakpoint() uses settrace and id 0 stays free. pyprobes holds 3.
    tool0 = "'bdbtracer'" if PDB_MONITORING else "None"
    assert f"('TOOLS', {tool0}, 3)" in out, out
    assert "('HITS', 3)" in out, out
    # `until` ran `z = step(x)` under pdb's stepping: the probe fired there (4th hit), z is right.
    assert "('Z', 82, 4)" in out, out
    # After `c` the probe keeps firing, and pdb has released its id (pyprobes never took it).
    result = next(ln for ln in out.splitlines() if "RESULT" in ln)
    assert result.endswith("RESULT [0, 1, 2, 41, 10, 11, 12] 7 7 3 None"), out
    assert "Traceback" not in run.stderr, run.stderr


RESTART_PROG = """\
import dis, json, sys
import coverage
import pyprobes

def lines(n):
    t = 0
    for i in range(n):
        t += i  # PROBED
    return t

def offsets(n):
    t = 0
    for i in range(n):
        t += i  # OFFSET
    return t

offs = [i.offset for i in dis.get_instructions(offsets) if i.positions.lineno == OFFSET_LINE]
lp = pyprobes.Kprobe(addr=lines, line=PROBED_LINE)
# (not offs[0]: see LINE_DISABLE_EATS_INSTRUCTION in tests/engine/test_coexistence.py)
op = pyprobes.Kprobe(addr=offsets, offset=offs[1])
pyprobes.register_kprobes([lp, op])
lines(3); offsets(3)
cov = coverage.Coverage(data_file=sys.argv[1])
cov.start()  # sys.monitoring.restart_events(), and LINE on both functions at their next call
lines(3); offsets(3)
cov.stop()
cov.start()  # and again (coverage frees and takes its id)
lines(3); offsets(3)
cov.stop()
cov.save()
lines(3); offsets(3)
print(json.dumps([lp.nhit, op.nhit, pyprobes.tool_id()]))
pyprobes.unregister_kprobes([lp, op])
"""


def test_probes_keep_firing_across_coverage_start_and_stop_in_process(tmp_path: Path) -> None:
    prog = tmp_path / "restart.py"
    prog.write_text(RESTART_PROG)
    src = RESTART_PROG.replace("PROBED_LINE", str(_line_no(prog, "PROBED")))
    prog.write_text(src.replace("OFFSET_LINE", str(_line_no(prog, "OFFSET"))))
    run = _run([str(prog), str(tmp_path / "cov.data")], tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [12, 12, 3]
    assert _line_no(prog, "PROBED") in _covered_lines(tmp_path / "cov.data", prog)
