"""Parses the TARGET word of a spec and derives the kernel-style default event name."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from pyprobes.lang.diagnostics import Source
from pyprobes.lang.lexer import Word
from pyprobes.lang.model import Target
from pyprobes.lang.vocab import Kind

TARGET_FORMS = (
    "MODULE:QUALNAME, MODULE:QUALNAME+OFFS, MODULE:QUALNAME:RLN, MODULE:LINE or FILE.py:LINE"
)

_DIGITS = re.compile(r"[0-9]+\Z")
_OFFSET = re.compile(r"(0[xX][0-9a-fA-F]+|[0-9]+)")
_SPECIAL_PART = re.compile(r"<[A-Za-z_][A-Za-z0-9_]*>\Z")
_WILDCARDS = "*?"
_MAX_DIGITS = 12


def _is_path(left: str) -> bool:
    """A target's left part names a file when it ends in .py or contains a slash."""
    return left.endswith(".py") or "/" in left


def _is_name_part(part: str) -> bool:
    """Whether ``part`` is an identifier, possibly with ``*``/``?`` wildcards in it."""
    if not part:
        return False
    plain = part.replace("*", "x").replace("?", "x")
    return plain.isidentifier()


def _check_dotted(src: Source, text: str, base: int, what: str, *, qualname: bool) -> None:
    """Raise unless ``text`` is a dotted name (qualnames may also have ``<locals>`` parts)."""
    allowed = "identifiers, <locals>-style parts" if qualname else "identifiers"
    index = base
    for part in text.split("."):
        if not (_is_name_part(part) or (qualname and _SPECIAL_PART.match(part))):
            shown = part or "(empty)"
            raise src.error(
                index,
                f"bad {what} part '{shown}' in '{text}' (expected dotted {allowed} "
                "and * ? wildcards)",
            )
        index += len(part) + 1


def _number(src: Source, digits: str, at: int, what: str) -> int:
    """Convert a decimal or 0x-hex number, refusing absurd lengths before int() does."""
    if len(digits) > _MAX_DIGITS:
        raise src.error(at, f"{what} '{digits}' is too large")
    return int(digits, 16) if digits[:2].lower() == "0x" else int(digits)


def parse_target(word: Word, src: Source, kind: Kind | None) -> tuple[Target, Kind]:
    """Parse ``word`` as a TARGET; ``kind`` is the explicit kind of the header, if any.

    Returns the target and the probe's kind (``%return`` makes an ``r`` probe).
    """
    text, base = word.text, word.start
    colon = text.find(":")
    if colon < 0:
        raise src.error(base, f"expected a TARGET ({TARGET_FORMS}), got '{text}'")
    left, right = text[:colon], text[colon + 1 :]
    right_at = base + colon + 1
    if not left:
        raise src.error(base, f"expected a MODULE or FILE.py before ':' in target '{text}'")
    if _is_path(left):
        if not _DIGITS.match(right):
            raise src.error(
                right_at, f"expected a LINE number after '{left}:' (file targets take a line)"
            )
        target = Target(path=left, abs_line=_line(src, right, right_at))
        return _apply_kind(src, target, kind, line_at=right_at, return_at=None, offset_at=None)
    _check_dotted(src, left, base, "module", qualname=False)
    if not right:
        raise src.error(right_at, f"expected a QUALNAME or LINE after '{left}:'")
    if _DIGITS.match(right):
        if any(c in left for c in _WILDCARDS):
            raise src.error(right_at, "a wildcard target cannot take a line number")
        target = Target(module=left, abs_line=_line(src, right, right_at))
        return _apply_kind(src, target, kind, line_at=right_at, return_at=None, offset_at=None)

    end = len(right)
    for mark in "+:%":
        found = right.find(mark)
        if found >= 0:
            end = min(end, found)
    qualname, suffix = right[:end], right[end:]
    suffix_at = right_at + end
    if not qualname:
        raise src.error(right_at, f"expected a QUALNAME after '{left}:'")
    _check_dotted(src, qualname, right_at, "qualified name", qualname=True)
    wild = any(c in left + qualname for c in _WILDCARDS)

    offset = 0
    rel_line: int | None = None
    offset_at: int | None = None
    line_at: int | None = None
    return_at: int | None = None
    if suffix.startswith("+"):
        if wild:
            raise src.error(suffix_at, "a wildcard target cannot take an offset (+OFFS)")
        match = _OFFSET.match(suffix, 1)
        if match is None:
            raise src.error(
                suffix_at + 1,
                f"bad offset '{suffix[1:]}' (expected a bytecode offset, decimal or 0x hex)",
            )
        offset = _number(src, match.group(), suffix_at + 1, "offset")
        offset_at = suffix_at
        suffix_at += match.end()
        suffix = suffix[match.end() :]
        if suffix and not suffix.startswith("%"):
            raise src.error(
                offset_at + 1,
                f"bad offset '{match.group()}{suffix}' "
                "(expected a bytecode offset, decimal or 0x hex)",
            )
    elif suffix.startswith(":"):
        if wild:
            raise src.error(suffix_at, "a wildcard target cannot take a relative line (:RLN)")
        if not _DIGITS.match(suffix, 1):
            raise src.error(
                suffix_at + 1,
                f"bad relative line '{suffix[1:]}' (expected digits: lines after the def line)",
            )
        rel_line = _number(src, suffix[1:], suffix_at + 1, "relative line")
        line_at = suffix_at
        suffix = ""
    if suffix:
        if suffix != "%return":
            raise src.error(suffix_at, f"unexpected '{suffix}' after the target (expected %return)")
        return_at = suffix_at
    target = Target(
        module=left,
        qualname=qualname,
        offset=None if rel_line is not None else offset,
        rel_line=rel_line,
        is_return=return_at is not None,
    )
    return _apply_kind(src, target, kind, line_at=line_at, return_at=return_at, offset_at=offset_at)


def _line(src: Source, digits: str, at: int) -> int:
    """An absolute line number: 1 or more."""
    line = _number(src, digits, at, "line number")
    if line < 1:
        raise src.error(at, "line numbers start at 1")
    return line


def _apply_kind(
    src: Source,
    target: Target,
    kind: Kind | None,
    *,
    line_at: int | None,
    return_at: int | None,
    offset_at: int | None,
) -> tuple[Target, Kind]:
    """Reconcile the header's kind with ``%return``, and refuse what a return probe can't do."""
    if target.is_return and kind == "p":
        assert return_at is not None
        raise src.error(
            return_at, "'%return' makes a return probe, but the kind is 'p' (use 'r' or drop 'p')"
        )
    final: Kind = "r" if target.is_return else (kind or "p")
    if final == "p":
        return target, final
    if target.abs_line is not None or target.rel_line is not None:
        at = line_at if line_at is not None else 0
        raise src.error(
            at, "a return probe cannot take a line (it fires when the function returns)"
        )
    if target.offset:
        assert offset_at is not None
        raise src.error(
            offset_at,
            f"a return probe cannot take an offset (+{target.offset}); "
            "it fires when the function returns (only +0 is allowed)",
        )
    return Target(module=target.module, qualname=target.qualname, offset=0, is_return=True), final


def _sanitize(text: str) -> str:
    """Event names are identifiers: every other character becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def _wildcard_stem(pattern: str) -> str:
    """A stable identifier for a pattern: '*' reads 'star', '?' reads 'any'."""
    pieces = re.split(r"([*?])", pattern)
    words = [{"*": "star", "?": "any"}.get(p, _sanitize(p)) for p in pieces if p]
    return re.sub(r"_+", "_", "_".join(words)).strip("_")


def default_event(kind: Kind, target: Target) -> str:
    """The event name the kernel would make up: ``p_loads_0``, ``r_loads_0``, ``p_app_17``."""
    if target.abs_line is not None:
        where = PurePosixPath(target.path).stem if target.path is not None else target.module
        return f"{kind}_{_sanitize(where or '')}_{target.abs_line}"
    assert target.module is not None and target.qualname is not None
    if target.has_wildcards:
        return f"{kind}_{_wildcard_stem(f'{target.module}.{target.qualname}')}_0"
    last = _sanitize(target.qualname.rsplit(".", 1)[-1])
    if target.rel_line is not None:
        return f"{kind}_{last}_L{target.rel_line}"
    return f"{kind}_{last}_{target.offset or 0}"
