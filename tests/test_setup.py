"""setup.py: the C core is optional (no compiler: the build still succeeds and says so once),
and it is optimised even when CFLAGS in the environment replaced CPython's flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from project_copy import copy_project

GAVE_UP = "pyprobes: the C core could not be built"


def build_ext(project: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``setup.py build_ext --inplace`` in a copy of the project; setuptools prints each command."""
    e = {k: v for k, v in os.environ.items() if k not in ("CFLAGS", "CC", "PYPROBES_REQUIRE_C")}
    return subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=project,
        env={**e, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def compile_line(r: subprocess.CompletedProcess[str]) -> list[str]:
    (line,) = [x for x in r.stdout.splitlines() if "-c src/pyprobes/_speedups.c" in x]
    return line.split()


def built(project: Path) -> list[Path]:
    return sorted((project / "src" / "pyprobes").glob("_speedups*.so"))


def test_no_compiler_still_builds_and_says_so_once(tmp_path: Path) -> None:
    copy_project(tmp_path)
    r = build_ext(tmp_path, CC="false")  # a compiler that always fails
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count(GAVE_UP) == 1, r.stderr[-3000:]
    assert "using the pure-Python core" in r.stderr
    assert built(tmp_path) == []


def test_no_compiler_is_an_error_when_the_c_core_is_required(tmp_path: Path) -> None:
    copy_project(tmp_path)
    r = build_ext(tmp_path, CC="false", PYPROBES_REQUIRE_C="1")
    assert r.returncode != 0
    assert GAVE_UP not in r.stderr


def test_an_empty_cflags_still_compiles_optimised(tmp_path: Path) -> None:
    copy_project(tmp_path)
    r = build_ext(tmp_path, CFLAGS="", PYPROBES_REQUIRE_C="1")
    assert r.returncode == 0, r.stderr[-3000:]
    args = compile_line(r)
    assert "-O3" in args and "-fno-strict-overflow" in args
    assert len(built(tmp_path)) == 1


def test_an_optimisation_level_in_cflags_is_kept(tmp_path: Path) -> None:
    copy_project(tmp_path)
    r = build_ext(tmp_path, CFLAGS="-O1", PYPROBES_REQUIRE_C="1")
    assert r.returncode == 0, r.stderr[-3000:]
    levels = [a for a in compile_line(r) if a.startswith("-O")]
    assert levels == ["-O1"]


def test_a_change_in_any_section_of_the_c_core_rebuilds_it(tmp_path: Path) -> None:
    """_speedups.c is one translation unit of included sections: each is a dependency."""
    copy_project(tmp_path)
    fast = {"CFLAGS": "-O0", "PYPROBES_REQUIRE_C": "1"}
    r = build_ext(tmp_path, **fast)
    assert r.returncode == 0, r.stderr[-3000:]
    (so,) = built(tmp_path)
    r = build_ext(tmp_path, **fast)
    assert r.returncode == 0 and "-c src/pyprobes/_speedups.c" not in r.stdout  # up to date
    sections = sorted((tmp_path / "src" / "pyprobes").glob("_*.c"))
    assert len(sections) > 4
    for section in sections:
        if section.name == "_speedups.c":
            continue
        later = so.stat().st_mtime + 10
        os.utime(section, (later, later))
        r = build_ext(tmp_path, **fast)
        assert r.returncode == 0, r.stderr[-3000:]
        assert compile_line(r), section.name
        (so,) = built(tmp_path)
        os.utime(so, (later + 1, later + 1))
