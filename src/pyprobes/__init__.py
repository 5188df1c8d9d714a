"""pyprobes: Linux kprobes for Python, on sys.monitoring.

Put a handler on any function or line of a running program (``Kprobe``), call a mirror of a
function at its entry (``Jprobe``), or pair every call with its return (``Kretprobe``).

The public names are those of ``pyprobes.engine.api`` (listed there, once); they load on first
use, so that ``import pyprobes.lang``, ``pyprobes.output`` or the CLI's parser selects no
dispatch core and loads no C extension.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The engine package itself is light: it checks the Python version and PYPROBES_CORE (a clear
# error at import) and selects no core until a public name is used.
importlib.import_module("pyprobes.engine")

if TYPE_CHECKING:
    from pyprobes.engine.api import *  # noqa: F403

# Subpackages reachable as attributes before anything imported them (``pyprobes.engine``).
_SUBPACKAGES = frozenset({"agent", "attach", "cli", "engine", "lang", "output", "spec", "tracer"})


# Hidden from type checkers, which see the names above (and flag a misspelt one).
if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """A public name (from ``pyprobes.engine.api``) or a subpackage, imported on first use."""
        if name in _SUBPACKAGES:
            return importlib.import_module(f"{__name__}.{name}")
        if name.startswith("_") and name != "__all__":  # ``from pyprobes import _speedups``
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        api = importlib.import_module("pyprobes.engine.api")

        if name == "__all__":
            return [*api.__all__, "__version__"]
        if name not in api.__all__:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(api, name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        api = importlib.import_module("pyprobes.engine.api")

        return sorted({*globals(), *api.__all__})
