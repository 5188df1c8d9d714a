"""Seeing modules' code just before it runs, for pending probes and for reloads.

A meta path finder placed first in ``sys.meta_path`` (only while a probe names a module or a
file) asks the other finders for the spec of a watched module and gives its loader an
instance-level ``get_code`` that reports the new code object and then removes itself. The
module then executes through the loader's own ``exec_module``, so no frame of ours is on the
stack while the program's module code runs, and tracebacks are unchanged.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from types import CodeType, ModuleType
from typing import Any

_log = logging.getLogger("pyprobes")

OnCode = Callable[[str, str | None, CodeType], None]


def real_path(path: str) -> str:
    """The canonical form of a path, for comparing file names."""
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return path


class ImportWatcher:
    """Meta path finder reporting the code objects of watched modules and files."""

    def __init__(self, on_code: OnCode) -> None:
        self.names: frozenset[str] = frozenset()
        self.paths: frozenset[str] = frozenset()
        self.every = False  # report every module (import listeners are registered)
        self._on_code = on_code

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        """Find the spec with the other finders; hook its loader if the module is watched."""
        names, paths, every = self.names, self.paths, self.every
        if fullname not in names and not paths and not every:
            return None
        spec = self._find_with_others(fullname, path, target)
        if spec is None:
            return None
        if (
            every
            or fullname in names
            or (paths and isinstance(spec.origin, str) and real_path(spec.origin) in paths)
        ):
            self._hook_loader(spec, fullname)
        return spec

    def _find_with_others(
        self, fullname: str, path: Any, target: ModuleType | None
    ) -> ModuleSpec | None:
        for finder in list(sys.meta_path):
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                return spec  # type: ignore[no-any-return]
        return None

    def _hook_loader(self, spec: ModuleSpec, fullname: str) -> None:
        loader = spec.loader
        if loader is None or "get_code" in getattr(loader, "__dict__", {}):
            return
        original = getattr(loader, "get_code", None)
        if original is None:
            return
        on_code = self._on_code
        origin = spec.origin

        def get_code(name: str) -> CodeType | None:
            try:
                del loader.get_code  # type: ignore[attr-defined]
            except AttributeError:
                pass
            code: CodeType | None = original(name)
            if code is not None and name == fullname:
                try:
                    on_code(fullname, origin, code)
                except Exception:
                    _log.exception("pyprobes: arming probes on %s failed", fullname)
            return code

        try:
            loader.get_code = get_code  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            _log.warning("pyprobes: cannot watch the import of %s (its loader is sealed)", fullname)

    def update(self, names: set[str], paths: set[str], every: bool = False) -> None:
        """Watch exactly these module names and real paths (or ``every`` module); leave
        sys.meta_path when there is nothing to watch."""
        self.names = frozenset(names)
        self.paths = frozenset(paths)
        self.every = every
        if names or paths or every:
            if not sys.meta_path or sys.meta_path[0] is not self:
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                sys.meta_path.insert(0, self)
        elif self in sys.meta_path:
            sys.meta_path.remove(self)
