"""``pyprobes list PID``: the probe listing of a running process, as debugfs shows kprobes.

One line per probe, as ``kprobes/list`` plus ``kprobe_profile``: address, kind, symbol+offset
(or symbol:line), module, flags, hits and misses; probes added by attach clients also say
which client and event they belong to.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from pyprobes.attach.client import AgentConnection


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``list`` subcommand."""
    p = sub.add_parser(
        "list",
        help="list the probes of a running process",
        description="Print the probes registered in process PID (through its pyprobes agent):"
        " address, kind, symbol+offset, module, flags, hits and misses.",
    )
    p.add_argument("pid", type=int, metavar="PID", help="the process")
    p.add_argument("--json", action="store_true", help="print the listing as one JSON object")
    p.set_defaults(func=list_probes)


def format_listing(listing: Mapping[str, Any], welcome: Mapping[str, Any]) -> str:
    """The listing as text: a header line, then one line per probe."""
    state = "enabled" if listing.get("enabled", True) else "DISABLED (global switch off)"
    tool = listing.get("tool_id")
    lines = [
        f"# pyprobes pid={listing.get('pid')} python={welcome.get('python', '?')}"
        f" core={listing.get('core')} probes {state} tool-id={'-' if tool is None else tool}"
        f" clients={listing.get('clients')}"
    ]
    for r in listing.get("probes", []):
        flags = "".join(f" [{f}]" for f in r.get("flags", []))
        module = f" [{r['module']}]" if r.get("module") else ""
        faults = f" faults={r['faults']}" if r.get("faults") else ""
        owner = r.get("owner")
        whose = f"  client={owner['client']} event={owner['event']}" if owner else ""
        lines.append(
            f"{r.get('address', '-'):<14} {r.get('kind', '?')}  {r.get('where', '?')}{module}"
            f"{flags}  hits={r.get('hits', 0)} misses={r.get('misses', 0)}{faults}{whose}"
        )
    return "\n".join(lines) + "\n"


def list_probes(args: argparse.Namespace) -> int:
    """Print the probe listing of process ``args.pid``."""
    # Reading changes nothing: a process with no agent has no probes, and gets none started.
    with AgentConnection.open(args.pid, client="pyprobes list", start_agent=False) as conn:
        listing = conn.request("list")
    listing.pop("type", None)
    listing.pop("re", None)
    if args.json:
        sys.stdout.write(json.dumps(listing, indent=None, separators=(",", ":")) + "\n")
    else:
        sys.stdout.write(format_listing(listing, conn.welcome))
    return 0
