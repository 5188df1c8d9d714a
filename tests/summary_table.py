"""The exit summary's table, read by its headers: EVENT -> {column: value}."""

from __future__ import annotations

from pyprobes.output.summary import parse_summary


def summary_table(stderr: str) -> dict[str, dict[str, int]]:
    """The last exit summary in ``stderr``; a '-' cell is absent."""
    rows = parse_summary(stderr)
    assert rows, f"no summary table in {stderr[-500:]!r}"
    return rows


def hits_misses(stderr: str) -> dict[str, tuple[int, int]]:
    """EVENT -> (HITS, MISSES)."""
    return {e: (r["HITS"], r["MISSES"]) for e, r in summary_table(stderr).items()}
