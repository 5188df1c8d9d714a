"""``pyprobes check``: specs parsed and resolved, nothing run or imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pyprobes

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


def check_in(cwd: Path, *args: str, isolated: bool = False) -> subprocess.CompletedProcess[str]:
    """``pyprobes check`` from ``cwd``; ``isolated`` (-P) leaves the current directory off
    sys.path, as the installed ``pyprobes`` script does."""
    return subprocess.run(
        [sys.executable, *(["-P"] if isolated else []), "-m", "pyprobes", "check", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        cwd=cwd,
        timeout=60,
    )


def _app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "helpers.py").write_text(
        "open(__file__ + '.ran', 'w').close()\n\ndef helper(x):\n    return x\n"
    )
    (app / "main.py").write_text(
        "import helpers\nopen(__file__ + '.ran', 'w').close()\n\n\n"
        "def main():\n    return helpers.helper(1)\n"
    )
    (tmp_path / "elsewhere").mkdir()
    return app


def test_check_with_script_finds_the_programs_own_modules(tmp_path: Path) -> None:
    """Issue 18.13: --script puts the script's directory on sys.path, as run does."""
    app = _app(tmp_path)
    specs = ("p helpers:helper x", "r __main__:main", "p __main__:*", "p __main__:6")
    plain = check_in(tmp_path / "elsewhere", *specs)
    assert plain.returncode == 1 and "helpers" in plain.stderr  # not found without it
    run = check_in(tmp_path / "elsewhere", "--script", str(app / "main.py"), *specs)
    assert run.returncode == 0, run.stderr
    lines = [line.rsplit(" [", 1)[0] for line in run.stdout.splitlines()]  # without the path
    assert lines[0].endswith(f"-> helper at {app / 'helpers.py'}:3")
    assert lines[1].endswith(f"-> main at {app / 'main.py'}:5")
    assert lines[2].endswith(f"-> wildcard: 1 function(s) of the program ({app / 'main.py'}) match")
    assert lines[3].endswith(f"-> line 6 of the program ({app / 'main.py'})")
    assert not list(app.glob("*.ran"))  # nothing ran
    bad = check_in(tmp_path / "elsewhere", "--script", str(app / "main.py"), "p __main__:nope")
    assert bad.returncode == 1 and "defines no function 'nope'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_check_with_dash_m_resolves_as_python_dash_m(tmp_path: Path) -> None:
    """Issue 18.13: -m puts the current directory first, as python -m does."""
    app = _app(tmp_path)
    plain = check_in(app, "p helpers:helper", isolated=True)
    assert plain.returncode == 1  # the installed script has no current directory on sys.path
    run = check_in(app, "-m", "main", "p helpers:helper", "r __main__:main", isolated=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[1].rsplit(" [", 1)[0].endswith(f"-> main at {app / 'main.py'}:5")
    assert not list(app.glob("*.ran"))  # nothing ran
    missing = check_in(app, "-m", "no_such_mod_zz", "p json:loads", isolated=True)
    assert missing.returncode == 1 and "No module named no_such_mod_zz" in missing.stderr


# --- issue 17.8: check gives run's verdicts -------------------------------------------------


def _run_script(tmp_path: Path, spec: str, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "prog.py"
    script.write_text(body)
    return subprocess.run(
        [sys.executable, "-m", "pyprobes", "run", "-e", spec, str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        cwd=tmp_path,
        timeout=60,
    )


def _error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("pyprobes: error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


BAD_SPECS = {
    "p time:sleep": "builtins and C functions have no bytecode to probe",
    "p json:dumps:999": "has no code to probe",
    "p json:dumps+1": "offset 1 is not an instruction boundary of dumps",
    "p json:99999": "line 99999 of module json has no code to probe",
}


@pytest.mark.parametrize("spec", list(BAD_SPECS))
def test_check_refuses_what_run_refuses_with_the_same_error(tmp_path: Path, spec: str) -> None:
    ran = _run_script(tmp_path, spec, "import json, time\njson.dumps(1)\ntime.sleep(0)\n")
    checked = check(spec)
    assert ran.returncode == 1 and checked.returncode == 1, (ran.stderr, checked.stderr)
    assert BAD_SPECS[spec] in _error(ran)
    assert _error(checked) == _error(ran)
    assert checked.stdout == "" and "Traceback" not in checked.stderr


def _second_offset() -> int:
    """The first probeable offset after the entry of json.dumps on this CPython (2 on 3.12-3.14,
    4 on 3.15, whose RESUME has a cache entry), found as the engine finds it."""
    import dis
    import json

    from pyprobes.engine.resolve import check_offset

    for ins in dis.get_instructions(json.dumps):
        if ins.offset > 0:
            try:
                check_offset(json.dumps.__code__, ins.offset)
            except ValueError:
                continue
            return ins.offset
    raise AssertionError("json.dumps has no probeable offset after its entry")


def test_check_accepts_what_run_accepts(tmp_path: Path) -> None:
    specs = (
        "p json:dumps",
        f"p json:dumps+{_second_offset()}",
        "r json:dumps",
        "p json.decoder:JSONDecoder.decode",
        "p json:*load*",
    )
    for spec in specs:
        ran = _run_script(tmp_path, spec, "import json\njson.dumps(1)\n")
        assert ran.returncode == 0 and "error" not in ran.stderr, (spec, ran.stderr)
    checked = check(*specs)
    assert checked.returncode == 0, checked.stderr
    lines = checked.stdout.splitlines()
    assert len(lines) == len(specs)
    assert "dumps at " in lines[0] and "dumps at " in lines[1]
    assert "wildcard: 2 function(s) of module json match" in lines[4]


def test_check_resolves_a_module_not_imported_as_its_import_would(tmp_path: Path) -> None:
    """A module check does not import is resolved on its compiled code: an offset that is
    not an instruction is refused, as arming it when 'run' imports the module refuses it."""
    app = _app(tmp_path)
    bad = check_in(tmp_path / "elsewhere", "--script", str(app / "main.py"), "p helpers:helper+1")
    assert bad.returncode == 1
    assert "offset 1 is not an instruction boundary of helper" in _error(bad)
    far = check_in(tmp_path / "elsewhere", "--script", str(app / "main.py"), "p helpers:helper:99")
    assert far.returncode == 1 and "has no code to probe" in _error(far)
    ok = check_in(tmp_path / "elsewhere", "--script", str(app / "main.py"), "p helpers:helper:1")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().rsplit(" [", 1)[0].endswith(f"-> helper at {app / 'helpers.py'}:4")
    assert not list(app.glob("*.ran"))  # nothing ran
    ran = subprocess.run(
        [sys.executable, "-m", "pyprobes", "run", "-e", "p helpers:helper+1", str(app / "main.py")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=60,
    )
    assert "offset 1 is not an instruction boundary of helper" in ran.stderr


def test_check_refuses_a_c_extension_module() -> None:
    run = check("p _csv:reader")
    assert run.returncode == 1
    assert "builtins and C functions have no bytecode to probe" in _error(run)


def test_check_says_which_path_each_probe_takes_and_why() -> None:
    """Issue 13.4: a probe whose hits only feed aggregations runs as a program in the core;
    the others say why they take the Python path."""
    run = check("r:a json:loads s", "r:b json:loads s:len", "--hist", "--by", "s")
    assert run.returncode == 0, run.stderr
    a, b = run.stdout.splitlines()
    assert a.endswith(" [program]")
    assert b.endswith(" [python: fetch arg s is converted (:len)]")
    paths = check("r:c json:loads c=s[0] $exception if $exception is None", "--by", "c")
    assert paths.stdout.rstrip().endswith(" [program]")  # fetch paths and $exception: 13.1
    stats = check("r json:loads", "--stats", "$duration")
    assert stats.stdout.rstrip().endswith(" [program]")  # 13.2: --stats in the core
    # events: recorded in the core where a program can write them, as run decides
    events = check("r:a json:loads s", "r:b json:loads s $caller").stdout.splitlines()
    chrome = check("--format", "chrome", "r json:loads").stdout.rstrip()
    if pyprobes.core_name() == "c":  # written in C from the ring, as JSON and text
        assert chrome.endswith("[program, events recorded in the core]")
    else:
        assert chrome.endswith("[python: chrome events are written by the Python path]")
    as_json = check("--format", "json", "r:a json:loads s", "r:b json:loads s $caller")
    j = as_json.stdout.splitlines()
    assert j[0].endswith("[program, events recorded in the core]")  # either core: JSON
    assert j[1].endswith("[python: $caller is read by the Python path]")
    if pyprobes.core_name() == "c":  # (the reference core renders text from events)
        assert events[0].endswith("[program, events recorded in the core]")
        assert events[1].endswith("[python: $caller is read by the Python path]")
    else:
        assert events[0].endswith("[python: text events are written by the Python path]")


def test_check_takes_lhist_and_says_it_runs_as_a_program() -> None:
    run = check("p:b json:loads s", "--lhist", "$duration,0,1ms,100us")
    assert run.returncode == 2 and run.stdout == ""
    assert "--lhist $duration: '$duration' is only available in return probes" in run.stderr
    ok = check("r:a json:loads s", "r:b json:loads s:len", "--lhist", "s,0,10,1", "--by", "s")
    assert ok.returncode == 0, ok.stderr
    a, b = ok.stdout.splitlines()
    assert a.endswith(" [program]")
    assert b.endswith(" [python: fetch arg s is converted (:len)]")
    bad = check("r json:loads", "--lhist", "$duration,0,1ms,300us")
    assert bad.returncode == 2
    assert bad.stderr == (
        "pyprobes: error: --lhist $duration,0,1ms,300us: MAX - MIN (1000000) must be a multiple"
        " of STEP (300000): e.g. MAX 1200000\n"
    )
