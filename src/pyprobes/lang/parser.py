"""Parses probe specs: ``[p|r[MAXACTIVE]][:[GROUP/]EVENT] TARGET [FETCHARG ...] [if FILTER]``."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from pyprobes.engine.errors import SpecError
from pyprobes.lang.diagnostics import Source
from pyprobes.lang.fetcharg import parse_fetcharg
from pyprobes.lang.filter import compile_filter
from pyprobes.lang.lexer import Word, lex
from pyprobes.lang.model import FetchArg, ProbeSpec
from pyprobes.lang.target import TARGET_FORMS, default_event, parse_target
from pyprobes.lang.vocab import DEFAULT_GROUP, MAXACTIVE_MAX, Kind, variables_for

GRAMMAR = "[p|r[MAXACTIVE]][:[GROUP/]EVENT] TARGET [FETCHARG ...] [if FILTER]"
KINDS = "p, r or rMAXACTIVE"

# The first word is the kind header when it is p or r, optionally with a maxactive,
# optionally followed by ':[GROUP/]EVENT'. A word that only a target could be (a dot
# or %, +, *, ?, <, > after the colon) is the target, so modules named like a kind
# rarely clash; 'p p:func' is the way to probe module 'p' itself.
_HEADER_PR = re.compile(r"(?P<kind>[pr])(?P<max>[-+0-9][^:]*)?(?::(?P<event>.*))?\Z", re.S)
_TARGET_ONLY = re.compile(r"[.%+*?<>:]")
# 'k:ev json:loads' reads as target 'k:ev' plus a bad fetch arg: if the first word
# starts with a known misspelling of a kind, report the kind instead.
_LOOKS_LIKE_HEADER = re.compile(r"(?P<kind>[A-Za-z]\w*):[A-Za-z_/]\w*\Z")
_KIND_WORD = re.compile(r"[A-Za-z]\w*\Z")
_EVENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MAXACTIVE = re.compile(r"(0[xX][0-9a-fA-F]+|[0-9]+)\Z")
_KIND_ALIASES = {
    "p": "p",
    "r": "r",
    "k": "p",
    "kprobe": "p",
    "probe": "p",
    "ret": "r",
    "return": "r",
    "kretprobe": "r",
    "retprobe": "r",
    "f": "p",
    "u": "p",
}


def _check_characters(src: Source) -> None:
    """A spec is one printable line; tabs count as spaces."""
    for index, ch in enumerate(src.text):
        if ch in "\n\r":
            raise src.error(index, "a spec is one line (parse_spec_file reads one per line)")
        if not ch.isprintable() and ch != "\t":
            raise src.error(index, f"unexpected character {ch!r} (U+{ord(ch):04X})")


def _bad_kind(src: Source, word: Word, kind: str) -> SpecError:
    alias = _KIND_ALIASES.get(kind.lower())
    if alias is not None:
        suggestion = f"; did you mean '{alias}'?"
    else:
        close = difflib.get_close_matches(kind.lower(), list(_KIND_ALIASES), n=3, cutoff=0.6)
        kinds = sorted({_KIND_ALIASES[name] for name in close})
        suggestion = f"; did you mean {' or '.join(repr(k) for k in kinds)}?" if kinds else ""
    return src.error(word.start, f"unknown probe kind '{kind}' (expected {KINDS}{suggestion})")


@dataclass(slots=True)
class _Header:
    """The optional first word: kind, maxactive, group and event."""

    kind: Kind | None = None
    maxactive: int = 0
    group: str = DEFAULT_GROUP
    event: str | None = None


def _parse_header(src: Source, words: tuple[Word, ...]) -> _Header | None:
    """Parse the kind header if the first word is one, else return None."""
    word = words[0]
    header = _Header()
    match = _HEADER_PR.match(word.text)
    if match is not None and match.group("event") is not None:
        dotted_max = "." in (match.group("max") or "")
        if dotted_max or _TARGET_ONLY.search(match.group("event")):
            match = None
    if match is None:
        # A word without ':' cannot be a target, so before one that can, it is a kind.
        if len(words) > 1 and _KIND_WORD.match(word.text) and ":" in words[1].text:
            raise _bad_kind(src, word, word.text)
        return None
    header.kind = "r" if match.group("kind") == "r" else "p"
    max_text = match.group("max")
    if max_text is not None:
        at = word.start + 1
        if header.kind == "p":
            raise src.error(at, "maxactive (the N of rN) only applies to return probes (r)")
        if not _MAXACTIVE.match(max_text):
            raise src.error(
                at, f"bad maxactive '{max_text}' (expected a positive decimal or 0x hex number)"
            )
        if len(max_text) > 12:
            raise src.error(at, f"maxactive {max_text} is too big (at most {MAXACTIVE_MAX})")
        maxactive = int(max_text, 16) if max_text[:2].lower() == "0x" else int(max_text)
        if maxactive == 0:
            raise src.error(at, "maxactive must be positive (leave it out for the default)")
        if maxactive > MAXACTIVE_MAX:
            raise src.error(at, f"maxactive {max_text} is too big (at most {MAXACTIVE_MAX})")
        header.maxactive = maxactive
    event = match.group("event")
    if event is not None:
        at = word.start + match.start("event")
        if not event:
            raise src.error(at, "expected EVENT or GROUP/EVENT after ':'")
        if "/" in event:
            group, _, event = event.partition("/")
            if not _EVENT_NAME.match(group):
                raise src.error(
                    at, f"bad group name '{group}' (expected an identifier: letters, digits, _)"
                )
            header.group = group
            at += len(group) + 1
        if not _EVENT_NAME.match(event):
            shown = event or "(empty)"
            raise src.error(
                at, f"bad event name '{shown}' (expected an identifier: letters, digits, _)"
            )
        header.event = event
    return header


def parse_spec(text: str) -> ProbeSpec:
    """Parse one probe spec; raise one SpecError saying where and what was expected."""
    src = Source(text.strip())
    _check_characters(src)
    if not src.text:
        raise src.error(0, f"empty spec (expected {GRAMMAR})")
    lexed = lex(src)
    words = lexed.words
    header = _parse_header(src, words) if words else None
    if header is not None:
        words = words[1:]
    if not words:
        at = lexed.if_word.start if lexed.if_word is not None else len(src.text)
        raise src.error(at, f"missing target (expected {TARGET_FORMS})")
    target, kind = parse_target(words[0], src, header.kind if header else None)

    fetchargs: list[FetchArg] = []
    seen: set[str] = set()
    for word in words[1:]:
        try:
            arg = parse_fetcharg(word, src, kind)
        except SpecError:
            likely = _LOOKS_LIKE_HEADER.match(words[0].text)
            if (
                header is None
                and word is words[1]
                and ":" in word.text
                and likely
                and likely.group("kind").lower() in _KIND_ALIASES
            ):
                raise _bad_kind(src, words[0], likely.group("kind")) from None
            raise
        if arg.name in seen:
            raise src.error(
                word.start,
                f"duplicate fetch-arg name '{arg.name}' (give it another one with NAME=EXPR)",
            )
        seen.add(arg.name)
        fetchargs.append(arg)

    filter_ = None
    if lexed.filter is not None:
        filter_ = compile_filter(
            lexed.filter.text,
            [arg.name for arg in fetchargs],
            variables=variables_for(kind),
            spec=src.text,
            offset=lexed.filter.start,
        )
    event = header.event if header is not None and header.event else None
    return ProbeSpec(
        kind=kind,
        maxactive=header.maxactive if header is not None else 0,
        group=header.group if header is not None else DEFAULT_GROUP,
        event=event or default_event(kind, target),
        target=target,
        fetchargs=tuple(fetchargs),
        filter=filter_,
        text=src.text,
    )


def parse_spec_file(text: str) -> list[ProbeSpec]:
    """Parse one spec per line; blank lines and lines starting with '#' are skipped."""
    specs: list[ProbeSpec] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            specs.append(parse_spec(stripped))
        except SpecError as err:
            raise SpecError(f"line {number}: {err}", spec=err.spec, column=err.column) from None
    return specs
