"""The probe language: parse ``kprobe_events``-style specs and capture fetch args safely.

Grammar: ``[p|r[MAXACTIVE]][:[GROUP/]EVENT] TARGET [FETCHARG ...] [if FILTER]``.

TARGET: ``mod:Qual.name`` (entry, offset 0), ``mod:Qual.name+OFFS`` (bytecode offset,
decimal or 0x hex), ``mod:Qual.name:RLN`` (line relative to the def line, 0 is the def
line), ``mod:Qual.name%return`` (an ``r`` probe), ``mod:LINE`` and ``path/file.py:LINE``
(a left part ending in .py or holding a slash is a file). ``*`` and ``?`` may appear
in the module and qualified name (``*`` also matches dots) but then no offset or line.

The first word is the kind header only if it is ``p`` or ``r`` (with an optional
maxactive and ``:[GROUP/]EVENT``); a word that only a target could be (a dot, or
``%+*?<>:`` after the colon) is the target. So ``p:x json:loads`` names event ``x``,
and probing a module called ``p`` or ``r`` needs the kind first: ``p p:func``.

Default event names follow the kernel's ``p_<symbol>_<offset>``:
``p_loads_0`` / ``r_loads_0`` for functions (last qualname part, offset in decimal),
``p_loads_L3`` for relative lines, ``p_<file stem or module>_<line>`` for lines
(``p_app_17``, ``p_pkg_mod_120``), and for wildcard targets module and qualname with
``*`` read as ``star`` and ``?`` as ``any`` (``p_json_star_load_star_0``). Any other
character becomes ``_``. The default group is ``pyprobes``; GROUP and EVENT are ASCII
identifiers.

FETCHARG ``[NAME=]EXPR[:TYPE]``: EXPR is a name or ``$variable`` followed by
``.attr`` and ``[literal]`` steps (no dunder attributes); NAME defaults to EXPR;
names must be unique. FILTER (see ``filter``) reads fetch-arg names and ``$variables``.
``$retval``, ``$exception`` and ``$duration`` exist only in return probes.
"""

from __future__ import annotations

from pyprobes.engine.reads import CaptureFault, IndexKey
from pyprobes.lang.capture import (
    FAULT,
    exception_text,
    fetch,
    fetch_and_render,
    render,
)
from pyprobes.lang.filter import Filter, compile_filter
from pyprobes.lang.model import Attr, FetchArg, Index, ProbeSpec, Root, Step, Target
from pyprobes.lang.parser import parse_spec, parse_spec_file
from pyprobes.lang.target import default_event
from pyprobes.lang.vocab import DEFAULT_GROUP, DEFAULT_MAXACTIVE, SPECIAL_VARS, TYPES, Kind

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_MAXACTIVE",
    "FAULT",
    "SPECIAL_VARS",
    "TYPES",
    "Attr",
    "CaptureFault",
    "FetchArg",
    "Filter",
    "Index",
    "IndexKey",
    "Kind",
    "ProbeSpec",
    "Root",
    "Step",
    "Target",
    "compile_filter",
    "default_event",
    "exception_text",
    "fetch",
    "fetch_and_render",
    "parse_spec",
    "parse_spec_file",
    "render",
]
