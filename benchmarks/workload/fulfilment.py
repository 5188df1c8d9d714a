"""The asyncio part: carriers quote concurrently, workers take batches from a queue and ship."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from benchmarks.workload.orders import Order, checkout


@dataclass(frozen=True, slots=True)
class Carrier:
    name: str
    base_cents: int
    per_kg_cents: int
    latency_steps: int  # how many times a quote yields to the event loop


CARRIERS = (
    Carrier("post", 450, 90, 1),
    Carrier("fastbox", 900, 60, 2),
    Carrier("freight", 2500, 20, 3),
)


@dataclass
class Shipped:
    orders: int = 0
    revenue_cents: int = 0
    shipping_cents: int = 0
    by_carrier: dict[str, int] = field(default_factory=dict)
    reviews: list[str] = field(default_factory=list)


async def quote(carrier: Carrier, order: Order) -> tuple[int, str]:
    """A carrier's price for an order (it "thinks" for a few event-loop steps)."""
    for _ in range(carrier.latency_steps):
        await asyncio.sleep(0)
    kg = (order.weight() + 999) // 1000
    return carrier.base_cents + carrier.per_kg_cents * kg, carrier.name


async def best_quote(order: Order) -> tuple[int, str]:
    quotes = await asyncio.gather(*(quote(c, order) for c in CARRIERS))
    return min(quotes)


async def worker(queue: asyncio.Queue[list[Order] | None], shipped: Shipped) -> None:
    while True:
        batch = await queue.get()
        try:
            if batch is None:
                return
            for order in batch:
                cost, carrier = await best_quote(order)
                total, note = checkout(order)
                shipped.orders += 1
                shipped.revenue_cents += total
                shipped.shipping_cents += cost
                shipped.by_carrier[carrier] = shipped.by_carrier.get(carrier, 0) + 1
                if note is not None:
                    shipped.reviews.append(note)
        finally:
            queue.task_done()


async def fulfil(batches: Iterable[list[Order]], workers: int = 4) -> Shipped:
    """Feed the batches to ``workers`` coroutines through a bounded queue."""
    shipped = Shipped()
    queue: asyncio.Queue[list[Order] | None] = asyncio.Queue(maxsize=workers * 2)
    tasks = [asyncio.create_task(worker(queue, shipped)) for _ in range(workers)]
    for batch in batches:
        await queue.put(batch)
    for _ in tasks:
        await queue.put(None)
    await asyncio.gather(*tasks)
    return shipped
