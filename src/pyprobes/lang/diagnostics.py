"""Error messages of the probe language: where in the spec, what was expected, close matches."""

from __future__ import annotations

import ast
import difflib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

from pyprobes.engine.errors import SpecError


@dataclass(frozen=True, slots=True)
class Source:
    """The spec text being parsed, so every error can quote it and point at a column."""

    text: str

    def error(self, index: int, detail: str) -> SpecError:
        """Build the one SpecError for a problem at 0-based ``index`` of the text."""
        column = max(index, 0) + 1
        message = f"bad probe spec '{self.text}': column {column}: {detail}"
        return SpecError(message, spec=self.text, column=column)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return "; did you mean 'x'?" for the closest choices (case-insensitive), or ""."""
    by_folded: dict[str, str] = {}
    for choice in choices:
        by_folded.setdefault(choice.casefold(), choice)
    matches = difflib.get_close_matches(word.casefold(), list(by_folded), n=3, cutoff=0.6)
    if not matches:
        return ""
    quoted = " or ".join(f"'{by_folded[m]}'" for m in matches)
    return f"; did you mean {quoted}?"


def one_of(choices: Iterable[str]) -> str:
    """Format an allowed set as "a, b, c" for "expected one of ..." messages."""
    return ", ".join(choices)


def parse_python(text: str, mode: str = "eval") -> ast.AST:
    """``ast.parse`` with warnings (invalid escapes, ``1if``) raised as SyntaxError, not printed."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return ast.parse(text, mode=mode)
