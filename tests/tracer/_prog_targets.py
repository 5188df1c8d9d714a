"""Functions the program tests probe (a module of their own: specs name it)."""

from __future__ import annotations


class Item:
    """A value that is not a scalar."""


ITEM = Item()  # one object: its rendering (type and id) is the same in every run
RAN: list[str] = []  # code of the program that a fetch path ran: must stay empty


class Order:
    """Attributes of every kind a fetch path meets: instance, class, slot-less, a property, a
    method, a dict and a list."""

    kind = "order"  # a plain class attribute

    def __init__(self, qty: int, meta: dict[str, object], tags: list[object]) -> None:
        self.qty = qty
        self.meta = meta
        self.tags = tags

    @property
    def total(self) -> int:  # a property: never run by a fetch path
        RAN.append("property")
        return 0

    def method(self) -> None:  # a method: refused
        RAN.append("method")


class Rush(Order):
    """A subclass whose instances may shadow the class attribute."""

    kind = "rush"


class Slotted:
    """Values in __slots__, one of them never set."""

    __slots__ = ("qty", "unset")

    def __init__(self, qty: int) -> None:
        self.qty = qty


class Lazy:
    """A __getattr__ (never run: its attributes are a fault)."""

    def __getattr__(self, name: str) -> object:
        RAN.append("__getattr__")
        return 0


def orders() -> list[object]:
    shadowed = Rush(5, {"k": "v"}, [])
    shadowed.kind = "own"  # the instance's own wins over the class's
    return [
        Order(1, {"k": "a", "n": 1, "w": 0.1}, ["x", 2]),
        Order(3, {"k": None, "w": -2.5e-3}, []),
        Rush(4, {"w": 2**100}, [7]),
        Order(0, {"w": 1e300}, []),
        Order(0, {"w": 0.0, "k": 2**800}, []),
        Order(0, {"w": 7}, []),
        shadowed,
        Slotted(2),
        Lazy(),
        {"qty": 9},
        None,
    ]


def ship(order: object, n: int) -> object:
    return order


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
    shipped = orders()
    for i in range(n // 4):
        ship(shipped[i % len(shipped)], i)
