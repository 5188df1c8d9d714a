"""JSON Lines output: one strict JSON object per event."""

from __future__ import annotations

from pyprobes.output.records import Event
from pyprobes.output.sanitize import dumps


class JsonRenderer:
    """Renders each event as ``Event.to_json_dict()`` on one line; every line parses."""

    def header(self) -> str:
        """Nothing: JSON Lines needs no framing."""
        return ""

    def footer(self) -> str:
        """Nothing: JSON Lines needs no framing."""
        return ""

    def render(self, event: Event) -> str:
        """One compact JSON object and a newline (non-finite floats as strings)."""
        return dumps(event.to_json_dict()) + "\n"
