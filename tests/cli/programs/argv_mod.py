"""Prints its arguments and calls work() once: for -m argument tests."""

import sys


def work(n: int) -> int:
    return n + 1


print(sys.argv[1:], work(1))
