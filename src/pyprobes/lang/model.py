"""The parsed form of a probe spec: plain frozen values the engine and CLI consume."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from pyprobes.engine.reads import IndexKey
from pyprobes.lang.filter import Filter
from pyprobes.lang.vocab import DEFAULT_MAXACTIVE, Kind


@dataclass(frozen=True, slots=True)
class Root:
    """First step of a fetch path: an argument or local name, or a ``$`` variable."""

    name: str

    def __str__(self) -> str:
        return self.name

    @property
    def is_special(self) -> bool:
        """Whether this is a ``$`` variable rather than a name in the probed frame."""
        return self.name.startswith("$")


@dataclass(frozen=True, slots=True)
class Attr:
    """An attribute step (``.name``), read without running any of the object's code."""

    name: str

    def __str__(self) -> str:
        return f".{self.name}"


@dataclass(frozen=True, slots=True)
class Index:
    """A subscript step with a literal key (``['host']``, ``[0]``, ``[-1]``)."""

    key: IndexKey

    def __str__(self) -> str:
        return f"[{self.key!r}]"


Step = Root | Attr | Index


@dataclass(frozen=True, slots=True)
class FetchArg:
    """One ``[NAME=]EXPR[:TYPE]`` of a spec: what to capture at each hit and how to render it."""

    name: str
    expr: str
    path: tuple[Step, ...]
    type: str | None = None

    @property
    def root(self) -> str:
        """The name (or ``$`` variable) the path starts from."""
        first = self.path[0]
        assert isinstance(first, Root)
        return first.name

    def __str__(self) -> str:
        text = self.expr if self.name == self.expr else f"{self.name}={self.expr}"
        return text if self.type is None else f"{text}:{self.type}"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a probe goes: a function (entry, offset, relative line, return) or a source line.

    Function targets have ``module`` and ``qualname``; ``offset`` is 0 for the entry
    and for return probes. Line targets have ``abs_line`` and either ``module`` or
    ``path`` (a file), and ``offset`` None. ``*`` and ``?`` in ``module`` and
    ``qualname`` are shell-style wildcards (``*`` also matches dots).
    """

    module: str | None = None
    qualname: str | None = None
    path: str | None = None
    offset: int | None = None
    rel_line: int | None = None
    abs_line: int | None = None
    is_return: bool = False

    @property
    def has_wildcards(self) -> bool:
        """Whether the module or qualified name is a pattern matching many functions."""
        return any(part is not None and ("*" in part or "?" in part) for part in self.names)

    @property
    def names(self) -> tuple[str | None, str | None]:
        """The (module, qualname) pair, for matching and messages."""
        return (self.module, self.qualname)

    def matches(self, module: str, qualname: str) -> bool:
        """Whether a function ``module:qualname`` is one this (function) target names."""
        if self.module is None or self.qualname is None:
            return False
        return fnmatch.fnmatchcase(module, self.module) and fnmatch.fnmatchcase(
            qualname, self.qualname
        )

    def __str__(self) -> str:
        where = self.path if self.path is not None else self.module
        if self.abs_line is not None:
            return f"{where}:{self.abs_line}"
        head = f"{where}:{self.qualname}"
        if self.is_return:
            return f"{head}%return"
        if self.rel_line is not None:
            return f"{head}:{self.rel_line}"
        if self.has_wildcards:
            return head
        return f"{head}+{self.offset or 0}"


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One parsed probe spec; equal specs mean the same probe whatever their spelling."""

    kind: Kind
    maxactive: int
    group: str
    event: str
    target: Target
    fetchargs: tuple[FetchArg, ...] = ()
    filter: Filter | None = None
    text: str = field(default="", compare=False)

    @property
    def is_return(self) -> bool:
        """Whether this is a return probe (kind ``r``)."""
        return self.kind == "r"

    @property
    def pool_size(self) -> int:
        """The instances its return probes may use: N of ``rN``, else DEFAULT_MAXACTIVE."""
        return self.maxactive or DEFAULT_MAXACTIVE

    def __str__(self) -> str:
        """The canonical spelling, which parses back to an equal spec."""
        kind = f"{self.kind}{self.maxactive or ''}"
        words = [f"{kind}:{self.group}/{self.event}", str(self.target)]
        words += [str(arg) for arg in self.fetchargs]
        if self.filter is not None:
            words += ["if", self.filter.text]
        return " ".join(words)
