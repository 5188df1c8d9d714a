"""Helpers shared by the peer benchmarks (bench_peers.py, bench_tracer.py, peers_report.py).

Statistics over interleaved rounds, tables as text and Markdown, and the facts every result
carries: machine, date, interpreter, pyprobes core and the versions of the peers.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = ROOT / "src"

#: The peers of requirements-peers.txt, by distribution name.
PEER_DISTS = ("wrapt", "hunter", "ddtrace")


def ensure_paths() -> None:
    """Make ``pyprobes`` (src/ layout) and ``benchmarks.workload`` importable."""
    try:
        import pyprobes  # noqa: F401
    except ImportError:  # not installed: use the repository's src/ layout
        sys.path.insert(0, str(SRC))
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


# --- statistics -------------------------------------------------------------------------------


@dataclass
class Stat:
    """Median, quartiles and range of per-round values."""

    median: float
    q1: float
    q3: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, xs: Sequence[float]) -> Stat:
        xs = [x for x in xs if not math.isnan(x)]  # drop NaNs (a ratio to a zero floor)
        if not xs:
            nan = float("nan")
            return cls(nan, nan, nan, nan, nan, 0)
        if len(xs) == 1:
            return cls(xs[0], xs[0], xs[0], xs[0], xs[0], 1)
        q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
        return cls(q2, q1, q3, min(xs), max(xs), len(xs))

    def to_json(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Stat:
        return cls(**d)


def paired(xs: Sequence[float], ys: Sequence[float], how: str, scale: float = 1.0) -> list[float]:
    """Per-round combination of two sample lists: ``"diff"`` x - y, ``"ratio"`` x / y,
    ``"pct"`` 100 * (x / y - 1); each then divided by ``scale``."""
    out = []
    for x, y in zip(xs, ys, strict=True):
        if how == "diff":
            v = x - y
        elif how == "ratio":
            v = x / y if y > 0 else float("nan")
        elif how == "pct":
            v = 100.0 * (x / y - 1.0) if y > 0 else float("nan")
        else:
            raise ValueError(how)
        out.append(v / scale)
    return out


def fmt(v: float, unit: str) -> str:
    """A number for a table: ``ns`` one decimal, ``x`` two decimals, ``%`` signed, ``s``
    seconds to the ms."""
    if math.isnan(v):
        return "n/a"
    if unit == "x":
        return f"{v:.2f}x"
    if unit == "%":
        return f"{v:+.1f} %"
    if unit == "s":
        return f"{v:.3f}"
    if unit == "ns" and abs(v) >= 10_000:
        return f"{v:,.0f}"
    return f"{v:.1f}"


def cell(s: Stat | None, unit: str, iqr: bool = True) -> str:
    """``median (q1 .. q3)`` for a table cell; an em dash when there is no value."""
    if s is None:
        return "—"
    if not iqr or s.n < 2:
        return fmt(s.median, unit)
    return f"{fmt(s.median, unit)} ({fmt(s.q1, unit)} .. {fmt(s.q3, unit)})"


# --- tables -----------------------------------------------------------------------------------


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An aligned plain-text table: first column left, the others right aligned."""
    table = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    out = []
    for i, line in enumerate(table):
        cells = [
            c.ljust(w) if j == 0 else c.rjust(w)
            for j, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table: first column left, the others right aligned."""
    out = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


# --- facts ------------------------------------------------------------------------------------


def exact_command(argv: Sequence[str] | None = None) -> str:
    """The command line that ran this process (with PYTHONPATH/PYPROBES_CORE if set)."""
    prefix = ""
    for var in ("PYPROBES_CORE", "PYTHONPATH"):
        val = os.environ.get(var)
        if val:
            prefix += f"{var}={shlex.quote(val)} "
    args = list(sys.argv if argv is None else argv)
    return prefix + shlex.join([sys.executable, *args])


def peer_status_file() -> Path:
    """Where benchmarks/peers_env.sh recorded which peers installed in this environment."""
    return Path(sys.prefix) / "peers-status.txt"


def install_failures() -> dict[str, str]:
    """Peers that peers_env.sh could not install here, with pip's reason."""
    out: dict[str, str] = {}
    try:
        text = peer_status_file().read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        name, _, status = line.partition("\t")
        if status.startswith("failed"):
            out[name.strip()] = status.partition(":")[2].strip() or "pip install failed"
    return out


def dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def facts() -> dict[str, Any]:
    """Machine, date, interpreter and pyprobes facts of this process."""
    import pyprobes

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "unknown"
    return {
        "python": sys.version.split()[0],
        "python_full": sys.version.replace("\n", " "),
        "executable": sys.executable,
        "core": pyprobes.core_name(),
        "pyprobes": pyprobes.__version__,
        "pyprobes_path": str(Path(pyprobes.__file__).parent),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": platform.machine(),
        "cpu": cpu,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_before": load,
        "command": exact_command(),
    }
