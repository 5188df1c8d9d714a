"""Probe the example shop through the pyprobes library and print what the probes saw."""

from __future__ import annotations

import os
import sys
import threading
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import shop

import pyprobes
from pyprobes import Jprobe, Kprobe, Kretprobe

lock = threading.Lock()  # the demo's own: handlers run on the shop's threads
latencies: dict[str, list[int]] = defaultdict(list)


def say(text: str) -> None:
    with lock:
        print(text)


def on_checkout(p: Kprobe, ctx: pyprobes.ProbeContext) -> None:
    args = ctx.args
    say(f"  kprobe  checkout   customer={args['customer']!r} order={args['order']}")


def mirror_price(item: str, qty: int = 1) -> None:
    say(f"  jprobe  price      item={item!r} qty={qty}")


def price_entry(ri: pyprobes.KretprobeInstance, ctx: pyprobes.ProbeContext) -> None:
    ri.data["item"] = ctx.args["item"]


def price_return(ri: pyprobes.KretprobeInstance, ctx: pyprobes.ProbeContext) -> None:
    took = (ctx.time_ns - ri.entry_time_ns) / 1e6
    if ctx.exception is not None:
        outcome = f"raised {ctx.exception!r}"
    else:
        outcome = f"returned {pyprobes.regs_return_value(ctx)}"
    latencies[ri.data["item"]].append(ctx.time_ns - ri.entry_time_ns)
    say(f"  kretprobe price    item={ri.data['item']!r} {outcome} in {took:.2f} ms")


def on_line(p: Kprobe, ctx: pyprobes.ProbeContext) -> None:
    frame = ctx.frame
    assert frame is not None
    say(f"  kprobe  line {ctx.lineno}    total so far={frame.f_locals['total']}")


def main() -> None:
    with open(shop.__file__) as source:
        total_line = next(n for n, src in enumerate(source, start=1) if "total += cost" in src)
    probes = [
        Kprobe(symbol_name="shop:checkout", pre_handler=on_checkout),
        Kprobe(symbol_name="shop", line=total_line, pre_handler=on_line),
    ]
    jp = Jprobe(mirror_price, symbol_name="shop:price")
    rp = Kretprobe(symbol_name="shop:price", entry_handler=price_entry, handler=price_return)
    pyprobes.register_kprobes(probes)
    pyprobes.register_jprobe(jp)
    pyprobes.register_kretprobe(rp)
    try:
        print("== the program runs, the probes report:")
        shop.main()
        print("\n== the probe listing (debugfs kprobes/list + kprobe_profile):")
        print(pyprobes.format_probe_list(header=True), end="")
    finally:
        pyprobes.unregister_kprobes(probes)
        pyprobes.unregister_jprobe(jp)
        pyprobes.unregister_kretprobe(rp)
    print("\n== price() latency by item (from the kretprobe):")
    for item, values in sorted(latencies.items()):
        avg = sum(values) / len(values) / 1e6
        print(f"  {item:6} calls={len(values)} avg={avg:.2f} ms")
    print(
        f"\n== after unregistering: {len(pyprobes.registered_probes())} probes, tool id"
        f" {pyprobes.tool_id()}"
    )


if __name__ == "__main__":
    main()
