"""Three functions called 1, 2 and 3 times from two callers: for per-function keys."""


def a(i):
    return i


def b(i):
    return i


def c(i):
    return i


def first():
    a(0)
    b(0)
    c(0)


def second():
    b(1)
    c(1)
    c(2)


first()
second()
