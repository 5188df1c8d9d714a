"""The former name of ``pyprobes.lang`` (the probe language), kept as an alias for code that
imports it: ``pyprobes.spec.parse_spec`` and ``pyprobes.spec.filter`` are the same objects
as ``pyprobes.lang``'s. New code imports ``pyprobes.lang``."""

from __future__ import annotations

import importlib
import sys

from pyprobes import lang as _lang
from pyprobes.lang import *  # noqa: F403 (the alias gives exactly lang's names)

__all__ = list(_lang.__all__)

for _name in (
    "capture",
    "diagnostics",
    "fetcharg",
    "filter",
    "lexer",
    "model",
    "parser",
    "target",
    "vocab",
):
    globals()[_name] = sys.modules[f"{__name__}.{_name}"] = importlib.import_module(
        f"pyprobes.lang.{_name}"
    )
__path__: list[str] = []  # a package for the import system, whose submodules are lang's
