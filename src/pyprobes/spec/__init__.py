"""The probe language: parse ``kprobe_events``-style specs and capture fetch args safely."""

from __future__ import annotations

from pyprobes.spec.capture import (
    FAULT,
    CaptureFault,
    fetch,
    fetch_and_render,
    render,
)
from pyprobes.spec.filter import Filter, compile_filter
from pyprobes.spec.model import Attr, FetchArg, Index, IndexKey, ProbeSpec, Root, Step, Target
from pyprobes.spec.parser import parse_spec, parse_spec_file
from pyprobes.spec.target import default_event
from pyprobes.spec.vocab import DEFAULT_GROUP, SPECIAL_VARS, TYPES, Kind

__all__ = [
    "DEFAULT_GROUP",
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
    "fetch",
    "fetch_and_render",
    "parse_spec",
    "parse_spec_file",
    "render",
]
