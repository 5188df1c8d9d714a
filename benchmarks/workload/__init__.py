"""A deterministic pure-Python workload for the overhead benchmarks (issue 7).

An order-processing shop in several modules: a catalog and inventory of plain classes
(``catalog``, ``inventory``), a hand-written parser raising exceptions on malformed lines
(``textparse``), a generator pipeline (``pipeline``), order pricing with coupons (``orders``)
and asyncio workers shipping the orders (``fulfilment``). ``main()`` runs it and returns a
checksum of its report, the same on every Python version and under every tool that does not
change what the program computes. ``python -m benchmarks.workload [SCALE]`` (from the
repository root) prints the checksum and the time ``main`` took.
"""

from __future__ import annotations

import asyncio

from benchmarks.workload import orders, report
from benchmarks.workload.catalog import build_catalog
from benchmarks.workload.fulfilment import fulfil
from benchmarks.workload.inventory import build_inventory
from benchmarks.workload.orders import Customer
from benchmarks.workload.pipeline import (
    PipelineStats,
    batched,
    order_lines,
    parsed_lines,
    placed_orders,
)
from benchmarks.workload.rand import Rand

#: Orders per unit of scale (scale 1 runs about a second on the benchmark machine).
ORDERS_PER_SCALE = 6000
CATALOG_SIZE = 600
CUSTOMERS = 900

#: The function the workload never calls, and the one it calls rarely (module, qualname).
NEVER_CALLED = (orders.__name__, orders.refund_all.__qualname__)
RARELY_CALLED = (orders.__name__, orders.escalate.__qualname__)


def run(scale: float = 1.0) -> str:
    """Run the shop on ``ORDERS_PER_SCALE * scale`` order lines; return its report."""
    rng = Rand(20240607)
    catalog = build_catalog(CATALOG_SIZE, rng)
    inv = build_inventory(catalog, rng)
    customers: dict[str, Customer] = {}
    stats = PipelineStats()
    n = max(1, int(ORDERS_PER_SCALE * scale))
    restocked = 0
    shipped_parts = []
    # Four waves of orders with a restock between them.
    for wave in range(4):
        lines = order_lines(n // 4, CATALOG_SIZE, CUSTOMERS, rng)
        placed = placed_orders(parsed_lines(lines, stats), customers, catalog, inv, stats)
        shipped_parts.append(asyncio.run(fulfil(batched(placed, 25))))
        restocked += inv.restock_low(catalog, 8 + wave, rng)
    shipped = shipped_parts[0]
    for part in shipped_parts[1:]:
        shipped.orders += part.orders
        shipped.revenue_cents += part.revenue_cents
        shipped.shipping_cents += part.shipping_cents
        for k, v in part.by_carrier.items():
            shipped.by_carrier[k] = shipped.by_carrier.get(k, 0) + v
        shipped.reviews += part.reviews
    return report.render(stats, shipped, customers, inv, restocked)


def main(scale: float = 1.0) -> int:
    """Run the workload; return the checksum of its report."""
    return report.checksum(run(scale))
