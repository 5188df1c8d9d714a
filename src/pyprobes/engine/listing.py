"""The probe listing: debugfs ``kprobes/list`` plus tracefs ``kprobe_profile``, as data and text."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pyprobes.engine import registry
from pyprobes.engine.probes import Probe
from pyprobes.engine.resolve import LINE, split_symbol


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """One line of the listing, as plain data."""

    address: str
    kind: str
    symbol: str
    offset: int | None
    line: int | None
    module: str
    flags: tuple[str, ...]
    nhit: int
    nmissed: int
    nfault: int

    @property
    def where(self) -> str:
        """``symbol+offset`` or ``symbol:line``, as the text listing shows it."""
        if self.line is not None:
            return f"{self.symbol}:{self.line}"
        return f"{self.symbol}+{self.offset or 0}"


def probe_record(p: Probe) -> ProbeRecord:
    """One probe's listing record (for front ends that list a subset, or annotate it)."""
    flags: list[str] = []
    if p.disabled:
        flags.append("DISABLED")
    if p._gone:
        flags.append("GONE")
    loc = p._location
    if p.pending:
        flags.append("PENDING")
    if loc is not None and loc.via_wrapped:
        flags.append("WRAPPED")
    if loc is not None:
        code = loc.code
        address = f"0x{id(code):x}" if code is not None else "-"
        symbol, module = loc.symbol, loc.module
        line = loc.line if loc.where == LINE else None
        offset = None if loc.where == LINE else loc.offset
    else:
        address = "-"
        line = p.line
        offset = None if p.line is not None else p.offset
        if p.symbol_name is not None:
            module, qual = split_symbol(p.symbol_name)
            symbol = p.symbol_name if qual is not None else module
        elif p.filename is not None:
            symbol, module = os.path.basename(p.filename), ""
        else:
            symbol, module = p._describe(), ""
    return ProbeRecord(
        address, p.kind, symbol, offset, line, module, tuple(flags), p.nhit, p.nmissed, p.nfault
    )


def list_probes() -> list[ProbeRecord]:
    """Every registered probe as a record, in registration order."""
    return [probe_record(p) for p in registry.registered_probes()]


def format_probe_list(header: bool = False) -> str:
    """The listing as text, one line per probe (``header`` adds the core and switch state)."""
    lines = []
    if header:
        state = "enabled" if registry.is_enabled() else "DISABLED (global switch off)"
        lines.append(f"# pyprobes core={registry.core_name()} probes {state}")
    for r in list_probes():
        flags = "".join(f" [{f}]" for f in r.flags)
        module = f" [{r.module}]" if r.module else ""
        lines.append(
            f"{r.address:<14} {r.kind}  {r.where}{module}{flags}"
            f"  hits={r.nhit} misses={r.nmissed}" + (f" faults={r.nfault}" if r.nfault else "")
        )
    return "\n".join(lines) + ("\n" if lines else "")
