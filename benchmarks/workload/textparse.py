"""A hand-written parser of order lines, raising ParseError on malformed input.

Grammar: ``CUSTOMER ';' ITEM (',' ITEM)* [';' COUPON]`` with ``ITEM = SKU 'x' QTY``, e.g.
``C0012;SKU-0042x3,SKU-0007x1;SAVE10``.
"""

from __future__ import annotations

from dataclasses import dataclass


class ParseError(ValueError):
    """A malformed order line: where and why."""

    def __init__(self, line: str, pos: int, why: str) -> None:
        super().__init__(f"column {pos + 1}: {why}: {line!r}")
        self.pos = pos
        self.why = why


@dataclass(frozen=True, slots=True)
class ParsedLine:
    customer: str
    items: tuple[tuple[str, int], ...]
    coupon: str | None


class Scanner:
    """Reads a line left to right."""

    __slots__ = ("line", "pos")

    def __init__(self, line: str) -> None:
        self.line = line
        self.pos = 0

    def peek(self) -> str:
        return self.line[self.pos] if self.pos < len(self.line) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise ParseError(self.line, self.pos, f"expected {ch!r}")
        self.pos += 1

    def word(self, allowed: str) -> str:
        start = self.pos
        line = self.line
        while self.pos < len(line) and line[self.pos] in allowed:
            self.pos += 1
        if self.pos == start:
            raise ParseError(line, start, "expected a word")
        return line[start : self.pos]

    def number(self) -> int:
        start = self.pos
        text = self.word("0123456789")
        value = int(text)
        if value <= 0 or value > 99:
            raise ParseError(self.line, start, f"quantity out of range: {value}")
        return value

    def at_end(self) -> bool:
        return self.pos >= len(self.line)


_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_SKU_CHARS = _ALNUM + "-"


def parse_item(sc: Scanner) -> tuple[str, int]:
    sku = sc.word(_SKU_CHARS)
    if not sku.startswith("SKU-"):
        raise ParseError(sc.line, sc.pos - len(sku), f"not a SKU: {sku}")
    sc.expect("x")
    return sku, sc.number()


def parse_line(line: str) -> ParsedLine:
    """Parse one order line; raises ParseError."""
    sc = Scanner(line.strip())
    customer = sc.word(_ALNUM)
    if customer[0] != "C":
        raise ParseError(line, 0, f"not a customer id: {customer}")
    sc.expect(";")
    items = [parse_item(sc)]
    while sc.peek() == ",":
        sc.expect(",")
        items.append(parse_item(sc))
    coupon = None
    if sc.peek() == ";":
        sc.expect(";")
        coupon = sc.word(_ALNUM)
    if not sc.at_end():
        raise ParseError(line, sc.pos, "trailing characters")
    return ParsedLine(customer, tuple(items), coupon)
