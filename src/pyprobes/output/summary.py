"""The exit summary: per probe event hits, misses and lost events, as kprobe_profile shows them."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import NamedTuple

from pyprobes.output.sanitize import terminal_safe


class SummaryRow(NamedTuple):
    """One probe event's counters at exit."""

    event: str
    hits: int
    misses: int
    lost: int = 0


_HEADERS = ("EVENT", "HITS", "MISSES", "LOST")

#: What LOST means, said when it is not zero (MISSES have their own warning line).
LOST_LEGEND = (
    " (LOST: probe hits whose events were never written: the output could not keep up, or failed)"
)


def format_summary(rows: Iterable[SummaryRow | tuple[str, int, int, int]], lost_total: int) -> str:
    """An aligned table of ``rows``, a hint if return probes missed calls, then ``N events
    lost``; newline-terminated."""
    rows_list = list(rows)
    # Event names reach us from an attached process too: escape them for the terminal.
    table = [_HEADERS] + [
        (terminal_safe(str(r[0]), 256), str(r[1]), str(r[2]), str(r[3])) for r in rows_list
    ]
    lines: list[str] = []
    if len(table) > 1:
        widths = [max(len(row[i]) for row in table) for i in range(len(_HEADERS))]
        for row in table:
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
            lines.append("  ".join(cells).rstrip())
    missed = [row[0] for row, r in zip(table[1:], rows_list, strict=True) if int(r[2]) > 0]
    if missed:
        # MISSES are return-probe calls not traced: every instance of the pool was in use
        lines.append(
            f"pyprobes: warning: misses on {', '.join(missed)}: more calls were in flight at"
            " once than the return probe's instances (maxactive), and the calls missed are in"
            " no event or aggregation; give it more with rN, e.g. 'r1000000:EVENT TARGET'"
        )
    lost_line = f"{lost_total} event{'' if lost_total == 1 else 's'} lost"
    if lost_total:
        lost_line += LOST_LEGEND
    lines.append(lost_line)
    return "\n".join(lines) + "\n"


def interval_stamp(wall: float) -> str:
    """The line above each ``--interval`` block: local ``HH:MM:SS``, as funclatency -T."""
    return time.strftime("%H:%M:%S", time.localtime(wall))
