"""``pyprobes attach``, ``list`` and ``ps`` against real running programs."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from attach_helpers import LOOP, TIMEOUT, Child

from summary_table import summary_table

Cli = Callable[..., subprocess.CompletedProcess[str]]
Spawn = Callable[..., Child]


def listing(cli: Cli, pid: int) -> dict[str, object]:
    r = cli("list", str(pid), "--json")
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout)
    return out


def wait_no_probes(cli: Cli, pid: int, timeout: float = TIMEOUT) -> dict[str, object]:
    """Poll the listing until the process holds no probe (the agent saw a client go)."""
    deadline = time.monotonic() + timeout
    while True:
        data = listing(cli, pid)
        if not data["probes"] or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


def check_progress(lines: list[str]) -> None:
    """The loop's own output: every progress line is ``i i*(i-1)``; values unchanged."""
    numbers = [line.split() for line in lines if line[:1].isdigit()]
    assert numbers
    for i, total in numbers:
        assert int(total) == int(i) * (int(i) - 1)


def test_attach_streams_aggregates_and_leaves_nothing(
    cli: Cli, spawn: Spawn, tmp_path: Path, runtime: Path
) -> None:
    child = spawn(LOOP)
    pid = child.ready()
    assert pid == child.pid  # run --listen runs the program in its own process
    before = listing(cli, pid)
    assert before["probes"] == [] and before["tool_id"] is None
    out = tmp_path / "events.jsonl"
    r = cli(
        "attach", str(pid),
        "-e", "p:w __main__:work n",
        "-e", "r:wr __main__:work n $retval",
        "--hist", "--by", "$thread", "--format", "json", "-o", str(out),
        "--duration", "1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    entries = [e for e in events if e["event"] == "w"]
    returns = [e for e in events if e["event"] == "wr"]
    assert entries and returns
    assert all(e["pid"] == pid and e["kind"] == "p" for e in entries)
    for e in returns[:50]:
        assert e["kind"] == "r" and e["retval"] == e["args"]["$retval"] == 2 * e["args"]["n"]
        assert isinstance(e["duration_ns"], int) and e["duration_ns"] >= 0
    for e in entries[:50]:
        assert isinstance(e["args"]["n"], int)
    # aggregations and the summary, as pyprobes run prints them
    assert f"attached to {pid}" in r.stderr
    # --hist with --by: one histogram per key
    assert "wr['MainThread'] $duration:" in r.stderr and "distribution" in r.stderr
    assert "@wr['MainThread']:" in r.stderr
    assert (
        "EVENT" in r.stderr and "HITS" in r.stderr and re.search(r"\b\d+ events? lost\b", r.stderr)
    )
    summary = summary_table(r.stderr)
    # the agent's hits and filtered; the events this client wrote (every line of the file)
    assert summary["w"]["EVENTS"] == len(entries) > 0 and summary["w"]["FILTERED"] == 0
    assert summary["w"]["HITS"] >= summary["w"]["EVENTS"] + summary["w"]["LOST"]
    # nothing left in the target: no probe, tool id free
    after = listing(cli, pid)
    assert after["probes"] == [] and after["tool_id"] is None
    # and the program did not notice: its output is intact, it goes on and exits cleanly
    n = len(child.lines)
    child.progress_after(n)
    assert child.finish() == 0
    check_progress(child.lines)
    assert child.lines[-1].startswith("done ")
    assert child.err_lines == []
    assert not (runtime / "pyprobes" / f"{pid}.sock").exists()  # unlinked at exit


def test_list_shows_probes_with_owner_and_counters(
    cli: Cli, spawn: Spawn, runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyprobes.attach.client import AgentConnection

    child = spawn(LOOP)
    pid = child.ready()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    with AgentConnection.open(pid) as conn:
        reply = conn.request("add", specs=["p:mine __main__:work n", "r __main__:work"])
        handles = [p["handle"] for p in reply["probes"]]
        assert len(handles) == 2
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            msg = conn.receive(1.0)
            if msg and msg["type"] == "events":
                break
        r = cli("list", str(pid))
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith(f"# pyprobes pid={pid} python=")
        assert "clients=1" in lines[0]
        probe_lines = lines[1:]
        assert len(probe_lines) == 2
        kinds = sorted(line.split()[1] for line in probe_lines)
        assert kinds == ["k", "r"]
        for line in probe_lines:
            assert line.startswith("0x")
            assert "__main__:work+0 [__main__]" in line
            assert "hits=" in line and "misses=0" in line
            assert "client=" in line
        assert "event=mine" in r.stdout and "event=r_work_0" in r.stdout
        hits = [int(part.split("=")[1]) for part in r.stdout.split() if part.startswith("hits=")]
        assert all(h > 0 for h in hits)
        # disable, enable, remove through the protocol
        conn.request("disable", handles=[handles[0]])
        data = listing(cli, pid)
        flags = {p["kind"]: p["flags"] for p in data["probes"]}  # type: ignore[union-attr]
        assert flags["k"] == ["DISABLED"] and flags["r"] == []
        conn.request("enable", handles=[handles[0]])
        conn.request("remove", handles=[handles[1]])
        data = listing(cli, pid)
        assert [p["kind"] for p in data["probes"]] == ["k"]  # type: ignore[union-attr]
        status = conn.request("status")
        assert [p["handle"] for p in status["probes"]] == [handles[0]]
    assert wait_no_probes(cli, pid)["probes"] == []
    assert child.finish() == 0


def test_killed_client_leaves_no_probe(cli: Cli, spawn: Spawn, env: dict[str, str]) -> None:
    child = spawn(LOOP)
    pid = child.ready()
    client = subprocess.Popen(
        [sys.executable, "-m", "pyprobes", "attach", str(pid), "-e", "r:wr __main__:work $retval",
         "--format", "json"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert client.stderr is not None
        for line in client.stderr:
            if line.startswith("{"):
                assert json.loads(line)["event"] == "wr"
                break
        assert listing(cli, pid)["probes"]
        client.kill()  # no detach: the agent sees the connection drop
        client.wait(TIMEOUT)
    finally:
        if client.poll() is None:
            client.kill()
    assert wait_no_probes(cli, pid)["probes"] == []
    n = len(child.lines)
    child.progress_after(n)
    assert child.finish() == 0
    check_progress(child.lines)
    assert child.err_lines == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_detaches_with_summary(
    cli: Cli, spawn: Spawn, env: dict[str, str], sig: signal.Signals
) -> None:
    child = spawn(LOOP)
    pid = child.ready()
    client = subprocess.Popen(
        [sys.executable, "-m", "pyprobes", "attach", "-e", "p:w __main__:work n",
         "--count", "--events", str(pid)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert client.stderr is not None
        for line in client.stderr:
            if ": w: (__main__:work+0) n=" in line:
                break
        client.send_signal(sig)
        rest = client.stderr.read()
        assert client.wait(TIMEOUT) == 0
    finally:
        if client.poll() is None:
            client.kill()
    assert "@w: " in rest or "@w:" in rest
    assert "EVENT" in rest and re.search(r"\b\d+ events? lost\b", rest)
    assert listing(cli, pid)["probes"] == []
    assert child.finish() == 0


def test_errors_are_one_actionable_line(cli: Cli, spawn: Spawn) -> None:
    # a dead pid
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    r = cli("attach", str(dead.pid), "-e", "p json:loads")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"pyprobes: error: no process {dead.pid}"]
    # a live process without an agent
    plain = spawn(LOOP, listen=False)
    pid = plain.ready()
    r = cli("list", str(pid))
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert f"process {pid} runs no pyprobes agent" in line
    assert "PYPROBES_AGENT=1" in line and "pyprobes run --listen" in line
    # a spec the parser rejects (client side), a function the target does not have
    child = spawn(LOOP)
    pid = child.ready()
    r = cli("attach", str(pid), "-e", "p:bad event __main__:work")
    assert r.returncode == 2 and r.stderr.startswith("pyprobes: error:")
    r = cli("attach", str(pid), "-e", "p __main__:work", "-e", "p __main__:nope", "--duration", "5")
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"pyprobes: error: process {pid}: spec 2")
    assert "nope" in line
    assert listing(cli, pid)["probes"] == []  # all or none: spec 1 is gone too
    assert child.finish() == 0


def test_ps_lists_agents_and_cleans_stale_sockets(cli: Cli, spawn: Spawn, runtime: Path) -> None:
    import socket

    child = spawn(LOOP, "extra-arg")
    pid = child.ready()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = runtime / "pyprobes" / f"{dead.pid}.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    r = cli("ps")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["PID", "PYTHON", "AGENT", "CLIENTS", "PROBES", "COMMAND"]
    (row,) = [line for line in lines[1:] if line.split()[0] == str(pid)]
    assert row.split()[1:5] == [".".join(map(str, sys.version_info[:3])), "yes", "0", "0"]
    assert row.endswith("loop_prog.py extra-arg")
    assert not stale.exists()
    r = cli("ps", "--json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    ours = [row for row in rows if str(row.get("socket", "")).startswith(str(runtime))]
    assert [row["pid"] for row in ours] == [pid]  # (root also sees other users' agents)
    assert ours[0]["clients"] == 0 and ours[0]["probes"] == 0 and ours[0]["agent"] is True
    assert child.finish() == 0
    # the agent unlinked its socket at exit
    assert not (runtime / "pyprobes" / f"{pid}.sock").exists()


def test_run_listen_with_its_own_probes_and_an_attached_client(
    cli: Cli, spawn: Spawn, tmp_path: Path, env: dict[str, str]
) -> None:
    own = tmp_path / "own.jsonl"
    child = spawn("-e", "p:own __main__:work n", "--format", "json", "-o", str(own), LOOP)
    pid = child.ready()
    r = cli(
        "attach", str(pid), "-e", "p:theirs __main__:work n", "--count",
        "--interval", "0.3", "--duration", "1.2",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("@theirs: ") >= 3  # every --interval, and once at the end
    data = listing(cli, pid)
    assert [p["owner"] for p in data["probes"]] == [None]  # type: ignore[index]  # run's own
    assert child.finish() == 0
    assert {json.loads(line)["event"] for line in own.read_text().splitlines()} == {"own"}
    summary = "\n".join(child.err_lines)
    assert "own" in summary and "theirs" not in summary  # run reports only its probes


def test_ps_trusts_only_the_process_a_socket_is_named_for(
    cli: Cli, spawn: Spawn, runtime: Path
) -> None:
    import os
    import socket

    child = spawn(LOOP)
    pid = child.ready()  # a real agent: its directory is made
    d = runtime / "pyprobes"
    listening: list[socket.socket] = []
    try:
        for n in [*range(1, 23), os.getpid()]:  # they listen and never answer
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(d / f"{n}.sock"))
            s.listen(64)
            listening.append(s)
        # 23 silent sockets asked one after the other took 2 s each: all within 2 s now
        r = cli("ps", "--json", timeout=20)
    finally:
        for s in listening:
            s.close()
    assert r.returncode == 0, r.stderr
    rows = {row["pid"]: row for row in map(json.loads, r.stdout.splitlines())}
    assert rows[pid]["agent"] is True
    ours = {p for p, row in rows.items() if str(row.get("socket", "")).startswith(str(d))}
    assert ours == {pid, os.getpid()}  # not pid 1: its socket is served by this test
    silent = rows[os.getpid()]  # named for its server: asked, and said to be silent
    assert silent["agent"] is None and "did not answer within 2s" in str(silent["error"])
    assert f"pyprobes ps: ignored {d}/" in r.stderr and "is not the agent of process" in r.stderr
    assert f"it is served by pid {os.getpid()} as uid {os.geteuid()}" in r.stderr
    assert child.finish() == 0


@pytest.mark.parametrize("squat", ["symlink", "another-user"])
def test_a_taken_socket_directory_falls_back_to_a_private_one(
    cli: Cli, spawn: Spawn, runtime: Path, env: dict[str, str], squat: str
) -> None:
    import os
    import stat

    if squat == "another-user" and os.geteuid() != 0:
        pytest.skip("needs root to chown")
    base = runtime / "t"
    base.mkdir()
    usual = base / f"pyprobes-{os.geteuid()}"
    elsewhere = runtime / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if squat == "symlink":
        usual.symlink_to(elsewhere)
    else:
        usual.mkdir(mode=0o700)
        os.chown(usual, 65534, 65534)
    env["TMPDIR"] = str(base)
    env["XDG_RUNTIME_DIR"] = ""  # the temp directory's pyprobes-UID, as without a session
    child = spawn(LOOP)
    pid = child.ready()
    (fallback,) = [p for p in base.iterdir() if p.name.startswith(f"pyprobes-{os.geteuid()}-")]
    st = fallback.lstat()
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert stat.S_ISSOCK((fallback / f"{pid}.sock").lstat().st_mode)
    deadline = time.monotonic() + TIMEOUT
    while not any(f"listening in {fallback} instead" in line for line in child.err_lines):
        assert time.monotonic() < deadline, child.err_lines
        time.sleep(0.01)
    (said,) = [line for line in child.err_lines if "listening in" in line]
    assert f"{usual} must be a directory" in said or "belongs to uid 65534" in said
    r = cli("list", str(pid), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pid"] == pid
    r = cli("ps", "--json")
    assert r.returncode == 0, r.stderr
    (row,) = [row for row in map(json.loads, r.stdout.splitlines()) if row["pid"] == pid]
    assert row["agent"] is True and row["socket"] == str(fallback / f"{pid}.sock")
    assert child.finish() == 0
    assert not fallback.exists() and list(elsewhere.iterdir()) == []  # removed at exit


def test_aggregations_only_are_gathered_in_the_target(cli: Cli, spawn: Spawn) -> None:
    """Issue 13.7: with only --hist/--count/--by the CLI prints the aggregates the target
    gathered (test_agent checks that no event crosses), whole against the target's hits."""
    child = spawn(LOOP)
    pid = child.ready()
    r = cli(
        "attach", str(pid), "-e", "r:w __main__:work n", "--hist", "--by", "$function",
        "--duration", "1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert ": w: (" not in r.stderr  # no event was written
    counted = re.search(r"^@w\['__main__:work'\]: (\d+)$", r.stderr, re.M)
    assert counted is not None, r.stderr
    assert "w['__main__:work'] $duration:" in r.stderr and "distribution" in r.stderr
    row = summary_table(r.stderr)["w"]  # aggregations only: no EVENTS column
    assert (row["FILTERED"], row["LOST"], row["MISSES"]) == (0, 0, 0) and "EVENTS" not in row
    hits = row["HITS"]
    assert hits > 0 and 0 <= hits - int(counted.group(1)) <= 1  # one call may be in flight
    assert wait_no_probes(cli, pid)["probes"] == []
    child.progress_after(0)
    assert child.finish() == 0
    check_progress(child.lines)


def test_a_linear_histogram_is_gathered_in_the_target(cli: Cli, spawn: Spawn) -> None:
    """--lhist over attach: the target's program fills the buckets, the CLI prints them."""
    child = spawn(LOOP)
    pid = child.ready()
    r = cli(
        "attach", str(pid), "-e", "r:w __main__:work n", "--lhist", "n,0,10_000_000,10_000",
        "--duration", "1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert ": w: (" not in r.stderr  # no event was written
    assert "\nw n:\n[" in r.stderr, r.stderr
    rows = re.findall(r"^\[(\d+), (\d+)\)\s+(\d+) \|@*\s*\|$", r.stderr, re.M)
    assert rows and all(int(hi) - int(lo) == 10_000 for lo, hi, _ in rows), r.stderr
    hits = summary_table(r.stderr)["w"]["HITS"]
    assert hits > 0 and 0 <= hits - sum(int(n) for _, _, n in rows) <= 1  # one may be in flight
    assert wait_no_probes(cli, pid)["probes"] == []
    child.progress_after(0)
    assert child.finish() == 0
    check_progress(child.lines)


def _scrape(url: str) -> dict[str, str]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
        text: str = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = value
    return out


def test_attach_serves_the_aggregates_it_receives_at_metrics(
    cli: Cli, spawn: Spawn, env: dict[str, str]
) -> None:
    """Issue 16: ``attach --metrics-port``: the target's aggregates, labelled with its pid."""
    child = spawn(LOOP)
    pid = child.ready()
    client = subprocess.Popen(
        [sys.executable, "-m", "pyprobes", "attach", str(pid), "-e", "r:w __main__:work n",
         "--hist", "--unit", "nsecs", "--metrics-port", "0"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    host = socket.gethostname()
    count = f'pyprobes_duration_seconds_count{{event="w",hostname="{host}",pid="{pid}"}}'
    hits = f'pyprobes_probe_hits_total{{event="w",hostname="{host}",pid="{pid}"}}'
    live_hits: list[int] = []
    try:
        assert client.stderr is not None
        url = None
        for line in client.stderr:
            m = re.fullmatch(r"pyprobes: metrics at (http://\S+)\n", line)
            if m:
                url = m.group(1)
                break
        assert url is not None
        seen: list[int] = []
        deadline = time.monotonic() + TIMEOUT
        while len(set(seen)) < 2 and time.monotonic() < deadline:  # the agent sends 2 a second
            scraped = _scrape(url)
            got = scraped.get(count)
            if got is not None:
                seen.append(int(got))
                live_hits.append(int(float(scraped.get(hits, "0"))))
            time.sleep(0.05)  # the pace of the polling
        assert len(set(seen)) >= 2 and seen == sorted(seen), seen  # growing, never reset
        # the agent's hit counters come while attached too (its counts messages)
        assert max(live_hits) > 0 and live_hits == sorted(live_hits), live_hits
        client.send_signal(signal.SIGINT)
        rest = client.stderr.read()
        assert client.wait(TIMEOUT) == 0, rest
    finally:
        if client.poll() is None:
            client.kill()
    final = re.search(r"count = (\d+)$", rest, re.M)
    assert final is not None and int(final.group(1)) >= seen[-1], rest
    assert listing(cli, pid)["probes"] == []
    assert child.finish() == 0


def test_stats_are_gathered_in_the_target_too(cli: Cli, spawn: Spawn) -> None:
    """Issue 13.2: --stats runs in the target's probe programs; its count is the hits."""
    child = spawn(LOOP)
    pid = child.ready()
    r = cli("attach", str(pid), "-e", "r:w __main__:work n", "--stats", "n", "--duration", "1")
    assert r.returncode == 0, r.stderr
    stats = re.search(r"^w n: count=(\d+) sum=\d+ min=\d+ max=\d+ mean=", r.stderr, re.M)
    assert stats is not None, r.stderr
    hits = summary_table(r.stderr)["w"]["HITS"]
    assert hits > 0 and 0 <= hits - int(stats.group(1)) <= 1  # one call may be in flight
    assert wait_no_probes(cli, pid)["probes"] == []
    child.progress_after(0)
    assert child.finish() == 0
    check_progress(child.lines)
