"""Make captured values safe to write: strict JSON, UTF-8-encodable text, a safe repr."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

type JSONValue = bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None

# Deeper nesting is cut off: it bounds recursion and also breaks reference cycles.
MAX_DEPTH = 32
COMPACT = (",", ":")
READABLE = (", ", ": ")


def safe_repr(value: object) -> str:
    """repr() that never raises, for values that are not plain data after all."""
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


def int_text(value: int) -> str:
    """Decimal text of an int; hex past CPython's int-to-str digit limit instead of raising."""
    try:
        return int.__repr__(value)
    except ValueError:
        return hex(value)


def float_text(value: float) -> str:
    """The JavaScript spelling of a float, so non-finite values still have a name."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def _json_key(key: object) -> str:
    if isinstance(key, str):
        return str(key)
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return int_text(key)
    if isinstance(key, float):
        return float_text(key)
    return safe_repr(key)


def to_json_safe(value: object, _depth: int = 0) -> JSONValue:
    """Return ``value`` as data that ``json.dumps(allow_nan=False)`` always accepts.

    Non-finite floats become the strings ``NaN``/``Infinity``/``-Infinity``, ints too
    long for decimal become hex strings, mapping keys become strings, tuples and sets
    become lists, anything else its repr, and nesting past MAX_DEPTH ``"..."``.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        try:
            int.__repr__(value)
        except ValueError:
            return hex(value)
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else float_text(value)
    if _depth >= MAX_DEPTH:
        return "..."
    if isinstance(value, Mapping):
        try:
            items = list(value.items())
        except Exception:
            return safe_repr(value)
        return {_json_key(k): to_json_safe(v, _depth + 1) for k, v in items}
    if isinstance(value, list | tuple | set | frozenset):
        try:
            members = list(value)
        except Exception:
            return safe_repr(value)
        return [to_json_safe(v, _depth + 1) for v in members]
    return safe_repr(value)


def utf8_safe(text: str) -> str:
    """``text`` unchanged unless it holds lone surrogates, which are backslash-escaped."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def terminal_safe(text: str, limit: int | None = 4096) -> str:
    """Untrusted ``text`` (another process's argv, say) for one terminal line: control and
    other non-printable characters (escape sequences, newlines, C1 controls such as CSI,
    bidi overrides and isolates, lone surrogates) become backslash escapes, and it is cut
    to ``limit`` characters (None: not cut)."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


#: The encoders of dumps' fast path, one per (separators, sort_keys): json.dumps with these
#: arguments would build a JSONEncoder per call. An encoder keeps no state between calls.
_ENCODERS: dict[tuple[tuple[str, str], bool], json.JSONEncoder] = {}


def _encoder(separators: tuple[str, str], sort_keys: bool) -> json.JSONEncoder:
    key = (separators, sort_keys)
    enc = _ENCODERS.get(key)
    if enc is None:
        enc = _ENCODERS[key] = json.JSONEncoder(
            ensure_ascii=False,
            allow_nan=False,
            separators=separators,
            sort_keys=sort_keys,
            default=to_json_safe,
        )
    return enc


def dumps(value: object, *, separators: tuple[str, str] = COMPACT, sort_keys: bool = False) -> str:
    """json.dumps that never raises and gives strict JSON (no NaN) that UTF-8 can encode.

    The fast path is the plain encoder; only values it rejects (non-finite floats,
    odd keys, cycles, huge ints, deep nesting) take the slower to_json_safe path.
    """
    try:
        text = _encoder(separators, sort_keys).encode(value)
    except (ValueError, TypeError, RecursionError):
        try:
            text = json.dumps(
                to_json_safe(value),
                ensure_ascii=False,
                allow_nan=False,
                separators=separators,
                sort_keys=sort_keys,
            )
        except Exception:
            return json.dumps(safe_repr(value), ensure_ascii=True)
    if text.isascii():
        return text if "\x7f" not in text else _json_printable(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: \uXXXX escapes keep the JSON valid and exact.
        return _dumps_ascii(value, separators, sort_keys)
    return text if text.isprintable() else _json_printable(text)


def _json_escape(ch: str) -> str:
    n = ord(ch)
    if n > 0xFFFF:
        n -= 0x10000
        return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"
    return f"\\u{n:04x}"


def _json_printable(text: str) -> str:
    """JSON ``text`` with the characters ``terminal_safe`` would escape (DEL, C1 controls,
    bidi overrides; json escapes only C0) as ``\\uXXXX``: still exact, and safe to show on
    a terminal. Outside strings JSON text holds only printable ASCII, so only strings change."""
    return "".join(ch if ch.isprintable() else _json_escape(ch) for ch in text)


def _dumps_ascii(value: object, separators: tuple[str, str], sort_keys: bool) -> str:
    return json.dumps(
        to_json_safe(value),
        ensure_ascii=True,
        allow_nan=False,
        separators=separators,
        sort_keys=sort_keys,
    )
