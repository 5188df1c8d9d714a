"""A real Prometheus server scrapes ``pyprobes run --metrics-port`` and agrees with the run.

Debian's ``prometheus`` package (``scripts/dev prometheus`` installs it; ``.ci/run`` and
``scripts/dev test`` call that) gives ``/usr/bin/prometheus``; the test runs the binary itself
on a loopback port and a temporary store, never the Debian service. Without it the test fails
and says how to install it: it is not skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from metrics_helpers import Run

from pyprobes.output import Aggregator, Event, SummaryRow
from pyprobes.output.prometheus import KeyBudget, render_metrics

#: How long Prometheus may take to start, scrape, and show a new value (scrapes are 1 s apart).
DEADLINE = 60.0


def prometheus_binary() -> str:
    for candidate in (
        os.environ.get("PYPROBES_PROMETHEUS"),
        shutil.which("prometheus"),
        "/usr/bin/prometheus",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "Prometheus is not installed: run 'scripts/dev prometheus' (as root: apt-get install"
        " prometheus), or set PYPROBES_PROMETHEUS to its binary"
    )


def promtool_binary() -> str:
    """promtool, from the same package, beside the prometheus binary."""
    beside = Path(prometheus_binary()).with_name("promtool")
    for candidate in (os.environ.get("PYPROBES_PROMTOOL"), str(beside), shutil.which("promtool")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("promtool is not installed: run 'scripts/dev prometheus' (Debian's prometheus)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Prometheus:
    """``prometheus`` scraping one target every second, on a loopback port of its own."""

    def __init__(self, binary: str, target: str, tmp: Path) -> None:
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: pyprobes\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp,
            )

    def _get(self, path: str, **params: str) -> object | None:
        """The JSON of an API answer, or None while it is not up."""
        if self.proc.poll() is not None:
            pytest.fail(f"prometheus exited ({self.proc.returncode}): {self.log.read_text()}")
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def wait_for(self, what: str, path: str, check: object, **params: str) -> object:
        """Poll the API (there is no event to wait on) until ``check(answer)`` is not None."""
        deadline = time.monotonic() + DEADLINE
        last: object = None
        while time.monotonic() < deadline:
            last = self._get(path, **params)
            if last is not None:
                got = check(last)  # type: ignore[operator]
                if got is not None:
                    return got
            time.sleep(0.2)  # the pace of the polling, not a synchronisation
        pytest.fail(f"Prometheus: no {what} in {DEADLINE}s; last answer {last!r}")

    def query(self, promql: str) -> object:
        """The value of an instant query of one series (it must have one)."""

        def one(answer: object) -> object:
            assert isinstance(answer, dict) and answer["status"] == "success", answer
            result = answer["data"]["result"]
            return result[0]["value"][1] if len(result) == 1 else None

        return self.wait_for(f"series for {promql}", "/api/v1/query", one, query=promql)

    def vector(self, promql: str, label: str) -> dict[str, str]:
        """An instant query's series, by the value of ``label``."""

        def by_label(answer: object) -> dict[str, str] | None:
            assert isinstance(answer, dict) and answer["status"] == "success", answer
            result = answer["data"]["result"]
            return {r["metric"][label]: r["value"][1] for r in result} or None

        got = self.wait_for(f"series for {promql}", "/api/v1/query", by_label, query=promql)
        assert isinstance(got, dict)
        return got

    def value_becomes(self, promql: str, want: str) -> None:
        def equal(answer: object) -> bool | None:
            assert isinstance(answer, dict) and answer["status"] == "success", answer
            result = answer["data"]["result"]
            return True if len(result) == 1 and result[0]["value"][1] == want else None

        self.wait_for(f"{promql} == {want}", "/api/v1/query", equal, query=promql)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _final_histogram(report: str) -> list[tuple[int, int, int]]:
    """The ``lo -> hi : count`` rows of the final nsecs histogram."""
    return [
        (int(lo), int(hi), int(n))
        for lo, hi, n in re.findall(r"^\s*(\d+) -> (\d+)\s*: (\d+)", report, re.M)
    ]


def test_prometheus_scrapes_what_the_session_reports(tmp_path: Path) -> None:
    binary = prometheus_binary()
    run = Run("--metrics-port", "0", "-e", "r:w __main__:work", "--hist", "--unit", "nsecs")
    target = run.url.removeprefix("http://").removesuffix("/metrics")
    prom: Prometheus | None = None
    try:
        assert run.work(200) == 200
        prom = Prometheus(binary, target, tmp_path)

        def up(answer: object) -> object:
            assert isinstance(answer, dict)
            targets = answer["data"]["activeTargets"]
            if len(targets) == 1 and targets[0]["health"] == "up":
                assert targets[0]["lastError"] == ""
                return targets[0]
            return None

        prom.wait_for("target up", "/api/v1/targets", up)
        count = 'pyprobes_duration_seconds_count{event="w"}'
        prom.value_becomes(count, "200")
        assert run.work(300) == 500  # while Prometheus watches: the next scrapes see it
        prom.value_becomes(count, "500")
        scraped = {
            "count": prom.query(count),
            "inf": prom.query('pyprobes_duration_seconds_bucket{event="w",le="+Inf"}'),
            "hits": prom.query('pyprobes_probe_hits_total{event="w"}'),
            "misses": prom.query('pyprobes_probe_misses_total{event="w"}'),
        }
        buckets = prom.vector('pyprobes_duration_seconds_bucket{event="w"}', "le")
        p99 = float(
            str(prom.query('histogram_quantile(0.99, pyprobes_duration_seconds_bucket{event="w"})'))
        )
        # the README's query: the p99 latency over the last minute, from the rates of buckets
        rate = 'sum by (le) (rate(pyprobes_duration_seconds_bucket{event="w"}[1m]))'
        rated = prom.query(f"histogram_quantile(0.99, {rate})")
    finally:
        status, report = run.finish()
        if prom is not None:
            prom.stop()
    assert status == 0, report
    # the session's final report: its histogram and summary
    m = re.search(r"count = (\d+)$", report, re.M)
    assert m is not None, report
    summary = re.search(r"^w\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", report, re.M)
    assert summary is not None, report  # EVENT HITS FILTERED LOST MISSES
    assert scraped["count"] == scraped["inf"] == m.group(1) == "500"
    assert scraped["hits"] == summary.group(1) == "500"
    assert scraped["misses"] == summary.group(4) == "0"
    rows = _final_histogram(report)
    assert sum(n for _, _, n in rows) == 500
    running = 0
    for _, hi, n in rows:  # every bucket the final report shows, cumulative, as scraped
        running += n
        le = f"{hi / 1e9:.9f}".rstrip("0")
        assert buckets[le] == str(running), (le, buckets, rows)
    assert len(buckets) >= 37  # 1 ns .. 68.7 s, and +Inf
    assert buckets["+Inf"] == "500"
    assert 0 < float(str(rated)) < 68.8, rated
    # Prometheus reads it as a histogram: the p99 lies in the bucket that holds rank 495
    running = 0
    for lo, hi, n in rows:
        running += n
        if running >= 0.99 * 500:
            assert (lo - 1) / 1e9 <= p99 <= hi / 1e9, (p99, lo, hi)
            break


def _ev(name: str, args: dict[str, object], duration_ns: int) -> Event:
    return Event(
        event=name,
        group="g",
        kind="r",
        probe="m:f",
        location="m.py:1",
        time_ns=0,
        pid=1,
        thread_id=1,
        thread_name="T",
        args=args,
        duration_ns=duration_ns,
    )


def test_promtool_passes_a_page_of_every_family() -> None:
    """Prometheus' own linter (``promtool check metrics``): the text parses, and the names,
    types and units follow its conventions, for every kind of series pyprobes writes."""
    labels = {"hostname": "h", "pid": "7"}
    by = Aggregator(count=True, by_field="k", hist_field="$duration", stats_field="n")
    for k, n in [("GET", 1), ("GET", 5), ('a"b\\c\nd', 2), ("x", "not a number")]:
        by.add(_ev("req", {"k": k, "n": n}, 1_000))
    other = Aggregator(hist_field="n", stats_field="$duration")
    other.add(_ev("w", {"n": 3}, 5_000))
    pages = [
        render_metrics(
            by.snapshot(),
            [SummaryRow("req", 4, 0, 1)],
            labels=labels,
            info={"version": "0.1.0", "core": "c"},
            budget=KeyBudget(2),
        ),
        render_metrics(other.snapshot(), [SummaryRow("w", 1, 1, 0)], labels=labels),
    ]
    for page in pages:
        assert "pyprobes_" in page
        r = subprocess.run(
            [promtool_binary(), "check", "metrics"],
            input=page,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), page
