"""Stock kept in warehouses: reservations that may fail (exceptions), restocking."""

from __future__ import annotations

from benchmarks.workload.catalog import Catalog
from benchmarks.workload.rand import Rand


class StockError(Exception):
    """Base of the inventory errors."""


class OutOfStock(StockError):
    """Not enough items of a SKU in any warehouse."""

    def __init__(self, sku: str, wanted: int, available: int) -> None:
        super().__init__(f"{sku}: wanted {wanted}, {available} available")
        self.sku = sku
        self.wanted = wanted
        self.available = available


class Warehouse:
    """Items on hand per SKU, and the items reserved for orders not yet shipped."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.on_hand: dict[str, int] = {}
        self.reserved: dict[str, int] = {}

    def available(self, sku: str) -> int:
        return self.on_hand.get(sku, 0) - self.reserved.get(sku, 0)

    def reserve(self, sku: str, qty: int) -> None:
        have = self.available(sku)
        if have < qty:
            raise OutOfStock(sku, qty, have)
        self.reserved[sku] = self.reserved.get(sku, 0) + qty

    def release(self, sku: str, qty: int) -> None:
        left = self.reserved.get(sku, 0) - qty
        if left > 0:
            self.reserved[sku] = left
        else:
            self.reserved.pop(sku, None)

    def ship(self, sku: str, qty: int) -> None:
        self.release(sku, qty)
        self.on_hand[sku] -= qty

    def restock(self, sku: str, qty: int) -> None:
        self.on_hand[sku] = self.on_hand.get(sku, 0) + qty


class Inventory:
    """Several warehouses; a reservation takes the first warehouse that has enough."""

    def __init__(self, warehouses: list[Warehouse]) -> None:
        self.warehouses = warehouses
        self.failed_reservations = 0

    def reserve(self, sku: str, qty: int) -> Warehouse:
        best = 0
        for wh in self.warehouses:
            try:
                wh.reserve(sku, qty)
            except OutOfStock as exc:
                best = max(best, exc.available)
                continue
            return wh
        self.failed_reservations += 1
        raise OutOfStock(sku, qty, best)

    def total_available(self, sku: str) -> int:
        return sum(wh.available(sku) for wh in self.warehouses)

    def restock_low(self, catalog: Catalog, threshold: int, rng: Rand) -> int:
        """Top up every SKU below ``threshold`` items; returns how many were restocked."""
        n = 0
        for i in range(len(catalog)):
            sku = f"SKU-{i:04d}"
            if self.total_available(sku) < threshold:
                self.warehouses[rng.below(len(self.warehouses))].restock(sku, threshold * 2)
                n += 1
        return n


def build_inventory(catalog: Catalog, rng: Rand, warehouses: int = 3) -> Inventory:
    inv = Inventory([Warehouse(f"wh{i}") for i in range(warehouses)])
    for i in range(len(catalog)):
        sku = f"SKU-{i:04d}"
        for wh in inv.warehouses:
            if rng.chance(700):
                wh.restock(sku, rng.below(40))
    return inv
