"""A small example program to probe: orders priced in threads, a generator, a failing order."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

PRICES = {"apple": 3, "pear": 4, "fig": 7}


class OutOfStock(Exception):
    """An item the shop does not sell."""


def price(item: str, qty: int = 1) -> int:
    if item not in PRICES:
        raise OutOfStock(item)
    time.sleep(0.001 * qty)  # pretend to look the price up somewhere slow
    return PRICES[item] * qty


def order_lines(order: dict[str, int]) -> Iterator[tuple[str, int]]:
    for item, qty in order.items():
        yield item, price(item, qty)


def checkout(customer: str, order: dict[str, int]) -> int:
    total = 0
    for _item, cost in order_lines(order):
        total += cost
    return total


def main() -> None:
    orders = [
        ("ann", {"apple": 2, "fig": 1}),
        ("bob", {"pear": 5}),
        ("cid", {"apple": 1, "kiwi": 1}),
        ("dee", {"fig": 3, "pear": 1}),
    ]
    results: dict[str, object] = {}

    def serve(customer: str, order: dict[str, int]) -> None:
        try:
            results[customer] = checkout(customer, order)
        except OutOfStock as exc:
            results[customer] = f"out of stock: {exc}"

    threads = [threading.Thread(target=serve, args=o, name=f"till-{o[0]}") for o in orders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for customer, result in sorted(results.items()):
        print(f"{customer}: {result}")


if __name__ == "__main__":
    main()
