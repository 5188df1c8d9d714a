"""The probe engine: the only user of sys.monitoring in pyprobes.

Its public names (listed once, in ``pyprobes.engine.api``) load on first use: importing a
submodule such as ``pyprobes.engine.errors`` selects no core.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import TYPE_CHECKING

from pyprobes.engine.tool import check_supported

check_supported()  # before anything that needs 3.12: a clear error on older Pythons


def _check_core_asked() -> None:
    """A PYPROBES_CORE that cannot be had fails here, at import, as it did when the core was
    chosen at import; the choice itself waits for the first use (nothing loaded now)."""
    from pyprobes.engine import core

    want = os.environ.get(core.ENV, "").strip().lower()
    if want == "c":
        try:
            found = importlib.util.find_spec("pyprobes._speedups") is not None
        except (ImportError, ValueError):
            found = False
        if found:
            return
    elif want in ("", *core.CHOICES):
        return
    core.select()  # raises the error that says what to do (the process is not going on)


_check_core_asked()

if TYPE_CHECKING:
    from pyprobes.engine.api import *  # noqa: F403


def _is_submodule(name: str) -> bool:
    return os.path.exists(os.path.join(os.path.dirname(__file__), name + ".py"))


# Hidden from type checkers, which see the names above (and flag a misspelt one).
if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """A public name of the engine, from ``pyprobes.engine.api`` (imported on first use)."""
        if _is_submodule(name):  # ``pyprobes.engine.registry`` before anything imported it
            return importlib.import_module(f"{__name__}.{name}")
        if name.startswith("_") and name != "__all__":
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
