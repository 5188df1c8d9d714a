"""Sinks: frozen descriptions; a stream is borrowed, a file is owned."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from pyprobes.output import FileSink, StreamSink


def test_sinks_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        FileSink("x").path = "y"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        StreamSink(io.StringIO()).stream = io.StringIO()  # type: ignore[misc]


def test_stream_sink_flushes_but_does_not_close_the_stream() -> None:
    stream = io.StringIO()
    handle = StreamSink(stream).open()
    handle.write("a")
    handle.close()
    assert not stream.closed
    assert stream.getvalue() == "a"


def test_stream_sink_escapes_what_a_narrow_encoding_cannot_show() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    handle = StreamSink(stream).open()
    handle.write("snow ☃\n")
    handle.flush()
    assert raw.getvalue() == b"snow \\u2603\n"


def test_file_sink_writes_utf8_and_appends_on_request(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    for sink in (FileSink(path), FileSink(path, append=True)):
        handle = sink.open()
        handle.write("é\n")
        handle.close()
    assert path.read_text(encoding="utf-8") == "é\né\n"


def test_file_sink_reports_a_bad_path_when_opened(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        FileSink(tmp_path / "missing-dir" / "out.txt").open()
