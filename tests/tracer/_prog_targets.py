"""Functions the program tests probe (a module of their own: specs name it)."""

from __future__ import annotations


class Item:
    """A value that is not a scalar."""


ITEM = Item()  # one object: its rendering (type and id) is the same in every run


def price(item: object, qty: int) -> int:
    if qty < 0:
        raise ValueError(qty)
    return qty * 3


def run(n: int) -> None:
    items: list[object] = ["fig", "pear", "fig", "x" * 300, "y" * 300 + "a", 7, None, [1, 2]]
    items.append(ITEM)
    for i in range(n):
        try:
            price(items[i % len(items)], i % 7 - 1)
        except ValueError:
            pass
