"""The renderer protocol and the registry of output formats by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pyprobes.output.records import Event
from pyprobes.output.render_chrome import ChromeRenderer
from pyprobes.output.render_json import JsonRenderer
from pyprobes.output.render_text import TextRenderer


class Renderer(Protocol):
    """Turns events into text for one output format; called from the writer thread only."""

    def header(self) -> str:
        """Text written once before the first event ("" for none)."""
        ...

    def render(self, event: Event) -> str:
        """The text of one event, with its trailing newline where the format has one."""
        ...

    def footer(self) -> str:
        """Text written once at the end, after the last event ("" for none)."""
        ...


RENDERERS: dict[str, Callable[[], Renderer]] = {
    "text": TextRenderer,
    "json": JsonRenderer,
    "chrome": ChromeRenderer,
}


def get_renderer(name: str) -> Renderer:
    """A fresh renderer for the format ``name``; ValueError naming the allowed ones."""
    try:
        factory = RENDERERS[name]
    except (KeyError, TypeError):
        allowed = ", ".join(sorted(RENDERERS))
        raise ValueError(f"unknown output format {name!r}: allowed are {allowed}") from None
    return factory()
