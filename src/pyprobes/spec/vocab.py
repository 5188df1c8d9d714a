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

#: The kernel's KRETPROBE_MAXACTIVE_MAX: tracefs refuses a larger ``rN`` too.
MAXACTIVE_MAX: Final = 4096


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
