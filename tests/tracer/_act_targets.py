"""Functions the activation tests probe."""

from __future__ import annotations

from collections.abc import Iterator


def leaf(x: int) -> int:
    return x + 1


def mid(x: int) -> int:
    return leaf(x) + leaf(x + 1)


def fact(n: int) -> int:
    return 1 if n <= 1 else n * fact(n - 1)


def gen(n: int) -> Iterator[int]:
    yield from range(n)


def between() -> int:
    total = 0
    for v in gen(2):
        total += leaf(v)  # runs while gen is suspended
    return total
