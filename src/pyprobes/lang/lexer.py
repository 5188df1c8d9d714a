"""Splits a spec into words, keeping quoted strings and brackets whole, and finds ``if``."""

from __future__ import annotations

from dataclasses import dataclass

from pyprobes.lang.diagnostics import Source

BLANKS = " \t"
QUOTES = "'\""


@dataclass(frozen=True, slots=True)
class Word:
    """A whitespace-separated piece of the spec and where it starts (0-based)."""

    text: str
    start: int

    @property
    def end(self) -> int:
        """Index just past the word."""
        return self.start + len(self.text)


@dataclass(frozen=True, slots=True)
class Lexed:
    """The words before ``if``, and the ``if`` keyword and the filter text after it."""

    words: tuple[Word, ...]
    if_word: Word | None
    filter: Word | None


def scan_string(src: Source, text: str, i: int, base: int = 0) -> int:
    """Return the index just past the string literal opening at ``text[i]``.

    Backslash escapes the next character (also in raw strings, as Python's
    tokenizer does); triple quotes are honoured. ``base`` is where ``text``
    starts inside the spec, for the error column.
    """
    quote = text[i]
    delim = quote * 3 if text.startswith(quote * 3, i) else quote
    j = i + len(delim)
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text.startswith(delim, j):
            return j + len(delim)
        else:
            j += 1
    raise src.error(base + i, f"unterminated string (expected a closing {delim})")


def lex(src: Source) -> Lexed:
    """Split ``src.text`` into words; everything after a lone ``if`` word is the filter."""
    text = src.text
    words: list[Word] = []
    i = 0
    while True:
        while i < len(text) and text[i] in BLANKS:
            i += 1
        if i >= len(text):
            return Lexed(tuple(words), None, None)
        start = i
        open_brackets: list[int] = []
        while i < len(text) and (open_brackets or text[i] not in BLANKS):
            ch = text[i]
            if ch in QUOTES:
                i = scan_string(src, text, i)
                continue
            if ch == "[":
                open_brackets.append(i)
            elif ch == "]" and open_brackets:
                open_brackets.pop()
            i += 1
        if open_brackets:
            raise src.error(open_brackets[0], "unclosed '[' (expected ']')")
        word = Word(text[start:i], start)
        if word.text == "if":
            while i < len(text) and text[i] in BLANKS:
                i += 1
            return Lexed(tuple(words), word, Word(text[i:], i))
        words.append(word)
