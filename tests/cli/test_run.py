"""``pyprobes run`` on real programs, in real subprocesses."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PROGRAMS = HERE / "programs"
SRC = str(HERE.parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC}


def pyprobes(
    *args: str, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyprobes", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=ENV,
        cwd=cwd or PROGRAMS,
        timeout=120,
    )


def python(
    *args: str, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=ENV,
        cwd=cwd or PROGRAMS,
        timeout=120,
    )


def events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_threads_entry_and_return_events_as_json(tmp_path: Path) -> None:
    out = tmp_path / "ev.jsonl"
    run = pyprobes(
        "run",
        "-e",
        "p:start __main__:work n label",
        "-e",
        "r:done __main__:work $retval",
        "--format",
        "json",
        "-o",
        str(out),
        "threads_prog.py",
        "x",
        "--y",
    )
    plain = python("threads_prog.py", "x", "--y")
    assert run.returncode == 0, run.stderr
    assert run.stdout == plain.stdout  # the program's own output is untouched
    evs = events(out)
    starts = [e for e in evs if e["event"] == "start"]
    dones = [e for e in evs if e["event"] == "done"]
    assert sorted(e["args"]["n"] for e in starts) == [10, 20, 30, 40]  # type: ignore[index]
    assert sorted(e["args"]["label"] for e in starts) == ["t1", "t2", "t3", "t4"]  # type: ignore[index]
    assert sorted(e["retval"] for e in dones) == [45, 190, 435, 780]  # type: ignore[type-var]
    for e in dones:
        assert e["kind"] == "r" and isinstance(e["duration_ns"], int) and e["duration_ns"] > 0
        assert e["thread_name"].startswith("worker-")  # type: ignore[union-attr]
        assert e["location"].endswith("threads_prog.py:16")  # type: ignore[union-attr]
        assert e["pid"] == evs[0]["pid"]
    assert {e["group"] for e in evs} == {"pyprobes"}
    assert "start" in run.stderr and "0 events lost" in run.stderr


def test_asyncio_latency_histogram_and_text_events() -> None:
    run = pyprobes(
        "run", "-e", "r:lat __main__:fetch i $retval", "--hist", "--events", "async_prog.py"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "gathered [0, 2, 4, 6, 8]\n"
    lines = [ln for ln in run.stderr.splitlines() if ": lat: (" in ln]
    assert len(lines) == 5
    assert all("<- __main__:fetch) i=" in ln and "$retval=" in ln for ln in lines)
    assert "lat $duration:" in run.stderr and "count = 5" in run.stderr
    assert "distribution" in run.stderr


def test_exception_ends_the_program_with_its_own_traceback(tmp_path: Path) -> None:
    run = pyprobes(
        "run", "-e", "r __main__:inner $exception", "-o", str(tmp_path / "ev"), "raising_prog.py"
    )
    plain = python("raising_prog.py")
    assert plain.returncode == 1
    assert run.returncode == 1
    assert run.stdout == plain.stdout == "before\n"
    # Same traceback, same frames: no frame of our package in it; our summary comes after it.
    # (The package's path, not the word: a checkout may well be named pyprobes.)
    assert run.stderr.startswith(plain.stderr)
    assert os.path.join(SRC, "pyprobes") + os.sep not in run.stderr
    assert run.stderr.count('  File "') == plain.stderr.count('  File "') > 0
    assert "ZeroDivisionError" in (tmp_path / "ev").read_text()


def test_sys_exit_status_is_kept() -> None:
    run = pyprobes("run", "-e", "__main__:finish code", "exit_prog.py")
    assert run.returncode == 3
    assert run.stdout == "exiting\n"
    assert "code=3" in run.stderr


def test_argv_path0_stdin_and_main_module_as_python_gives_them() -> None:
    run = pyprobes(
        "run",
        "-e",
        "p builtins_never_called_module_xyz:f",
        "env_prog.py",
        "a",
        "b",
        stdin="hello\n",
    )
    assert run.returncode != 0 and "no module named" in run.stderr  # bad spec: nothing ran
    run = pyprobes("run", "-e", "p json:loads s", "env_prog.py", "a", "b", stdin="hello\n")
    plain = python("env_prog.py", "a", "b", stdin="hello\n")
    assert run.returncode == 0, run.stderr
    assert run.stdout == plain.stdout
    assert f"path0 {PROGRAMS}" in run.stdout


def test_run_module_with_dash_m(tmp_path: Path) -> None:
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(
        "import sys\n\ndef hello(who):\n    return f'hi {who}'\n\n"
        "print(hello(sys.argv[1]), __name__)\n"
    )
    run = pyprobes("run", "-e", "r __main__:hello who $retval", "-m", "mypkg", "bob", cwd=tmp_path)
    plain = python("-m", "mypkg", "bob", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout == plain.stdout == "hi bob __main__\n"
    assert "who='bob' $retval='hi bob'" in run.stderr


def test_wildcard_probes_functions_of_modules_imported_later(tmp_path: Path) -> None:
    (tmp_path / "lib_a.py").write_text("def one():\n    return 1\n\ndef two():\n    return 2\n")
    (tmp_path / "main_a.py").write_text("import lib_a\nprint(lib_a.one() + lib_a.two())\n")
    out = tmp_path / "ev.jsonl"
    run = pyprobes(
        "run",
        "-e",
        "r:lib lib_*:*",
        "--format",
        "json",
        "-o",
        str(out),
        "main_a.py",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "3\n"
    assert sorted(e["probe"] for e in events(out)) == ["lib_a:one", "lib_a:two"]


def test_filter_and_count_by(tmp_path: Path) -> None:
    run = pyprobes(
        "run",
        "-e",
        "p:big __main__:work n if n >= 30",
        "--count",
        "--by",
        "n",
        "--events",
        "threads_prog.py",
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.count(": big: (") == 2
    assert "@big[30]: 1" in run.stderr and "@big[40]: 1" in run.stderr


def test_chrome_trace_is_valid_json(tmp_path: Path) -> None:
    out = tmp_path / "trace.json"
    run = pyprobes(
        "run", "-e", "r __main__:work", "--format", "chrome", "-o", str(out), "threads_prog.py"
    )
    assert run.returncode == 0, run.stderr
    trace = json.loads(out.read_text())
    complete = [e for e in trace if e.get("ph") == "X"]
    assert len(complete) == 4 and all(e["dur"] >= 0 for e in complete)


def test_chrome_trace_coroutines_and_generators_are_async_slices(tmp_path: Path) -> None:
    """Issue 17.11/17.3: plain functions are nested X slices, generator and coroutine
    activations are b/e pairs with one id each, and slices are named after functions."""
    out = tmp_path / "trace.json"
    run = pyprobes(
        "run", "-e", "r __main__:*", "--format", "chrome", "-o", str(out), "async_gen_prog.py"
    )
    assert run.returncode == 0, run.stderr
    assert "results [18, 99, 355, 980]" in run.stdout
    trace = json.loads(out.read_text())
    complete = [e for e in trace if e.get("ph") == "X"]
    by_tid: dict[object, list[tuple[float, float]]] = {}
    for e in complete:
        by_tid.setdefault(e["tid"], []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_tid.values():
        spans.sort(key=lambda s: (s[0], -s[1]))
        open_ends: list[float] = []
        for start, end in spans:
            while open_ends and open_ends[-1] <= start:
                open_ends.pop()
            assert not open_ends or end <= open_ends[-1], "partially overlapping X slices"
            open_ends.append(end)
    assert {e["name"] for e in complete} == {"__main__:square", "__main__:consume"}
    assert all(e["args"]["event"].startswith("r_") for e in complete)
    begins = {e["id"]: e for e in trace if e.get("ph") == "b"}
    ends = {e["id"]: e for e in trace if e.get("ph") == "e"}
    assert len(begins) == len([e for e in trace if e.get("ph") == "b"])  # ids are unique
    assert begins.keys() == ends.keys()
    names = sorted(e["name"] for e in begins.values())
    want = ["__main__:main"] + [f"__main__:{f}" for f in ("numbers", "ticks", "worker")] * 4
    assert names == sorted(want)
    for i, b in begins.items():
        e = ends[i]
        assert all(b[k] == e[k] for k in ("name", "cat", "pid", "tid"))
        assert b["ts"] <= e["ts"]


def test_chrome_trace_coroutine_probed_by_name_is_an_async_slice(tmp_path: Path) -> None:
    """A probe the engine resolves by name learns that its code is a coroutine's at a hit."""
    out = tmp_path / "trace.json"
    probe = "r asyncio.tasks:sleep"
    run = pyprobes("run", "-e", probe, "--format", "chrome", "-o", str(out), "async_gen_prog.py")
    assert run.returncode == 0, run.stderr
    trace = json.loads(out.read_text())
    assert not [e for e in trace if e.get("ph") == "X"]
    begins = [e for e in trace if e.get("ph") == "b"]
    ends = [e for e in trace if e.get("ph") == "e"]
    assert len(begins) == len(ends) == 16
    assert {e["name"] for e in begins + ends} == {"asyncio.tasks:sleep"}
    assert sorted(e["id"] for e in begins) == sorted(e["id"] for e in ends)
    assert len({e["id"] for e in begins}) == 16


def test_probe_file_and_summary(tmp_path: Path) -> None:
    specs = tmp_path / "specs.txt"
    specs.write_text("# probes\np:w __main__:work n\n\nr:wr __main__:work\n")
    run = pyprobes("run", "-f", str(specs), "threads_prog.py")
    assert run.returncode == 0, run.stderr
    summary = run.stderr.splitlines()[-4:]
    assert summary[0].split() == ["EVENT", "HITS", "FILTERED", "EVENTS", "LOST", "MISSES"]
    assert summary[1].split() == ["w", "4", "0", "4", "0", "0"]
    assert summary[2].split() == ["wr", "4", "0", "4", "0", "0"]
    assert summary[3] == "0 events lost"


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["run", "threads_prog.py"], 2, "no probe given"),
        (["run", "-e", "p:x json:loads s:strr", "threads_prog.py"], 2, "did you mean 'str'"),
        (["run", "-e", "p json:loads", "no_such.py"], 2, "can't open file"),
        (["run", "-e", "p json:loads"], 2, "give a SCRIPT to run, or -m MODULE"),
        (["run", "-e", "p json:lods", "threads_prog.py"], 1, "did you mean 'loads'"),
        (["run", "-e", "p json:loads", "-m", "no_such_module_zz"], 1, "No module named"),
        (["run", "-e", "p json:loads", "--duration", "-1", "threads_prog.py"], 2, "positive"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_errors_are_one_line_and_no_traceback(args: list[str], status: int, message: str) -> None:
    run = pyprobes(*args)
    assert run.returncode == status, run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout == ""


def test_duration_stops_tracing(tmp_path: Path) -> None:
    prog = tmp_path / "slow.py"
    prog.write_text(
        "import time, threading\n"
        "def tick(i):\n    return i\n"
        "stop = time.monotonic() + 3\n"
        "i = 0\n"
        "while time.monotonic() < stop:\n"
        "    tick(i); i += 1; time.sleep(0.01)\n"
        "print('ticks', i)\n"
    )
    out = tmp_path / "ev.jsonl"
    run = pyprobes(
        "run",
        "-e",
        "p __main__:tick i",
        "--format",
        "json",
        "-o",
        str(out),
        "--duration",
        "0.5",
        str(prog),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    ticks = int(run.stdout.split()[1])
    n = len(events(out))
    assert 0 < n < ticks  # tracing stopped before the program did


def test_interval_prints_and_resets_aggregations(tmp_path: Path) -> None:
    prog = tmp_path / "ticker.py"
    prog.write_text(
        "import time\n"
        "def tick(i):\n    return i\n"
        "stop = time.monotonic() + 1.5\n"
        "i = 0\n"
        "while time.monotonic() < stop:\n"
        "    tick(i); i += 1; time.sleep(0.005)\n"
    )
    run = pyprobes(
        "run",
        "-e",
        "p:t __main__:tick",
        "--count",
        "--interval",
        "0.2",
        "-o",
        os.devnull,
        str(prog),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    counts = [int(ln.split(":")[1]) for ln in lines if ln.startswith("@t")]
    assert len(counts) >= 3  # several interval prints and the final one
    # Each interval block starts with its local time (HH:MM:SS), the final one has none.
    stamps = [i for i, ln in enumerate(lines) if re.fullmatch(r"\d\d:\d\d:\d\d", ln)]
    assert len(stamps) == len(counts) - 1
    assert all(lines[i + 1].startswith("@t") for i in stamps)
    total = int(run.stderr.split("\nt ")[1].split()[0])  # hits from the summary row
    assert sum(counts) == total  # each print counted only what came since the last one


def test_probing_what_the_writer_uses_does_not_trace_the_writer(tmp_path: Path) -> None:
    out = tmp_path / "ev.jsonl"
    prog = tmp_path / "dumps.py"
    # The program keeps running until the writer has written its first event (so the writer
    # encodes it while the probe is armed), then gives a second event half a second to show.
    prog.write_text(
        "import json, os, sys, time\n"
        "print(json.dumps({'a': 1}))\n"
        "out = sys.argv[1]\n"
        "deadline = time.monotonic() + 60\n"
        "while time.monotonic() < deadline and not os.path.getsize(out):\n"
        "    time.sleep(0.01)\n"
        "time.sleep(0.5)\n"
    )
    run = pyprobes(
        "run",
        "-e",
        "p:d json:dumps obj",
        "--format",
        "json",
        "-o",
        str(out),
        str(prog),
        str(out),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == '{"a": 1}\n'
    evs = events(out)
    assert [e["args"] for e in evs] == [{"obj": {"a": 1}}]  # the program's call only


def test_a_return_probe_never_runs_the_exceptions_repr(tmp_path: Path) -> None:
    """Issue 18: $exception and the event's exception field follow the capture rules."""
    assert python("exc_repr_lock.py").stdout == "1 None done 0\n"
    out = tmp_path / "ev.jsonl"
    run = pyprobes(
        "run", "--format", "json", "-o", str(out), "-e", "r __main__:update $exception",
        "exc_repr_lock.py",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == "1 None done 0\n"  # no deadlock, and the program's __repr__ never ran
    (event,) = events(out)
    assert event["exception"] == "__main__.StateError('bad', 3)"
    assert event["args"] == {"$exception": "__main__.StateError('bad', 3)"}


def test_capturing_a_local_leaves_the_programs_locals_dict_alone(tmp_path: Path) -> None:
    """Issue 18.7: on 3.12 reading frame.f_locals refreshes the dict locals() returned."""
    plain = python("locals_snapshot.py")
    assert plain.stdout == "(1, ['a', 'x']) 1\n"
    out = tmp_path / "ev.jsonl"
    run = pyprobes(
        "run", "--format", "json", "-o", str(out), "-e", "p __main__:f:4 x a",
        "locals_snapshot.py",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == plain.stdout
    assert [e["args"] for e in events(out)] == [{"x": 2, "a": 0}] * 2


HOSTILE = "\x1b]0;owned\x07\x9b2J\u202eevil\u2066"
TERMINAL_CONTROLS = set("\x1b\x07\x9b\u202e\u2066")


def test_text_events_and_by_keys_escape_what_the_program_names(tmp_path: Path) -> None:
    """Issue 18.4: a thread name and values with ESC, CSI (U+009B) and bidi controls."""
    prog = tmp_path / "names.py"
    prog.write_text(
        "import threading\n"
        "def work(s, l):\n    return s\n"
        f"t = threading.Thread(target=work, args=({HOSTILE!r}, [{HOSTILE!r}]), name={HOSTILE!r})\n"
        "t.start(); t.join()\n"
    )
    run = pyprobes(
        "run", "-e", "p:w __main__:work s l $thread", "-e", "r:wr __main__:work $retval",
        "--count", "--by", "$thread", "--events", str(prog), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert not TERMINAL_CONTROLS & set(run.stderr), ascii(run.stderr)
    assert "\\x1b]0;owned\\x07\\x9b2J\\u202eevil\\u2066-" in run.stderr  # the thread name
    assert "@w['\\x1b]0;owned\\x07\\x9b2J\\u202eevil\\u2066']: 1" in run.stderr
    assert 'l=["\\u001b]0;owned\\u0007\\u009b2J\\u202eevil\\u2066"]' in run.stderr


DUMMIES = """\
import _thread, threading
def work(i):
    return i
def body(i, done):
    try:
        work(i)
    finally:
        done.release()
for i in range(5):
    done = _thread.allocate_lock()
    done.acquire()
    _thread.start_new_thread(body, (i, done))
    done.acquire()
names = sorted(t.name for t in threading.enumerate() if not t.name.startswith("pyprobes-"))
print("active", len(names), names)
"""


def test_threads_not_started_by_threading_get_no_dummy_thread(tmp_path: Path) -> None:
    """Issue 18.8: naming the thread of an event must not make a ``_DummyThread`` for it."""
    prog = tmp_path / "dummies.py"
    prog.write_text(DUMMIES)
    out = tmp_path / "ev.jsonl"
    run = pyprobes(
        "run", "-e", "p:w __main__:work i $thread", "-e", "r:wr __main__:work",
        "--format", "json", "-o", str(out), str(prog), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == python(str(prog), cwd=tmp_path).stdout == "active 1 ['MainThread']\n"
    evs = events(out)
    assert len(evs) == 10
    for e in evs:
        assert e["thread_name"] == f"Dummy-{e['thread_id']}"
    assert sorted(e["args"]["$thread"] for e in evs if e["event"] == "w") == sorted(  # type: ignore[index]
        e["thread_name"] for e in evs if e["event"] == "w"
    )


def test_an_output_that_fails_says_why(tmp_path: Path) -> None:
    """Issue 18.9: ENOSPC on -o is one line with the reason, not only "N events lost"."""
    prog = tmp_path / "many.py"
    prog.write_text("def f(i):\n    return i\nfor i in range(1000):\n    f(i)\nprint('done')\n")
    run = pyprobes("run", "-e", "p:f __main__:f i", "-o", "/dev/full", str(prog), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "done\n"
    lines = run.stderr.splitlines()
    assert lines[-1].startswith("1000 events lost (LOST: ")
    assert (
        "pyprobes: writing events to /dev/full failed: [Errno 28] No space left on device;"
        " 1000 events lost"
    ) in lines


WAITING = """\
import sys, time
def tick(i):
    return i
tick(1)
print("ready", flush=True)
time.sleep(60)
print("not reached")
"""


# Exec'd with SIGTERM and SIGHUP at their default, whatever the test runner ignores.
DEFAULT_SIGNALS_EXEC = (
    "import os, signal, sys\n"
    "for s in (signal.SIGTERM, signal.SIGHUP):\n"
    "    signal.signal(s, signal.SIG_DFL)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_print_the_report_and_die_by_the_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """Issue 18.9: the run ends as Ctrl-C does (aggregations, summary), then dies by ``sig``."""
    prog = tmp_path / "waiting.py"
    prog.write_text(WAITING)
    proc = subprocess.Popen(
        [sys.executable, "-c", DEFAULT_SIGNALS_EXEC, "-m", "pyprobes", "run",
         "-e", "p:t __main__:tick i", "--count", "-o", os.devnull, str(prog)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -sig, err
    assert out == ""
    assert "@t: 1\n" in err
    summary = [line.split() for line in err.splitlines()[-3:]]
    assert summary == [["EVENT", "HITS", "FILTERED", "EVENTS", "LOST", "MISSES"],
                       ["t", "1", "0", "1", "0", "0"], ["0", "events", "lost"]]  # fmt: skip
    assert "Traceback" not in err


@pytest.mark.parametrize("probes", [["-e", "p:t __main__:tick i", "--count"], []])
def test_sigterm_with_listen_removes_the_agents_socket(tmp_path: Path, probes: list[str]) -> None:
    """Issue 17.6: a SIGTERM ends ``run --listen`` (with or without probes of its own) as
    cleanly as the end of the program: the socket goes, the status is still -SIGTERM."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    prog = tmp_path / "waiting.py"
    prog.write_text(WAITING)
    proc = subprocess.Popen(
        [sys.executable, "-c", DEFAULT_SIGNALS_EXEC, "-m", "pyprobes", "run", "--listen",
         *probes, str(prog)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**ENV, "XDG_RUNTIME_DIR": str(runtime)}, cwd=tmp_path,
    )  # fmt: skip
    sock = runtime / "pyprobes" / f"{proc.pid}.sock"
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        assert sock.exists()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGTERM, err
    assert not sock.exists(), err
    assert "Traceback" not in err
    if probes:
        assert "@t: 1\n" in err and err.rstrip().endswith("0 events lost")


def test_version_names_pyprobes_and_the_python() -> None:
    run = pyprobes("--version")
    assert run.returncode == 0
    assert run.stdout == f"pyprobes 0.1.0 (CPython {platform.python_version()})\n"


def test_text_lines_name_both_ends_in_probe_syntax_and_show_what_raised() -> None:
    """Issue 17.12: a return line's site is ``module:qualname:line`` as the entry's probe is,
    and a return that raised says ``raised=TYPE``, not ``$retval=None``."""
    run = pyprobes(
        "run", "-e", "p:in __main__:inner", "-e", "r:out __main__:inner $retval", "raising_prog.py"
    )
    assert run.returncode == 1
    (entry,) = [ln for ln in run.stderr.splitlines() if ": in: (" in ln]
    (ret,) = [ln for ln in run.stderr.splitlines() if ": out: (" in ln]
    assert entry.endswith(": in: (__main__:inner+0)")
    assert re.search(
        r": out: \(__main__:outer:\d+ <- __main__:inner\) raised=ZeroDivisionError$", ret
    )


OS_EXIT = """\
import json, os, sys, time
def work(i):
    return i
for i in range(int(sys.argv[2])):
    work(i)
def written():
    try:
        return json.loads(open(sys.argv[1]).read() + "]")
    except ValueError:
        return []
deadline = time.monotonic() + 60
while sum(e.get("ph") == "X" for e in written()) < int(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.01)  # until the writer thread has written them: the condition, not a delay
os._exit(3)
"""


@pytest.mark.parametrize("calls", [0, 50])
def test_os_exit_leaves_a_chrome_file_the_viewers_load(tmp_path: Path, calls: int) -> None:
    """Issue 17.6: os._exit skips every exit handler; what was written up to then is a
    trace-event file in the JSON Array Format, whose closing bracket viewers add."""
    prog = tmp_path / "exiting.py"
    prog.write_text(OS_EXIT)
    out = tmp_path / "trace.json"
    run = pyprobes(
        "run", "-e", "r:w __main__:work", "--format", "chrome", "-o", str(out),
        str(prog), str(out), str(calls), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 3, run.stderr
    text = out.read_text()
    assert text.startswith("[\n")
    trace = json.loads(text + "]")  # what Perfetto and chrome://tracing do with it
    slices = [e for e in trace if e["ph"] == "X"]
    assert len(slices) == calls and all(e["name"] == "__main__:work" for e in slices)
