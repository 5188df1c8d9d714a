"""Functions the event-record tests probe, called with values of every kind records meet."""

from __future__ import annotations

import threading
from collections.abc import Iterator


class Opaque:
    """A value that is not plain data."""


OPAQUE = Opaque()  # one object: its rendering (type and id) is the same in every run

VALUES: list[object] = [
    0,
    -7,
    2**63 - 1,
    2**64,  # past a C long long
    10**400,  # past render's digit bound: hex
    1.5,
    1e16,
    -0.0,
    float("nan"),
    float("inf"),
    True,
    None,
    "",
    "plain",
    'quote" back\\slash',
    "tab\tnew\nline\rcr\x00\x1f\x7f",
    "café ünïcode",
    "astral \U0001f600",
    "lone \udc80 surrogate",
    "bidi \u202e override",
    "x" * 256,
    "y" * 257,
    [1, "two", None],
    {"k": [1.5]},
    (1, 2),
    {"a": {"b": [True, False, None, -3, 2.5e-7, 1e300]}, 'q"\n\\': "x\ty\x7f"},
    [[], {}, ()],
    {1: "an int key", None: 2},
    ["caf\u00e9"],  # non-ASCII inside: the fallback's
    [float("nan")],
    [[[[[[[[[[1]]]]]]]]]],
    list(range(40)),
    [2**70],
    b"bytes",
    OPAQUE,
]


#: calls of show in run(), and the hits of the tests' four probes
SHOWS = len(VALUES) + 5
HITS = 2 * SHOWS + (len(VALUES) - 21) + 1  # (the f probe: n > 20)


def show(value: object, n: int) -> object:
    if n < 0:
        raise ValueError(n)
    return value


def gen(n: int) -> Iterator[int]:
    yield n


def run() -> None:
    for i, v in enumerate(VALUES):
        show(v, i)
    list(map(show, ["via C"], [5]))  # a caller behind a C function's frame
    sorted([2, 1], key=lambda v: show(v, 6))
    try:
        show("boom", -1)
    except ValueError:
        pass
    list(gen(3))
    t = threading.Thread(target=show, args=(1, 1), name="wörker\n1")
    t.start()
    t.join()
