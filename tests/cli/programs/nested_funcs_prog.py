"""Nested functions and a lambda, for wildcard tests."""


def make(k):
    def inner(x):
        def deepest(y):
            return y + k

        return deepest(x)

    return inner


class Box:
    def open(self):
        def helper():
            return 1

        return helper()


square = lambda v: v * v
print(make(1)(2), Box().open(), square(3))
