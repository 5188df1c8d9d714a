"""The exit summary: per probe event hits, filtered, events, lost and misses, as kprobe_profile
shows hits and misses."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import NamedTuple

from pyprobes.output.sanitize import terminal_safe


class SummaryRow(NamedTuple):
    """One probe event's counters at exit.

    ``filtered`` (hits the filter turned away) and ``events`` (events written) are None
    where they are not known (an attached process's rows); when both are known, the hits
    of a probe are its filtered, its events and its lost, and what is left is said.
    """

    event: str
    hits: int
    misses: int
    lost: int = 0
    filtered: int | None = None
    events: int | None = None


#: What LOST means, said when it is not zero (MISSES have their own warning line).
LOST_LEGEND = (
    " (LOST: probe hits whose events were never written: the output could not keep up, or failed)"
)


def _row(r: SummaryRow | tuple[str, int, int, int]) -> SummaryRow:
    return r if isinstance(r, SummaryRow) else SummaryRow(*r)


def format_summary(rows: Iterable[SummaryRow | tuple[str, int, int, int]], lost_total: int) -> str:
    """An aligned table of ``rows`` (HITS, then FILTERED and EVENTS where known, LOST and
    MISSES), a hint if return probes missed calls, a note on hits that made no event, then
    ``N events lost``; newline-terminated."""
    rows_list = [_row(r) for r in rows]
    with_filtered = any(r.filtered is not None for r in rows_list)
    with_events = any(r.events is not None for r in rows_list)
    headers = ["EVENT", "HITS"]
    headers += ["FILTERED"] * with_filtered + ["EVENTS"] * with_events + ["LOST", "MISSES"]
    # Event names reach us from an attached process too: escape them for the terminal.
    table = [headers]
    for r in rows_list:
        cells = [terminal_safe(str(r.event), 256), str(r.hits)]
        if with_filtered:
            cells.append("-" if r.filtered is None else str(r.filtered))
        if with_events:
            cells.append("-" if r.events is None else str(r.events))
        table.append([*cells, str(r.lost), str(r.misses)])
    lines: list[str] = []
    if rows_list:
        widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
        for row in table:
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
            lines.append("  ".join(cells).rstrip())
    missed = [row[0] for row, r in zip(table[1:], rows_list, strict=True) if r.misses > 0]
    if missed:
        # MISSES are return-probe calls not traced: every instance of the pool was in use
        lines.append(
            f"pyprobes: warning: misses on {', '.join(missed)}: more calls were in flight at"
            " once than the return probe's instances (maxactive), and the calls missed are in"
            " no event or aggregation; give it more with rN, e.g. 'r1000000:EVENT TARGET'"
        )
    open_ = [
        f"{row[0]} ({r.hits - r.filtered - r.events - r.lost})"
        for row, r in zip(table[1:], rows_list, strict=True)
        if r.filtered is not None
        and r.events is not None
        and r.hits != r.filtered + r.events + r.lost
    ]
    if open_:
        lines.append(
            f"pyprobes: hits that made no event: {', '.join(open_)}: calls still running at the"
            " end (a return probe's event is made when the call returns), or a handler that"
            " failed"
        )
    lost_line = f"{lost_total} event{'' if lost_total == 1 else 's'} lost"
    if lost_total:
        lost_line += LOST_LEGEND
    lines.append(lost_line)
    return "\n".join(lines) + "\n"


def parse_summary(text: str) -> dict[str, dict[str, int]]:
    """The last summary table in ``text``, read back by its headers: EVENT -> {column: n};
    a '-' cell is absent ({} when there is no table). For tests and benchmarks."""
    lines = text.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("EVENT ")]
    if not heads:
        return {}
    headers = lines[heads[-1]].split()
    rows: dict[str, dict[str, int]] = {}
    for line in lines[heads[-1] + 1 :]:
        cells = line.split()
        if len(cells) != len(headers) or not cells[1].isdigit():
            break
        rows[cells[0]] = {
            h: int(c) for h, c in zip(headers[1:], cells[1:], strict=True) if c != "-"
        }
    return rows


def interval_stamp(wall: float) -> str:
    """The line above each ``--interval`` block: local ``HH:MM:SS``, as funclatency -T."""
    return time.strftime("%H:%M:%S", time.localtime(wall))
