"""Parses one ``[NAME=]EXPR[:TYPE]`` fetch arg into a name, a path of steps and a type."""

from __future__ import annotations

import ast
import keyword
import re

from pyprobes.engine.errors import SpecError
from pyprobes.engine.reads import IndexKey, is_dunder
from pyprobes.lang.diagnostics import Source, did_you_mean, one_of, parse_python
from pyprobes.lang.lexer import QUOTES, Word, scan_string
from pyprobes.lang.model import Attr, FetchArg, Index, Root, Step
from pyprobes.lang.vocab import RETURN_ONLY_VARS, SPECIAL_VARS, TYPES, Kind, return_only_message

_IDENT = re.compile(r"[^\W\d]\w*")
_FILTER_HINT = " (a filter goes after the keyword 'if', separated by spaces)"


class _FetchArgParser:
    """Recursive descent over one fetch-arg word; every error points into the spec."""

    def __init__(self, word: Word, src: Source, kind: Kind) -> None:
        self.text = word.text
        self.base = word.start
        self.src = src
        self.kind = kind
        self.pos = 0

    def fail(self, index: int, detail: str) -> SpecError:
        hint = _FILTER_HINT if any(op in self.text for op in ("==", "!=", "<", ">", "(")) else ""
        return self.src.error(self.base + index, detail + hint)

    def parse(self) -> FetchArg:
        name_end = self._find_equals()
        name: str | None = None
        if name_end is not None:
            name = self.text[:name_end]
            if not name.isidentifier() or keyword.iskeyword(name):
                raise self.fail(
                    0, f"bad fetch-arg name '{name}' (expected an identifier before '=')"
                )
            self.pos = name_end + 1
        expr_start = self.pos
        path: list[Step] = [self._root()]
        while self.pos < len(self.text) and self.text[self.pos] != ":":
            path.append(self._step())
        expr = self.text[expr_start : self.pos]
        type_ = self._type() if self.pos < len(self.text) else None
        return FetchArg(name=name or expr, expr=expr, path=tuple(path), type=type_)

    def _find_equals(self) -> int | None:
        """Index of the '=' ending NAME, if any: outside strings and brackets."""
        i, depth = 0, 0
        while i < len(self.text):
            ch = self.text[i]
            if ch in QUOTES:
                i = scan_string(self.src, self.text, i, self.base)
                continue
            if ch == "[":
                depth += 1
            elif ch == "]":
                depth -= 1
            elif ch == "=" and depth == 0:
                return i
            i += 1
        return None

    def _root(self) -> Root:
        at = self.pos
        if self.text.startswith("$", at):
            match = _IDENT.match(self.text, at + 1)
            if match is None:
                raise self.fail(at + 1, "expected a variable name after '$'")
            name = "$" + match.group()
            if name not in SPECIAL_VARS:
                raise self.fail(
                    at,
                    f"unknown variable '{name}' (expected one of {one_of(SPECIAL_VARS)}"
                    f"{did_you_mean(name, SPECIAL_VARS)})",
                )
            if name in RETURN_ONLY_VARS and self.kind != "r":
                raise self.fail(at, return_only_message(name))
            self.pos = match.end()
            return Root(name)
        match = _IDENT.match(self.text, at)
        if match is None:
            shown = self.text[at:] or "nothing"
            raise self.fail(at, f"expected an argument or local name or a $variable, got '{shown}'")
        if keyword.iskeyword(match.group()):
            raise self.fail(at, f"'{match.group()}' is a keyword, not an argument or local name")
        self.pos = match.end()
        return Root(match.group())

    def _step(self) -> Step:
        at = self.pos
        ch = self.text[at]
        if ch == ".":
            match = _IDENT.match(self.text, at + 1)
            if match is None:
                raise self.fail(at + 1, "expected an attribute name after '.'")
            if is_dunder(match.group()):
                raise self.fail(
                    at + 1,
                    f"dunder attribute '{match.group()}' is not allowed in a fetch path "
                    "(special attributes can run code or expose internals)",
                )
            self.pos = match.end()
            return Attr(match.group())
        if ch == "[":
            return Index(self._key())
        raise self.fail(
            at, f"unexpected '{ch}' (expected .NAME, [KEY], :TYPE or the end of the fetch arg)"
        )

    def _key(self) -> IndexKey:
        open_at = self.pos
        i = open_at + 1
        while i < len(self.text) and self.text[i] in " \t":
            i += 1
        key_at = i
        if i < len(self.text) and self.text[i] in QUOTES:
            i = scan_string(self.src, self.text, i, self.base)
        else:
            while i < len(self.text) and self.text[i] not in "][":
                i += 1
        literal = self.text[key_at:i].strip()
        while i < len(self.text) and self.text[i] in " \t":
            i += 1
        if i >= len(self.text) or self.text[i] != "]":
            raise self.fail(i, "expected ']' after the subscript key")
        if not literal:
            raise self.fail(key_at, "expected a literal key inside '[]'")
        try:
            key: object = ast.literal_eval(parse_python(literal))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, Warning):
            key = ...
        if not (key is None or isinstance(key, str | int | float)):
            raise self.fail(
                key_at,
                f"bad subscript key '{literal}' (expected a str, int, float, True, False "
                "or None literal)",
            )
        self.pos = i + 1
        return key

    def _type(self) -> str:
        at = self.pos + 1
        match = _IDENT.match(self.text, at)
        if match is None:
            raise self.fail(at, f"expected a TYPE after ':' (one of {one_of(TYPES)})")
        name = match.group()
        if name not in TYPES:
            raise self.fail(
                at,
                f"unknown type '{name}' (expected one of {one_of(TYPES)}"
                f"{did_you_mean(name, TYPES)})",
            )
        if match.end() != len(self.text):
            raise self.fail(
                match.end(), f"unexpected '{self.text[match.end()]}' after the type '{name}'"
            )
        return name


def parse_fetcharg(word: Word, src: Source, kind: Kind) -> FetchArg:
    """Parse one fetch-arg word of a probe of ``kind`` (which decides the allowed $variables)."""
    return _FetchArgParser(word, src, kind).parse()
