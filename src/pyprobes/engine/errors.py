"""The errors pyprobes raises: one base class, each subclass also the matching builtin."""

from __future__ import annotations


class ProbeError(Exception):
    """Base of every error pyprobes raises on purpose."""

    slug = "probe-error"


class SymbolNotFoundError(ProbeError, LookupError):
    """The symbol, module, file or line named by a probe does not exist (kernel: -ENOENT)."""

    slug = "symbol-not-found"


class InvalidProbeError(ProbeError, ValueError):
    """The probe's fields are inconsistent or point at no probeable place (kernel: -EINVAL)."""

    slug = "invalid-probe"


class AlreadyRegisteredError(ProbeError, ValueError):
    """The probe object is registered already (kernel: -EINVAL)."""

    slug = "already-registered"


class ProbeBlacklistedError(ProbeError, PermissionError):
    """The target is pyprobes itself or marked ``@noprobe`` (kernel: NOKPROBE_SYMBOL)."""

    slug = "blacklisted"


class ToolIdInUseError(ProbeError, RuntimeError):
    """No sys.monitoring tool id is free for pyprobes."""

    slug = "tool-id-in-use"


class UnsupportedPythonError(ProbeError, RuntimeError):
    """This interpreter has no sys.monitoring (CPython < 3.12; kernel: -ENOSYS)."""

    slug = "unsupported-python"


class SpecError(ProbeError, ValueError):
    """A probe spec of the probe language is malformed; says where and what was expected."""

    slug = "bad-spec"

    def __init__(self, message: str, spec: str = "", column: int = 0) -> None:
        super().__init__(message)
        self.spec = spec
        self.column = column
