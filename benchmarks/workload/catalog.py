"""The product catalog: products, categories and prices (plain classes, dict lookups)."""

from __future__ import annotations

from benchmarks.workload.rand import Rand

CATEGORIES = ("books", "garden", "kitchen", "toys", "tools", "music", "sports", "office")


class UnknownProduct(KeyError):
    """A SKU that is not in the catalog."""


class Product:
    """One thing to sell."""

    __slots__ = ("category", "price_cents", "sku", "weight_g")

    def __init__(self, sku: str, category: str, price_cents: int, weight_g: int) -> None:
        self.sku = sku
        self.category = category
        self.price_cents = price_cents
        self.weight_g = weight_g

    def price_for(self, qty: int) -> int:
        """Price of ``qty`` items, with a volume discount from 10 items on."""
        total = self.price_cents * qty
        if qty >= 10:
            total -= total // 20
        return total

    def __repr__(self) -> str:
        return f"Product({self.sku!r}, {self.category!r}, {self.price_cents})"


class Catalog:
    """Products by SKU and by category."""

    def __init__(self) -> None:
        self._by_sku: dict[str, Product] = {}
        self._by_category: dict[str, list[Product]] = {}

    def add(self, product: Product) -> None:
        self._by_sku[product.sku] = product
        self._by_category.setdefault(product.category, []).append(product)

    def get(self, sku: str) -> Product:
        try:
            return self._by_sku[sku]
        except KeyError:
            raise UnknownProduct(sku) from None

    def in_category(self, category: str) -> list[Product]:
        return self._by_category.get(category, [])

    def __len__(self) -> int:
        return len(self._by_sku)


def sku_name(i: int) -> str:
    return f"SKU-{i:04d}"


def build_catalog(n: int, rng: Rand) -> Catalog:
    """A catalog of ``n`` products with pseudo-random categories, prices and weights."""
    cat = Catalog()
    for i in range(n):
        cat.add(
            Product(
                sku_name(i),
                CATEGORIES[rng.below(len(CATEGORIES))],
                199 + rng.below(9800),
                50 + rng.below(5000),
            )
        )
    return cat
