"""Orders: customers, lines, pricing with coupons and tax, reservations against the inventory.

``escalate`` is called rarely (a big order from a new customer) and ``refund_all`` never: the
benchmark probes them to measure what a probe costs the code around it.
"""

from __future__ import annotations

from benchmarks.workload.catalog import Catalog, Product, UnknownProduct
from benchmarks.workload.inventory import Inventory, OutOfStock, Warehouse
from benchmarks.workload.textparse import ParsedLine

TAX_PER_MILLE = {"books": 70, "music": 190, "office": 190}
DEFAULT_TAX_PER_MILLE = 200
COUPONS = {"SAVE10": 10, "SAVE20": 20, "WELCOME": 15}
BIG_ORDER_CENTS = 180_000


class OrderError(Exception):
    """An order that cannot be placed at all."""


class InvalidCoupon(OrderError):
    """A coupon code that does not exist."""


class Customer:
    __slots__ = ("cid", "orders", "spent_cents")

    def __init__(self, cid: str) -> None:
        self.cid = cid
        self.orders = 0
        self.spent_cents = 0

    @property
    def is_new(self) -> bool:
        return self.orders < 2


class OrderLine:
    __slots__ = ("product", "qty", "warehouse")

    def __init__(self, product: Product, qty: int, warehouse: Warehouse) -> None:
        self.product = product
        self.qty = qty
        self.warehouse = warehouse

    def subtotal(self) -> int:
        return self.product.price_for(self.qty)

    def tax(self) -> int:
        rate = TAX_PER_MILLE.get(self.product.category, DEFAULT_TAX_PER_MILLE)
        return self.subtotal() * rate // 1000

    def weight(self) -> int:
        return self.product.weight_g * self.qty


class Order:
    def __init__(self, number: int, customer: Customer) -> None:
        self.number = number
        self.customer = customer
        self.lines: list[OrderLine] = []
        self.backordered: list[tuple[str, int]] = []
        self.discount_pct = 0
        self.flags: list[str] = []

    def add_line(self, line: OrderLine) -> None:
        self.lines.append(line)

    def subtotal(self) -> int:
        return sum(line.subtotal() for line in self.lines)

    def tax(self) -> int:
        return sum(line.tax() for line in self.lines)

    def weight(self) -> int:
        return sum(line.weight() for line in self.lines)

    def discount(self) -> int:
        return self.subtotal() * self.discount_pct // 100

    def total(self) -> int:
        return self.subtotal() - self.discount() + self.tax()


def coupon_percent(code: str | None) -> int:
    if code is None:
        return 0
    try:
        return COUPONS[code]
    except KeyError:
        raise InvalidCoupon(code) from None


def reserve_line(inv: Inventory, product: Product, qty: int) -> OrderLine:
    return OrderLine(product, qty, inv.reserve(product.sku, qty))


def build_order(
    number: int,
    parsed: ParsedLine,
    customers: dict[str, Customer],
    catalog: Catalog,
    inv: Inventory,
) -> Order:
    """An order from a parsed line: items reserved, or backordered when out of stock."""
    customer = customers.get(parsed.customer)
    if customer is None:
        customer = customers[parsed.customer] = Customer(parsed.customer)
    order = Order(number, customer)
    for sku, qty in parsed.items:
        try:
            product = catalog.get(sku)
        except UnknownProduct:
            order.flags.append("unknown-sku")
            continue
        try:
            order.add_line(reserve_line(inv, product, qty))
        except OutOfStock:
            order.backordered.append((sku, qty))
    try:
        order.discount_pct = coupon_percent(parsed.coupon)
    except InvalidCoupon:
        order.flags.append("bad-coupon")
    if not order.lines:
        raise OrderError(f"order {number}: nothing could be reserved")
    return order


def escalate(order: Order) -> str:
    """A big order from a new customer goes to a person (called rarely)."""
    order.flags.append("review")
    return f"review:{order.number}:{order.customer.cid}:{order.total()}"


def refund_all(orders: list[Order]) -> int:
    """Refund every order (never called by the workload)."""
    total = 0
    for order in orders:
        total += order.total()
        order.flags.append("refunded")
    return total


def checkout(order: Order) -> tuple[int, str | None]:
    """Finish an order: ship its lines, charge the customer; the total and a review note."""
    total = order.total()
    note = None
    if total > BIG_ORDER_CENTS and order.customer.is_new:
        note = escalate(order)
    for line in order.lines:
        line.warehouse.ship(line.product.sku, line.qty)
    order.customer.orders += 1
    order.customer.spent_cents += total
    return total, note
