"""Imported only by a test, after a wildcard spec on it was disabled."""

from __future__ import annotations


def lazy_one(n: int) -> int:
    return n * 3
