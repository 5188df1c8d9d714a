"""A generator pipeline: order lines are made, parsed, placed and batched lazily."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from benchmarks.workload.catalog import Catalog, sku_name
from benchmarks.workload.inventory import Inventory
from benchmarks.workload.orders import Customer, Order, OrderError, build_order
from benchmarks.workload.rand import Rand
from benchmarks.workload.textparse import ParsedLine, ParseError, parse_line

_COUPONS = ("SAVE10", "SAVE20", "WELCOME", "FREESHIP")


@dataclass
class PipelineStats:
    lines: int = 0
    parse_errors: int = 0
    order_errors: int = 0
    error_columns: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def _corrupt(line: str, rng: Rand) -> str:
    how = rng.below(4)
    if how == 0:
        return line.replace(";", ":", 1)
    if how == 1:
        return line.replace("x", "x0", 1)
    if how == 2:
        return "X" + line[1:]
    return line + "!"


def order_lines(n: int, catalog_size: int, customers: int, rng: Rand) -> Iterator[str]:
    """``n`` order lines; about 3 % are malformed and some name SKUs the catalog lacks."""
    for _ in range(n):
        items = []
        for _ in range(1 + rng.below(4)):
            sku = sku_name(rng.below(catalog_size + catalog_size // 50))
            qty = 1 + rng.below(4) if not rng.chance(60) else 10 + rng.below(30)
            items.append(f"{sku}x{qty}")
        line = f"C{rng.below(customers):04d};{','.join(items)}"
        if rng.chance(250):
            line += ";" + _COUPONS[rng.below(len(_COUPONS))]
        if rng.chance(30):
            line = _corrupt(line, rng)
        yield line


def parsed_lines(lines: Iterable[str], stats: PipelineStats) -> Iterator[ParsedLine]:
    """Parse each line; malformed ones are counted and skipped."""
    for line in lines:
        stats.lines += 1
        try:
            yield parse_line(line)
        except ParseError as exc:
            stats.parse_errors += 1
            stats.error_columns += exc.pos
            stats.reasons[exc.why.split(":")[0]] = stats.reasons.get(exc.why.split(":")[0], 0) + 1


def placed_orders(
    parsed: Iterable[ParsedLine],
    customers: dict[str, Customer],
    catalog: Catalog,
    inv: Inventory,
    stats: PipelineStats,
) -> Iterator[Order]:
    for number, p in enumerate(parsed):
        try:
            yield build_order(number, p, customers, catalog, inv)
        except OrderError:
            stats.order_errors += 1


def batched(items: Iterable[Order], size: int) -> Iterator[list[Order]]:
    batch: list[Order] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
