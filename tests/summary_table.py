"""The exit summary's table, read by its headers: EVENT -> {column: value}."""

from __future__ import annotations


def summary_table(stderr: str) -> dict[str, dict[str, int]]:
    """The last exit summary in ``stderr``; a '-' cell is absent."""
    lines = stderr.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("EVENT "))
    headers = lines[start].split()
    rows: dict[str, dict[str, int]] = {}
    for line in lines[start + 1 :]:
        cells = line.split()
        if len(cells) != len(headers) or not cells[1].isdigit():
            break
        rows[cells[0]] = {
            h: int(c) for h, c in zip(headers[1:], cells[1:], strict=True) if c != "-"
        }
    return rows


def hits_misses(stderr: str) -> dict[str, tuple[int, int]]:
    """EVENT -> (HITS, MISSES)."""
    return {e: (r["HITS"], r["MISSES"]) for e, r in summary_table(stderr).items()}
