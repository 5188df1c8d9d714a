"""A tiny deterministic generator (an LCG), so that every run does exactly the same work."""

from __future__ import annotations


class Rand:
    """Numerical Recipes' 32-bit LCG: the same sequence on every Python version."""

    __slots__ = ("state",)

    def __init__(self, seed: int) -> None:
        self.state = seed & 0xFFFFFFFF

    def next(self) -> int:
        self.state = (self.state * 1664525 + 1013904223) & 0xFFFFFFFF
        return self.state

    def below(self, n: int) -> int:
        """An int in ``[0, n)``."""
        return (self.next() >> 8) % n

    def chance(self, per_thousand: int) -> bool:
        """True about ``per_thousand`` times in a thousand."""
        return self.below(1000) < per_thousand
