"""``pyprobes run`` as users meet it: pool sizes, aggregations, --by keys, histograms, traces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_run import pyprobes

from summary_table import hits_misses as summary_rows
from summary_table import summary_table


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


def test_aggregations_alone_print_no_events_unless_asked(tmp_path: Path) -> None:
    """--hist/--count print only the aggregations (bpftrace's maps); --events, -o or --format
    add the events back."""
    spec = ("-e", "r:w __main__:work n")
    quiet = pyprobes("run", *spec, "--count", "argv_mod.py")
    assert quiet.returncode == 0, quiet.stderr
    assert ": w: (" not in quiet.stderr and summary_rows(quiet.stderr) == {"w": (1, 0)}
    assert "@w: 1" in quiet.stderr or "count" in quiet.stderr.lower()
    loud = pyprobes("run", *spec, "--hist", "--events", "argv_mod.py")
    assert loud.stderr.count(": w: (") == 1 and "w $duration:" in loud.stderr
    out = tmp_path / "ev.jsonl"
    filed = pyprobes("run", *spec, "--count", "--format", "json", "-o", str(out), "argv_mod.py")
    assert filed.returncode == 0, filed.stderr
    assert [json.loads(line)["event"] for line in out.read_text().splitlines()] == ["w"]
    plain = pyprobes("run", *spec, "argv_mod.py")
    assert plain.stderr.count(": w: (") == 1


def test_unit_shows_the_duration_histogram_in_that_unit() -> None:
    run = pyprobes("run", "-e", "r:w __main__:work", "--hist", "--unit", "msecs", "argv_mod.py")
    assert run.returncode == 0, run.stderr
    assert "w $duration:\n     msecs " in run.stderr
    assert "avg = 0.0" in run.stderr and "avg = 0.0 msecs" not in run.stderr
    bad = pyprobes(
        "run", "-e", "r:w __main__:work n", "--hist", "n", "--unit", "usecs", "argv_mod.py"
    )
    assert bad.returncode == 2
    assert bad.stderr == "pyprobes: error: --unit usecs applies to --hist of $duration only\n"


def test_by_function_gives_one_count_and_histogram_per_function() -> None:
    """Issue 17.3: bpftrace's ``@[probefunc]``: a wildcard broken down by function."""
    run = pyprobes("run", "-e", "r:f __main__:?", "--hist", "--by", "$function", "funcs_prog.py")
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert [ln for ln in lines if ln.startswith("@f[")] == [
        "@f['__main__:c']: 3",
        "@f['__main__:b']: 2",
        "@f['__main__:a']: 1",
    ]
    heads = [ln for ln in lines if ln.endswith(" $duration:")]
    assert heads == [f"f['__main__:{n}'] $duration:" for n in "cba"]
    assert "f $duration:" not in lines  # no histogram of everything mixed


def test_by_caller_is_fetched_for_the_key() -> None:
    run = pyprobes("run", "-e", "p:f __main__:c", "--by", "$caller", "funcs_prog.py")
    assert run.returncode == 0, run.stderr
    keyed = sorted(ln for ln in run.stderr.splitlines() if ln.startswith("@f["))
    assert [ln.rsplit("funcs_prog.py:", 1)[1] for ln in keyed] == ["19']: 1", "24']: 1", "25']: 1"]


@pytest.mark.parametrize(
    ("by", "error"),
    [
        ("nosuch", "--by nosuch: no probe has a fetch arg of that name; use a fetch arg"),
        ("$bogus", "--by $bogus: no probe has a $variable of that name; use a fetch arg"),
        ("$functon", "did you mean '$function'?"),
        ("$duration", "--by $duration: '$duration' is only available in return probes"),
    ],
)
def test_by_a_field_no_probe_has_is_one_line_and_runs_nothing(by: str, error: str) -> None:
    run = pyprobes("run", "-e", "p:f __main__:c i", "--by", by, "argv_mod.py")
    assert run.returncode == 2
    assert run.stdout == ""  # the program did not run
    assert len(run.stderr.splitlines()) == 1 and error in run.stderr, run.stderr


def test_a_typo_in_the_programs_own_names_fails_before_it_runs() -> None:
    """Issue 17.9: one line with "did you mean", the program never started (no output, no
    empty summary table)."""
    run = pyprobes("run", "-e", "p __main__:wrk", "--count", "argv_mod.py")
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr == (
        "pyprobes: error: __main__ defines no function 'wrk'; did you mean 'work'?\n"
    )


def test_a_wildcard_probes_nested_functions_but_not_lambdas() -> None:
    """Issue 17.10: ``__main__:*`` has ``make.<locals>.inner`` (json.encoder's hot
    ``_make_iterencode.<locals>._iterencode`` is one); lambdas only when the pattern says '<'."""
    run = pyprobes("run", "-e", "r:f __main__:*", "--by", "$function", "nested_funcs_prog.py")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "3 1 9\n"
    keys = {ln.split("'")[1] for ln in run.stderr.splitlines() if ln.startswith("@f[")}
    assert keys == {
        "__main__:make",
        "__main__:make.<locals>.inner",
        "__main__:make.<locals>.inner.<locals>.deepest",
        "__main__:Box.open",
        "__main__:Box.open.<locals>.helper",
    }
    only = pyprobes(
        "run", "-e", "r:f __main__:*.<locals>.*", "--by", "$function", "nested_funcs_prog.py"
    )
    keys = {ln.split("'")[1] for ln in only.stderr.splitlines() if ln.startswith("@f[")}
    assert keys == {
        "__main__:make.<locals>.inner",
        "__main__:make.<locals>.inner.<locals>.deepest",
        "__main__:Box.open.<locals>.helper",
    }
    lam = pyprobes("run", "-e", "r:f __main__:<lambda>", "--count", "nested_funcs_prog.py")
    assert "@f: 1" in lam.stderr


def test_json_encoders_nested_generators_are_in_its_wildcard(tmp_path: Path) -> None:
    prog = tmp_path / "enc.py"
    prog.write_text(
        "import json, json.encoder\n"
        "json.encoder.c_make_encoder = None  # the Python encoder, as where _json is missing\n"
        "print(len(json.dumps({'a': [1, 2]})))\n"
    )
    run = pyprobes("run", "-e", "r:e json.encoder:*", "--by", "$function", str(prog), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "@e['json.encoder:_make_iterencode.<locals>._iterencode']: 1" in run.stderr
    assert "@e['json.encoder:_make_iterencode.<locals>._iterencode_dict']:" in run.stderr


def test_hits_on_pyprobes_own_threads_are_not_counted(tmp_path: Path) -> None:
    """Issue 13.6: the JSON writer encodes with json; probing json counts the program's calls
    only, whatever the format (22,665 hits with json output against 6,000 with text)."""
    prog = tmp_path / "enc.py"
    prog.write_text(
        "import json, sys, time\n"
        "for i in range(200):\n"
        "    json.dumps({'i': i})\n"
        "deadline = time.monotonic() + 60\n"
        "while time.monotonic() < deadline:  # until the writer wrote them, probes armed\n"
        "    with open(sys.argv[1]) as f:\n"
        "        if len(f.readlines()) >= 400:\n"
        "            break\n"
        "    time.sleep(0.01)\n"
    )
    out = tmp_path / "events.jsonl"
    run = pyprobes(
        "run", "-e", "r:e json.encoder:*", "--format", "json", "-o", str(out),
        str(prog), str(out), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert summary_rows(run.stderr)["e"] == (400, 0)  # encode and iterencode, 200 calls each
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(events) == 400 and {e["thread_name"] for e in events} == {"MainThread"}


def test_the_summary_accounts_for_every_hit_on_both_paths() -> None:
    """Issue 13.6: per probe, HITS = FILTERED + EVENTS + LOST, counted where they happen: in
    the core (programs writing records) and on the Python path (a $caller fetch)."""
    run = pyprobes(
        "run",
        "-e", "p:a __main__:work i if i >= 60",  # a program, its records in the ring
        "-e", "p:b __main__:work i $caller if i < 10",  # $caller: the Python path
        "-e", "r:c __main__:work $retval if $retval > 150",
        "-o", "/dev/null",
        "accounting_prog.py",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == "done\n"
    table = summary_table(run.stderr)
    assert table == {
        "a": {"HITS": 100, "FILTERED": 60, "EVENTS": 40, "LOST": 0, "MISSES": 0},
        "b": {"HITS": 100, "FILTERED": 90, "EVENTS": 10, "LOST": 0, "MISSES": 0},
        "c": {"HITS": 100, "FILTERED": 76, "EVENTS": 24, "LOST": 0, "MISSES": 0},
    }
    assert "made no event" not in run.stderr
    # aggregations only: no EVENTS column, the filtered still counted
    agg = pyprobes("run", "-e", "p:k __main__:work i if i < 25", "--count", "accounting_prog.py")
    assert agg.returncode == 0, agg.stderr
    assert "@k: 25" in agg.stderr
    assert summary_table(agg.stderr) == {"k": {"HITS": 100, "FILTERED": 75, "LOST": 0, "MISSES": 0}}


def test_hits_past_the_keys_a_program_keeps_are_said(tmp_path: Path) -> None:
    """A --by key table is bounded (programs.MAX_KEYS per probe): the hits of the keys past
    it are in no key's count, and the report says how many."""
    script = tmp_path / "keys.py"
    script.write_text("def work(i):\n    return i\n\nfor i in range(10_050):\n    work(i)\n")
    run = pyprobes("run", "-e", "p:k __main__:work i", "--by", "i", str(script))
    assert run.returncode == 0, run.stderr
    assert (
        "pyprobes: warning: k: 50 hits of keys past the 10,000 kept per probe are in no key's"
        " count" in run.stderr
    )
    assert summary_table(run.stderr)["k"]["HITS"] == 10_050


def _bar(n: int, peak: int) -> str:
    return "|" + ("@" * (n * 52 // peak)).ljust(52) + "|"


def test_lhist_by_function_is_bpftraces_lhist_per_key() -> None:
    """Issue 13.2: bpftrace's ``@[probefunc] = lhist(arg, 0, 2, 1)``, one table per key."""
    run = pyprobes(
        "run", "-e", "r:f __main__:? i", "--lhist", "i,0,2,1", "--by", "$function", "funcs_prog.py"
    )
    assert run.returncode == 0, run.stderr
    table = run.stderr.split("EVENT")[0]
    assert table == (
        "@f: 6\n@f['__main__:c']: 3\n@f['__main__:b']: 2\n@f['__main__:a']: 1\n"
        "f['__main__:c'] i:\n"
        f"[0, 1)                 1 {_bar(1, 1)}\n"
        f"[1, 2)                 1 {_bar(1, 1)}\n"
        f"[2, ...)               1 {_bar(1, 1)}\n"
        "f['__main__:b'] i:\n"
        f"[0, 1)                 1 {_bar(1, 1)}\n"
        f"[1, 2)                 1 {_bar(1, 1)}\n"
        "f['__main__:a'] i:\n"
        f"[0, 1)                 1 {_bar(1, 1)}\n"
    )


def test_lhist_of_durations_takes_units_and_shows_the_largest_that_fits() -> None:
    run = pyprobes(
        "run", "-e", "r:w __main__:work", "--lhist", "$duration,0,10ms,1ms", "argv_mod.py"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "[] 2\n"  # the program ran as it does alone
    assert f"w $duration (msecs):\n[0, 1)                 1 {_bar(1, 1)}\n" in run.stderr
    # the same on the Python path (events asked for too)
    events = pyprobes(
        "run", "-e", "r:w __main__:work", "--lhist", "$duration,0,10ms,1ms", "--events",
        "argv_mod.py",
    )  # fmt: skip
    assert f"w $duration (msecs):\n[0, 1)                 1 {_bar(1, 1)}\n" in events.stderr


@pytest.mark.parametrize(
    ("lhist", "error"),
    [
        (
            "n,0,25,10",
            "--lhist n,0,25,10: MAX - MIN (25) must be a multiple of STEP (10): e.g. MAX 30",
        ),
        ("n,10,0,1", "--lhist n,10,0,1: MIN must be below MAX, not 10 and 0"),
        ("n,0,10", "--lhist n,0,10: give FIELD,MIN,MAX,STEP"),
        ("n,0,10,0", "--lhist n,0,10,0: STEP must be positive, not 0"),
        ("n,0,1001,1", "(MAX - MIN) / STEP is 1001 buckets; at most 1000"),
        ("n,0,1.5,1", "--lhist n,0,1.5,1: MAX 1.5 is not a whole number"),
        ("n,0,1h,1", "MAX must be an int (durations may have a unit ns, us, ms or s), not '1h'"),
        ("nosuch,0,10,1", "--lhist nosuch: no probe has a fetch arg of that name"),
        ("$duration,0,10,1", "--lhist $duration: '$duration' is only available in return probes"),
    ],
)
def test_bad_lhist_is_one_line_and_runs_nothing(lhist: str, error: str) -> None:
    run = pyprobes("run", "-e", "p:w __main__:work n", "--lhist", lhist, "argv_mod.py")
    assert run.returncode == 2
    assert run.stdout == ""  # the program did not run
    assert len(run.stderr.splitlines()) == 1 and error in run.stderr, run.stderr


def test_hist_and_lhist_together_are_refused() -> None:
    run = pyprobes(
        "run", "-e", "r:w __main__:work n", "--hist", "--lhist", "n,0,9,1", "argv_mod.py"
    )
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == (
        "pyprobes: error: --hist and --lhist cannot be used together:"
        " give one histogram (log2 or linear)\n"
    )
