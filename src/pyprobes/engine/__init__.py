"""The probe engine: the only user of sys.monitoring in pyprobes."""

from __future__ import annotations

from pyprobes.engine.tool import check_supported

check_supported()  # before anything that needs 3.12: a clear error on older Pythons

from pyprobes.engine.blacklist import noprobe
from pyprobes.engine.context import KretprobeInstance, ProbeContext, regs_return_value
from pyprobes.engine.errors import (
    AlreadyRegisteredError,
    InvalidProbeError,
    ProbeBlacklistedError,
    ProbeError,
    SpecError,
    SymbolNotFoundError,
    ToolIdInUseError,
    UnsupportedPythonError,
)
from pyprobes.engine.listing import ProbeRecord, format_probe_list, list_probes
from pyprobes.engine.probes import Jprobe, Kprobe, Kretprobe, Probe
from pyprobes.engine.registry import (
    announce_code,
    core_name,
    default_maxactive,
    disable_jprobe,
    disable_kprobe,
    disable_kretprobe,
    enable_jprobe,
    enable_kprobe,
    enable_kretprobe,
    is_enabled,
    register_jprobe,
    register_jprobes,
    register_kprobe,
    register_kprobes,
    register_kretprobe,
    register_kretprobes,
    registered_probes,
    set_enabled,
    tool_id,
    unregister_jprobe,
    unregister_jprobes,
    unregister_kprobe,
    unregister_kprobes,
    unregister_kretprobe,
    unregister_kretprobes,
)

__all__ = [
    "AlreadyRegisteredError",
    "InvalidProbeError",
    "Jprobe",
    "Kprobe",
    "Kretprobe",
    "KretprobeInstance",
    "Probe",
    "ProbeBlacklistedError",
    "ProbeContext",
    "ProbeError",
    "ProbeRecord",
    "SpecError",
    "SymbolNotFoundError",
    "ToolIdInUseError",
    "UnsupportedPythonError",
    "announce_code",
    "core_name",
    "default_maxactive",
    "disable_jprobe",
    "disable_kprobe",
    "disable_kretprobe",
    "enable_jprobe",
    "enable_kprobe",
    "enable_kretprobe",
    "format_probe_list",
    "is_enabled",
    "list_probes",
    "noprobe",
    "register_jprobe",
    "register_jprobes",
    "register_kprobe",
    "register_kprobes",
    "register_kretprobe",
    "register_kretprobes",
    "registered_probes",
    "regs_return_value",
    "set_enabled",
    "tool_id",
    "unregister_jprobe",
    "unregister_jprobes",
    "unregister_kprobe",
    "unregister_kprobes",
    "unregister_kretprobe",
    "unregister_kretprobes",
]
