"""``pyprobes run`` as users meet it: pool sizes, aggregations, --by keys, histograms, traces."""

from __future__ import annotations

import pytest

from test_run import pyprobes


def summary_rows(stderr: str) -> dict[str, tuple[int, int]]:
    """EVENT -> (HITS, MISSES) from the exit summary."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("EVENT "))
    rows: dict[str, tuple[int, int]] = {}
    for line in lines[start + 1 :]:
        cells = line.split()
        if len(cells) != 4 or not cells[1].isdigit():
            break
        rows[cells[0]] = (int(cells[1]), int(cells[2]))
    return rows


def test_r_without_n_is_not_exhausted_by_tasks_or_recursion() -> None:
    """100 coroutines suspended at once in the probed one, and recursion 50 deep: no miss
    (the kernel's default of max(10, 2 * CPUs) missed 90 and 40 of them)."""
    run = pyprobes(
        "run",
        "-e",
        "r:h __main__:handler",
        "-e",
        "r:d __main__:depth",
        "--count",
        "concurrent_prog.py",
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "4950 49\n"
    assert summary_rows(run.stderr) == {"h": (100, 0), "d": (50, 0)}
    assert "warning" not in run.stderr


def test_an_explicit_small_pool_misses_and_says_how_to_raise_it() -> None:
    run = pyprobes("run", "-e", "r10:h __main__:handler", "--count", "concurrent_prog.py")
    assert run.returncode == 0, run.stderr
    assert summary_rows(run.stderr) == {"h": (10, 90)}
    warning = [line for line in run.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "misses on h" in warning[0] and "'r1000000:" in warning[0]


@pytest.mark.parametrize(
    "program_args",
    [["-x", "-q"], ["-h"], ["-e", "X", "--count"], ["--", "-m", "y"], ["-mfoo"]],
)
def test_everything_after_dash_m_module_is_the_programs(program_args: list[str]) -> None:
    """As ``python -m mod ARGS``: pyprobes parses none of ARGS (not -h, not -e, not -m)."""
    run = pyprobes("run", "-e", "r:w __main__:work", "--count", "-m", "argv_mod", *program_args)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{program_args!r} 2\n"
    assert summary_rows(run.stderr) == {"w": (1, 0)}


def test_module_glued_to_dash_m_and_script_arguments_are_the_programs() -> None:
    glued = pyprobes("run", "-e", "r:w __main__:work", "-margv_mod", "-h")
    assert glued.returncode == 0, glued.stderr
    assert glued.stdout == "['-h'] 2\n"
    script = pyprobes("run", "-e", "r:w __main__:work", "argv_mod.py", "-m", "x", "-e", "y")
    assert script.returncode == 0, script.stderr
    assert script.stdout == "['-m', 'x', '-e', 'y'] 2\n"
    assert summary_rows(script.stderr) == {"w": (1, 0)}


def test_option_values_that_look_like_dash_m_stay_ours() -> None:
    """``--by -m``-like values are skipped by their option, not taken for the module."""
    run = pyprobes("run", "--probe=r:w __main__:work", "--hist", "-m", "argv_mod", "a")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "['a'] 2\n"
    assert "w $duration:" in run.stderr
