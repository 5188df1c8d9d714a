"""The end-of-run report and its checksum."""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from benchmarks.workload.fulfilment import Shipped
from benchmarks.workload.inventory import Inventory
from benchmarks.workload.orders import Customer
from benchmarks.workload.pipeline import PipelineStats


def top_customers(customers: Iterable[Customer], n: int) -> list[tuple[str, int]]:
    ranked = sorted(customers, key=lambda c: (-c.spent_cents, c.cid))
    return [(c.cid, c.spent_cents) for c in ranked[:n]]


def money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def render(
    stats: PipelineStats,
    shipped: Shipped,
    customers: dict[str, Customer],
    inv: Inventory,
    restocked: int,
) -> str:
    lines = [
        f"lines {stats.lines} parse-errors {stats.parse_errors} order-errors {stats.order_errors}",
        f"error-columns {stats.error_columns} reasons {sorted(stats.reasons.items())}",
        f"orders {shipped.orders} revenue {money(shipped.revenue_cents)}"
        f" shipping {money(shipped.shipping_cents)}",
        f"carriers {sorted(shipped.by_carrier.items())}",
        f"reviews {len(shipped.reviews)} {shipped.reviews[:3]}",
        f"failed-reservations {inv.failed_reservations} restocked {restocked}",
    ]
    lines += [f"  {cid} {money(spent)}" for cid, spent in top_customers(customers.values(), 10)]
    return "\n".join(lines) + "\n"


def checksum(text: str) -> int:
    return zlib.crc32(text.encode())
