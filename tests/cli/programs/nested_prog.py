"""Functions nested in functions and classes, a lambda and a comprehension, for wildcards."""

import json


def make():
    def inner(x):
        return x + 1

    return inner


class Box:
    class Lid:
        def open(self):
            def hinge():
                return 1

            return hinge()

    def get(self):
        return [i for i in range(2)]


f = make()
for i in range(3):
    f(i)
Box.Lid().open()
Box().get()
g = lambda: 0
g()
json.dumps({"a": [1, {"b": 2}]}, indent=2)
