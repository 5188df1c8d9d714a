"""The fixed words of the probe language: fetch types, $variables, defaults."""

from __future__ import annotations

from typing import Final, Literal

Kind = Literal["p", "r"]

DEFAULT_GROUP: Final = "pyprobes"

#: Conversions a fetch arg may ask for with ``:TYPE``, in the order messages list them.
TYPES: Final = ("repr", "str", "int", "float", "len", "type")

#: The ``$`` variables of fetch args and filters, in the order messages list them.
SPECIAL_VARS: Final = (
    "$args",
    "$retval",
    "$exception",
    "$duration",
    "$thread",
    "$caller",
    "$stack",
)

#: The ``$`` variables that only exist once the function has returned.
RETURN_ONLY_VARS: Final = frozenset({"$retval", "$exception", "$duration"})

#: The largest ``rN``. The kernel's KRETPROBE_MAXACTIVE_MAX is 4096, but a Python activation
#: costs one small object, made only when calls overlap that much (the pool grows lazily).
MAXACTIVE_MAX: Final = 1 << 20

#: The pool of an ``r`` probe without N. The kernel's max(10, 2 * CPUs) fits kernel code;
#: Python overlaps calls in threads, tasks, generators and recursion by the thousand (100
#: asyncio handlers, a recursive parser), and a pool that runs dry biases every statistic.
DEFAULT_MAXACTIVE: Final = 1 << 16


def variables_for(kind: Kind) -> tuple[str, ...]:
    """The ``$`` variables a probe of this kind can read."""
    if kind == "r":
        return SPECIAL_VARS
    return tuple(v for v in SPECIAL_VARS if v not in RETURN_ONLY_VARS)


def return_only_message(name: str) -> str:
    """Why a return-only ``$`` variable cannot be read in a ``p`` probe."""
    return (
        f"'{name}' is only available in return probes "
        "(use 'r' or TARGET%return; a 'p' probe fires before the function returns)"
    )
