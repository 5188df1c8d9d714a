"""Where rendered output goes: small frozen descriptions that open a writable handle."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Protocol, TextIO


class TextStream(Protocol):
    """The part of a text stream a sink uses."""

    def write(self, text: str, /) -> object:
        """Write text."""
        ...

    def flush(self) -> object:
        """Flush buffered text."""
        ...


class SinkHandle(Protocol):
    """An open destination; used by the writer thread only."""

    def write(self, text: str) -> None:
        """Write text; may raise OSError/ValueError, which the writer records."""
        ...

    # A handle may also have ``write_utf8(data: bytes)``: text already encoded as UTF-8,
    # written as it is (the writer decodes it for a handle without one).

    def flush(self) -> None:
        """Push buffered text out."""
        ...

    def close(self) -> None:
        """Release what open() took (a caller's stream is flushed, not closed)."""
        ...


class Sink(Protocol):
    """A description of a destination that can be opened."""

    def open(self) -> SinkHandle:
        """Open it; raises OSError at setup time, never later in the program."""
        ...


class _StreamHandle:
    """Writes to a stream the caller owns: flushes but never closes it."""

    def __init__(self, stream: TextStream) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        try:
            self._stream.write(text)
        except UnicodeEncodeError:
            # A narrow console encoding: escape what it cannot show instead of failing.
            encoding = getattr(self._stream, "encoding", None) or "ascii"
            self._stream.write(text.encode(encoding, "backslashreplace").decode(encoding))

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


class _FileHandle:
    """Writes to a file it opened itself, and closes it."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def write(self, text: str) -> None:
        self._file.write(text)

    def write_utf8(self, data: bytes) -> None:
        """UTF-8 bytes straight to the file's buffer, after the text written before them."""
        self._file.flush()
        self._file.buffer.write(data)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True, slots=True)
class StreamSink:
    """An already open text stream, e.g. ``sys.stderr``; it stays open after tracing."""

    stream: TextStream

    def open(self) -> SinkHandle:
        """A handle that writes to the stream."""
        return _StreamHandle(self.stream)


@dataclass(frozen=True, slots=True)
class FileSink:
    """A file path, opened as UTF-8 (truncated, or appended to with ``append=True``)."""

    path: str | os.PathLike[str]
    append: bool = False

    def open(self) -> SinkHandle:
        """Open the file now, so a bad path fails at setup with the OS's own message."""
        mode: Literal["a", "w"] = "a" if self.append else "w"
        return _FileHandle(
            open(self.path, mode, encoding="utf-8", errors="backslashreplace", newline="\n")
        )
