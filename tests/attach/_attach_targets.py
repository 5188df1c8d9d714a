"""Functions probed by the in-process agent tests (imported as ``_attach_targets``)."""

from __future__ import annotations


def hot(n: int) -> int:
    return n + 1


def other(x: object) -> object:
    return x


def outer(n: int) -> int:
    return hot(n) + hot(n + 1)
