"""The PYPROBES_AGENT=1 start-up hook: the .pth line, its cost, the build that installs it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import site
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from attach_helpers import LAUNCH, LOOP, TIMEOUT, Child

from project_copy import copy_project
from pyprobes.attach.autostart import ENV_VAR, PTH_LINE, PTH_NAME

Cli = Callable[..., subprocess.CompletedProcess[str]]


def test_the_line_is_one_cheap_import_line() -> None:
    assert PTH_NAME == "pyprobes_agent.pth"
    assert PTH_LINE == (
        'import os; os.environ.get("PYPROBES_AGENT") == "1"'
        ' and __import__("pyprobes.attach.autostart")'
    )
    assert "\n" not in PTH_LINE and PTH_LINE.startswith("import ")  # site exec()s such lines


@pytest.mark.parametrize("value", [None, "", "0", "yes"])
def test_unset_or_other_values_import_nothing(
    sitedir: Path, env: dict[str, str], value: str | None
) -> None:
    e = {k: v for k, v in env.items() if k != ENV_VAR}
    if value is not None:
        e[ENV_VAR] = value
    code = (
        "import site, sys, threading; site.addsitedir(sys.argv[1]);"
        " print('pyprobes' in sys.modules, [t.name for t in threading.enumerate()])"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(sitedir)], capture_output=True, text=True, env=e
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False ['MainThread']" and r.stderr == ""


def test_set_to_1_the_program_is_attachable(
    sitedir: Path, env: dict[str, str], cli: Cli, runtime: Path
) -> None:
    child = Child([sys.executable, "-c", LAUNCH, str(sitedir), LOOP], {**env, ENV_VAR: "1"})
    try:
        pid = child.ready()
        assert (runtime / "pyprobes" / f"{pid}.sock").exists()
        r = cli("attach", str(pid), "-e", "r:wr __main__:work n $retval", "--duration", "0.5")
        assert r.returncode == 0, r.stderr
        assert ": wr: (" in r.stderr and "$retval=" in r.stderr
        listed = json.loads(cli("list", str(pid), "--json").stdout)
        assert listed["probes"] == []
        assert child.finish() == 0
        assert child.err_lines == []
    finally:
        child.kill()
    assert not (runtime / "pyprobes" / f"{pid}.sock").exists()


def _run_loop(sitedir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The LOOP program with the hook's site dir, to its end (its stdin closed)."""
    return subprocess.run(
        [sys.executable, "-c", LAUNCH, str(sitedir), LOOP],
        capture_output=True,
        text=True,
        env=env,
        input="",
        timeout=TIMEOUT,
    )


def test_a_failed_start_is_one_line_and_the_program_runs(
    sitedir: Path, env: dict[str, str], runtime: Path
) -> None:
    deep = runtime / ("d" * 60) / ("e" * 60)  # too long a socket path: nowhere to listen
    deep.mkdir(parents=True)
    r = _run_loop(sitedir, {**env, ENV_VAR: "1", "XDG_RUNTIME_DIR": str(deep)})
    assert r.returncode == 0
    assert r.stdout.startswith("ready ") and "done " in r.stdout
    (line,) = r.stderr.splitlines()
    assert line.startswith("pyprobes: PYPROBES_AGENT=1 but the agent did not start:")
    assert "longer than 107 bytes" in line


def test_a_taken_directory_is_one_line_and_the_agent_listens_elsewhere(
    sitedir: Path, env: dict[str, str], runtime: Path
) -> None:
    (runtime / "pyprobes").write_text("not a directory")
    r = _run_loop(sitedir, {**env, ENV_VAR: "1", "TMPDIR": str(runtime)})
    assert r.returncode == 0
    assert r.stdout.startswith("ready ") and "done " in r.stdout
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"pyprobes agent: {runtime / 'pyprobes'} must be a directory")
    assert f"; listening in {runtime}/pyprobes-{os.geteuid()}-" in line and line.endswith(
        " instead"
    )
    assert sorted(p.name for p in runtime.iterdir()) == ["pyprobes"]  # the fallback went at exit


def _installed() -> importlib.metadata.Distribution | None:
    """The installed distribution (a wheel install has a RECORD; src/*.egg-info has not)."""
    try:
        dist = importlib.metadata.distribution("pyprobes")
    except importlib.metadata.PackageNotFoundError:
        return None
    return dist if dist.read_text("RECORD") is not None else None


@pytest.mark.skipif(_installed() is None, reason="pyprobes is not installed here (PYTHONPATH run)")
def test_the_installed_package_has_the_hook(env: dict[str, str], cli: Cli) -> None:
    dist = _installed()
    assert dist is not None
    files = [str(f) for f in dist.files or ()]
    assert PTH_NAME in files, files[:20]
    found = [Path(d, PTH_NAME) for d in site.getsitepackages() if Path(d, PTH_NAME).exists()]
    assert found, site.getsitepackages()
    assert found[0].read_text() == PTH_LINE + "\n"
    # the real thing: an interpreter that starts with the variable set serves an agent
    e = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    child = Child([sys.executable, LOOP], {**e, ENV_VAR: "1"})
    try:
        pid = child.ready()
        r = cli("attach", str(pid), "-e", "p:w __main__:work n", "--duration", "0.3")
        assert r.returncode == 0, r.stderr
        assert ": w: (__main__:work+0) n=" in r.stderr
        assert child.finish() == 0
    finally:
        child.kill()


def test_wheels_put_the_hook_in_site_packages(tmp_path: Path) -> None:
    """Both a wheel (pip install .) and an editable wheel (pip install -e .) carry it at the
    root, which is site-packages once installed, and list it in RECORD."""
    project = tmp_path / "project"
    project.mkdir()
    copy_project(project)
    out = tmp_path / "dist"
    built = []
    for hook in ("build_wheel", "build_editable"):
        code = (
            "from setuptools import build_meta as b; import sys;"
            f" print('BUILT', b.{hook}(sys.argv[1]))"
        )
        r = subprocess.run(
            [sys.executable, "-c", code, str(out)],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        (line,) = [x for x in r.stdout.splitlines() if x.startswith("BUILT ")]
        built.append(line.split()[1])
    wheel, editable = built
    for name in (wheel, editable):
        with zipfile.ZipFile(out / name) as z:
            assert z.read(PTH_NAME).decode() == PTH_LINE + "\n"
            record = z.read("pyprobes-0.1.0.dist-info/RECORD").decode()
            assert any(line.startswith(PTH_NAME + ",sha256=") for line in record.splitlines())
