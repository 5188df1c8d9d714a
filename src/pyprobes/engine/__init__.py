"""The probe engine: the only user of sys.monitoring in pyprobes.

Its public names (listed once, in ``pyprobes.engine.api``) load on first use: importing a
submodule such as ``pyprobes.engine.errors`` selects no core.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

from pyprobes.engine.tool import check_supported

check_supported()  # before anything that needs 3.12: a clear error on older Pythons

if TYPE_CHECKING:
    from pyprobes.engine.api import *  # noqa: F403


def _is_submodule(name: str) -> bool:
    return os.path.exists(os.path.join(os.path.dirname(__file__), name + ".py"))


# Hidden from type checkers, which see the names above (and flag a misspelt one).
if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """A public name of the engine, from ``pyprobes.engine.api`` (imported on first use)."""
        if (name.startswith("_") and name != "__all__") or _is_submodule(name):
            # ``from pyprobes.engine import registry`` asks here first: no core for that.
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        api = importlib.import_module("pyprobes.engine.api")

        if name == "__all__":
            return list(api.__all__)
        if name not in api.__all__:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(api, name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        api = importlib.import_module("pyprobes.engine.api")

        return sorted({*globals(), *api.__all__})
