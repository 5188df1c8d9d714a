"""``pyprobes run --metrics-port``: a real run serves /metrics while its program works."""

from __future__ import annotations

import re
import subprocess
import sys

from metrics_helpers import ENV, PROGRAMS, Run, samples


def test_the_histogram_count_is_the_calls_made_so_far_and_never_reset() -> None:
    run = Run("--metrics-port", "0", "-e", "r:w __main__:work", "--hist", "--unit", "nsecs")
    try:
        assert run.work(100) == 100
        first = samples(run.scrape())
        assert first['pyprobes_duration_seconds_count{event="w"}'] == "100"
        assert first['pyprobes_duration_seconds_bucket{event="w",le="+Inf"}'] == "100"
        assert first['pyprobes_probe_hits_total{event="w"}'] == "100"
        assert run.work(250) == 350
        second = samples(run.scrape())
        assert second['pyprobes_duration_seconds_count{event="w"}'] == "350"  # cumulative
        buckets = [
            int(v) for k, v in second.items() if k.startswith("pyprobes_duration_seconds_bucket")
        ]
        assert buckets == sorted(buckets) and buckets[-1] == 350
        page = run.scrape()
        assert f'pid="{run.proc.pid}"' in page and 'hostname="' in page
    finally:
        status, err = run.finish()
    assert status == 0, err
    assert "count = 350" in err  # the final report saw every call: scrapes reset nothing
    assert re.search(r"^w\s+350\s+0\s+0\s+0$", err, re.M), err  # HITS FILTERED LOST MISSES


def test_counts_by_key_and_the_server_thread_is_not_probed() -> None:
    # The server answers with http.server: a probe there would count the scrapes (own_thread
    # keeps them out). The program never uses http.server.
    run = Run(
        "--metrics-port",
        "0",
        "-e",
        "p:w __main__:work i",
        "-e",
        "p:srv http.server:BaseHTTPRequestHandler.send_response",
        "--count",
    )
    try:
        run.work(30)
        run.scrape()
        s = samples(run.scrape())
        assert s['pyprobes_events_total{event="w"}'] == "30"
        assert s['pyprobes_probe_hits_total{event="srv"}'] == "0"
    finally:
        status, err = run.finish()
    assert status == 0, err


def test_by_key_labels_and_stats() -> None:
    # a program in the core keeps --by and --stats: a scrape folds them in first
    run = Run("--metrics-port", "0", "-e", "r:w __main__:work i", "--by", "i", "--stats", "i")
    try:
        run.work(5)
        s = samples(run.scrape())
    finally:
        status, err = run.finish()
    assert status == 0, err
    assert {k: v for k, v in s.items() if k.startswith("pyprobes_events_total")} == {
        f'pyprobes_events_total{{event="w",key="{i}"}}': "1" for i in range(5)
    }
    assert s['pyprobes_value_stats_count{event="w",field="i"}'] == "5"
    assert s['pyprobes_value_max{event="w",field="i"}'] == "4"


def _pyprobes(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyprobes", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=PROGRAMS,
        timeout=60,
        input="",
    )


def test_bad_metrics_options_are_one_line_errors() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        r = _pyprobes("run", "--metrics-port", port, "-e", "p __main__:work", "metrics_prog.py")
    assert r.returncode == 2 and r.stdout == ""
    assert (
        r.stderr
        == f"pyprobes: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use\n"
    )
    r = _pyprobes(
        "run",
        "--metrics-port",
        "0",
        "--interval",
        "1",
        "-e",
        "p __main__:work",
        "--count",
        "metrics_prog.py",
    )
    assert r.returncode == 2 and "--interval resets the aggregations" in r.stderr
    assert r.stderr.count("\n") == 1
    r = _pyprobes("run", "--metrics-port", "70000", "-e", "p __main__:work", "metrics_prog.py")
    assert r.returncode == 2 and "a port is 0 to 65535, not 70000" in r.stderr
    r = _pyprobes(
        "run",
        "--metrics-port",
        "0",
        "--metrics-addr",
        "no.such.host.invalid",
        "-e",
        "p __main__:work",
        "metrics_prog.py",
    )
    assert r.returncode == 2 and r.stderr.startswith(
        "pyprobes: error: cannot serve metrics on no.such.host.invalid:0: "
    )
    assert r.stderr.count("\n") == 1
    r = _pyprobes("run", "--metrics-addr", "::1", "-e", "p __main__:work", "metrics_prog.py")
    assert r.returncode == 2
    assert (
        r.stderr == "pyprobes: error: --metrics-addr is where --metrics-port binds: give that too\n"
    )
