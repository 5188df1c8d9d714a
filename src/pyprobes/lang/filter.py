"""Filter expressions: parsed with ``ast``, checked against an allow-list, compiled to closures.

The text is never ``eval``'d. ``$name`` variables and duration literals (``10ms``)
are rewritten token by token (string literals untouched) into plain Python, parsed
with ``ast.parse``, and every node is checked against an allow-list before it is
compiled into a tree of closures over an ``env`` mapping.

At run time a filter only ever compares exact builtin values (None, bool, int,
float, str, bytes and builtin containers of those), so it never runs code of the
probed program: an operand of any other type, like any comparison that raises,
makes the whole filter False.
"""

from __future__ import annotations

import ast
import operator
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final

import pyprobes.engine.program as prog
from pyprobes.engine.errors import SpecError
from pyprobes.lang.diagnostics import Source, did_you_mean, one_of, parse_python
from pyprobes.lang.lexer import scan_string
from pyprobes.lang.vocab import RETURN_ONLY_VARS, SPECIAL_VARS, return_only_message

Env = Mapping[str, object]
Evaluator = Callable[[Env], object]

#: Nanoseconds per unit of a duration literal (``$duration`` is in nanoseconds).
DURATION_UNITS: Final = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}

ALLOWED = (
    "comparisons ==, !=, <, <=, >, >=, in, not in, is None, is not None; and, or, not; "
    "parentheses; fetch-arg names and $variables; str, bytes, int, float, True, False, None "
    "and duration (10ms, 250us, 2s, 5ns) literals; tuples, lists and sets of literals"
)
MAX_DEPTH: Final = 50
_PLAIN_BUDGET: Final = 10_000

_IDENT = re.compile(r"[^\W\d]\w*")
_NUMBER = re.compile(r"(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d[\d_]*)?")
_UNIT = re.compile(r"(ns|us|ms|s)(?!\w)")
_STRING_PREFIXES = frozenset({"r", "u", "b", "br", "rb", "f", "fr", "rf"})
_MANGLE = "_pp_dollar_"
_SCALARS: Final = frozenset({type(None), bool, int, float, str, bytes})
_CONTAINERS: Final = frozenset({tuple, list, dict, set, frozenset})

_DISALLOWED: Final[dict[type[ast.AST], str]] = {
    ast.Call: "function calls are",
    ast.Attribute: "attribute access ('.name') is",
    ast.Subscript: "subscripts ('[...]') are",
    ast.Lambda: "lambdas are",
    ast.ListComp: "comprehensions are",
    ast.SetComp: "comprehensions are",
    ast.DictComp: "comprehensions are",
    ast.GeneratorExp: "generator expressions are",
    ast.BinOp: "arithmetic is",
    ast.IfExp: "conditional expressions are",
    ast.NamedExpr: "assignment expressions are",
    ast.Dict: "dict literals are",
    ast.JoinedStr: "f-strings are",
    ast.Starred: "starred expressions are",
    ast.Await: "await is",
    ast.Yield: "yield is",
    ast.YieldFrom: "yield is",
    ast.Slice: "slices are",
}
_FETCH_HINT = "; fetch the value as a named arg (e.g. host=req.headers['host']) and filter on host"

_COMPARE: Final[dict[type[ast.cmpop], Callable[[Any, Any], bool]]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: operator.contains(b, a),
    ast.NotIn: lambda a, b: not operator.contains(b, a),
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}


class _Fault(Exception):
    """An operand the filter refuses to touch: the filter is False."""


class _Foreign:
    """What a filter sees of an object that is not a builtin value: it compares with nothing."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<foreign>"


FOREIGN: Final = _Foreign()


def filter_value(raw: object, rendered: object) -> object:
    """What a filter compares for a captured value: the value itself when it is a builtin
    scalar (whole: a long str is not cut), its bounded rendering when it is a builtin
    container, else FOREIGN (any comparison with it makes the filter False), so that a
    filter never compares the text our rendering made of an object. Probe programs
    (engine.program) compare exactly so."""
    kind = type(raw)
    if kind in _SCALARS:
        return raw
    if kind in _CONTAINERS:
        return rendered
    return FOREIGN


@dataclass(frozen=True, slots=True)
class Filter:
    """A compiled ``if`` expression: call it with an env of name -> value to get True/False.

    ``names`` are the keys it reads: fetch-arg names and ``$`` variables (with the
    ``$``). Missing names, foreign operand types and comparisons that raise all
    make the result False; calling a filter never raises.
    """

    text: str
    names: frozenset[str]
    evaluate: Evaluator = field(repr=False, compare=False)
    #: The same filter as a probe program's condition, when it has that form: fetch-arg names
    #: are ``Var("local", NAME)`` placeholders that the tracer maps to what they fetch.
    plan: prog.Cond | None = field(default=None, repr=False, compare=False)

    def __call__(self, env: Env) -> bool:
        try:
            return _truth(self.evaluate(env))
        except Exception:
            return False


def _truth(value: object) -> bool:
    """``bool(value)`` for builtin values only: other types could run code in ``__bool__``."""
    if type(value) in _SCALARS or type(value) in _CONTAINERS:
        return bool(value)
    raise _Fault(type(value))


def _require_plain(value: object, *, keys_only: bool = False) -> None:
    """Refuse ``value`` unless it is built only of builtin values (bounded walk)."""
    budget = _PLAIN_BUDGET
    stack = [value]
    while stack:
        item = stack.pop()
        budget -= 1
        if budget < 0:
            raise _Fault("too big")
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is dict:
            assert isinstance(item, dict)
            stack.extend(item.keys() if keys_only else [*item.keys(), *item.values()])
        elif kind in _CONTAINERS:
            assert isinstance(item, tuple | list | set | frozenset)
            stack.extend(item)
        else:
            raise _Fault(kind)
        keys_only = False


def _compare(op: type[ast.cmpop], left: object, right: object) -> bool:
    """One safe comparison; ``is``/``is not`` are only ever against None (checked at parse)."""
    if op is ast.Is or op is ast.IsNot:
        return _COMPARE[op](left, right)
    _require_plain(left)
    _require_plain(right, keys_only=op in (ast.In, ast.NotIn) and type(right) is dict)
    return _COMPARE[op](left, right)


def _rewrite(src: Source, text: str, offset: int) -> tuple[str, list[int], list[int]]:
    """Turn ``$name`` into identifiers and duration literals into integers, strings untouched.

    Returns the Python text and two maps back to the index in ``text`` each piece
    came from: one entry per character (SyntaxError counts those) and one per UTF-8
    byte (node columns count those), each with one more entry for the end.
    """
    out: list[str] = []
    char_origin: list[int] = []
    byte_origin: list[int] = []

    def emit(piece: str, at: int | None = None, start: int = 0) -> None:
        out.append(piece)
        for k, ch in enumerate(piece):
            source = at if at is not None else start + k
            char_origin.append(source)
            byte_origin.extend([source] * len(ch.encode("utf-8")))

    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "'\"":
            end = scan_string(src, text, i, offset)
            emit(text[i:end], start=i)
            i = end
        elif ch == "$":
            match = _IDENT.match(text, i + 1)
            if match is None:
                raise src.error(offset + i + 1, "expected a variable name after '$'")
            emit(_MANGLE + match.group(), at=i)
            i = match.end()
        elif (match := _IDENT.match(text, i)) is not None:
            end = match.end()
            if match.group().lower() in _STRING_PREFIXES and end < len(text) and text[end] in "'\"":
                end = scan_string(src, text, end, offset)
            emit(text[i:end], start=i)
            i = end
        elif (match := _NUMBER.match(text, i)) is not None:
            unit = _UNIT.match(text, match.end())
            if unit is None:
                emit(match.group(), start=i)
                i = match.end()
                continue
            emit(repr(_duration(src, match.group(), unit.group(), offset + i)), at=i)
            i = unit.end()
        else:
            emit(ch, start=i)
            i += 1
    char_origin.append(len(text))
    byte_origin.append(len(text))
    return "".join(out), char_origin, byte_origin


def _duration(src: Source, number: str, unit: str, at: int) -> int | float:
    """Nanoseconds in a duration literal such as ``1.5ms``; exact when it is whole."""
    digits = number.replace("_", "")
    mantissa, _, exponent = digits.lower().partition("e")
    if len(mantissa) > 30 or (exponent and abs(int(exponent)) > 30):
        raise src.error(at, f"duration literal '{number}{unit}' is out of range")
    value = Fraction(digits) * DURATION_UNITS[unit]
    return value.numerator if value.denominator == 1 else float(value)


class _Compiler:
    """Checks each node against the allow-list and builds its closure."""

    def __init__(
        self,
        src: Source,
        *,
        text: str,
        offset: int,
        origin: list[int],
        names: Mapping[str, str],
        variables: tuple[str, ...],
    ) -> None:
        self.src = src
        self.text = text
        self.offset = offset
        self.origin = origin
        self.names = names
        self.variables = variables
        self.used: set[str] = set()

    def at(self, node: ast.AST) -> int:
        """Index in the spec of where ``node`` was written."""
        col = getattr(node, "col_offset", 0)
        return self.offset + self.origin[min(max(col, 0), len(self.origin) - 1)]

    def fail(self, node: ast.AST, detail: str) -> SpecError:
        return self.src.error(self.at(node), detail)

    def build(self, node: ast.AST, depth: int = 0) -> Evaluator:
        if depth > MAX_DEPTH:
            raise self.fail(node, f"filter is nested too deeply (more than {MAX_DEPTH} levels)")
        match node:
            case ast.BoolOp(op=ast.And(), values=values):
                return _all([self.build(v, depth + 1) for v in values])
            case ast.BoolOp(op=ast.Or(), values=values):
                return _any([self.build(v, depth + 1) for v in values])
            case ast.UnaryOp(op=ast.Not(), operand=operand):
                inner = self.build(operand, depth + 1)
                return lambda env: not _truth(inner(env))
            case ast.Compare(left=left, ops=ops, comparators=comparators):
                return self.compare(left, ops, comparators, depth)
            case ast.Name(id=name):
                key = self.name(node, name)
                return lambda env: env[key]
            case ast.Constant() | ast.UnaryOp() | ast.Tuple() | ast.List() | ast.Set():
                value = self.literal(node, collection=True)
                return lambda env: value
        raise self.fail(node, self.disallowed(node))

    def disallowed(self, node: ast.AST) -> str:
        what = _DISALLOWED.get(type(node))
        if isinstance(node, ast.UnaryOp):
            what = "bitwise '~' is"
        if what is None:
            what = f"'{type(node).__name__}' expressions are"
        hint = _FETCH_HINT if isinstance(node, ast.Attribute | ast.Subscript) else ""
        return f"{what} not allowed in a filter (allowed: {ALLOWED}){hint}"

    def compare(
        self, left: ast.expr, ops: list[ast.cmpop], comparators: list[ast.expr], depth: int
    ) -> Evaluator:
        operands = [left, *comparators]
        for k, op in enumerate(ops):
            if isinstance(op, ast.Is | ast.IsNot) and not any(
                _is_none(n) for n in operands[k : k + 2]
            ):
                word = "is" if isinstance(op, ast.Is) else "is not"
                raise self.fail(
                    operands[k + 1],
                    f"'{word}' only compares with None (use == or != to compare values)",
                )
        first = self.build(left, depth + 1)
        rest = [
            (type(op), self.build(c, depth + 1)) for op, c in zip(ops, comparators, strict=True)
        ]

        def evaluate(env: Env) -> bool:
            value = first(env)
            for op, get in rest:
                right = get(env)
                if not _compare(op, value, right):
                    return False
                value = right
            return True

        return evaluate

    def literal(self, node: ast.AST, *, collection: bool) -> object:
        match node:
            case ast.Constant(value=value) if value is None or isinstance(
                value, str | bytes | int | float
            ):
                return value
            case ast.UnaryOp(op=ast.USub() | ast.UAdd() as op, operand=ast.Constant(value=v)) if (
                isinstance(v, int | float) and not isinstance(v, bool)
            ):
                return -v if isinstance(op, ast.USub) else v
            case ast.UnaryOp(op=ast.USub() | ast.UAdd()):
                raise self.fail(node, "unary '-' and '+' only apply to number literals")
            case ast.Tuple(elts=elts) | ast.List(elts=elts) | ast.Set(elts=elts) if collection:
                items = [self.literal(e, collection=False) for e in elts]
                if isinstance(node, ast.Tuple):
                    return tuple(items)
                if isinstance(node, ast.List):
                    return items
                return frozenset(items)
            case ast.Constant(value=value):
                raise self.fail(
                    node, f"{type(value).__name__} literals are not allowed in a filter"
                )
        if not collection or isinstance(node, ast.Tuple | ast.List | ast.Set):
            raise self.fail(node, "tuples, lists and sets in a filter may only hold literals")
        raise self.fail(node, self.disallowed(node))

    def name(self, node: ast.AST, ident: str) -> str:
        """Resolve a Name node to its env key: a fetch-arg name or a ``$`` variable."""
        index = self.at(node) - self.offset
        if self.text.startswith("$", index):
            match = _IDENT.match(self.text, index + 1)
            var = "$" + (match.group() if match else ident.removeprefix(_MANGLE))
            if var not in SPECIAL_VARS:
                raise self.fail(
                    node,
                    f"unknown variable '{var}' (expected one of {one_of(self.variables)}"
                    f"{did_you_mean(var, SPECIAL_VARS)})",
                )
            if var not in self.variables:
                reason = (
                    return_only_message(var)
                    if var in RETURN_ONLY_VARS
                    else f"'{var}' is not available here"
                )
                raise self.fail(node, reason)
            self.used.add(var)
            return var
        key = self.names.get(ident)
        if key is None:
            raise self.fail(node, self.unknown(ident))
        self.used.add(key)
        return key

    def unknown(self, ident: str) -> str:
        known = [*self.names.values()]
        readable = f"fetch-arg names {one_of(known)} and " if known else ""
        if f"${ident}" in self.variables:
            suggestion = f"; did you mean '${ident}'?"
        else:
            suggestion = did_you_mean(ident, [*known, *self.variables])
            if not suggestion:
                suggestion = did_you_mean(f"${ident}", self.variables)
        return (
            f"unknown name '{ident}' in filter (a filter reads {readable}the variables "
            f"{one_of(self.variables)}; add '{ident}' as a fetch arg to filter on it"
            f"{suggestion})"
        )


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _all(parts: list[Evaluator]) -> Evaluator:
    def evaluate(env: Env) -> object:
        value: object = True
        for part in parts:
            value = part(env)
            if not _truth(value):
                return value
        return value

    return evaluate


def _any(parts: list[Evaluator]) -> Evaluator:
    def evaluate(env: Env) -> object:
        value: object = False
        for part in parts:
            value = part(env)
            if _truth(value):
                return value
        return value

    return evaluate


def compile_filter(
    text: str,
    names: Iterable[str] = (),
    *,
    variables: Iterable[str] = SPECIAL_VARS,
    spec: str | None = None,
    offset: int = 0,
) -> Filter:
    """Compile a filter over the fetch-arg ``names`` and the ``$`` ``variables`` allowed.

    ``spec`` is the whole spec (for error messages, default ``text``) and ``offset``
    the index in it where ``text`` starts. Raises one SpecError on any problem.
    """
    src = Source(spec if spec is not None else text)
    allowed = tuple(variables)
    if not text.strip():
        raise src.error(offset, "expected a filter expression after 'if'")
    python, char_origin, byte_origin = _rewrite(src, text, offset)
    try:
        tree = parse_python(python)
    except SyntaxError as err:
        message = (err.msg or "invalid syntax").replace(_MANGLE, "$")
        if not err.offset:  # the parser ran out of text
            index, message = len(text), f"{message} (the filter ends too early)"
        else:
            index = char_origin[min(err.offset - 1, len(char_origin) - 1)]
        raise src.error(offset + index, f"bad filter syntax: {message}") from None
    except (ValueError, MemoryError, RecursionError, Warning):
        raise src.error(offset, "bad filter syntax") from None
    assert isinstance(tree, ast.Expression)
    by_normal_form = {unicodedata.normalize("NFKC", n): n for n in names if n.isidentifier()}
    compiler = _Compiler(
        src,
        text=text,
        offset=offset,
        origin=byte_origin,
        names=by_normal_form,
        variables=allowed,
    )
    evaluate = compiler.build(tree.body)
    return Filter(
        text=text,
        names=frozenset(compiler.used),
        evaluate=evaluate,
        plan=_plan(tree.body, by_normal_form),
    )


# --- the filter as a program's condition ----------------------------------------------------

_PLAN_VARS: Final = {
    "$duration": prog.Var("duration"),
    "$retval": prog.Var("retval"),
    "$thread": prog.Var("thread"),
    "$exception": prog.Var("exception"),
}
_PLAN_OPS: Final[dict[type[ast.cmpop], str]] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}
_FLIPPED: Final = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _plan_var(node: ast.expr, names: Mapping[str, str]) -> prog.Var | None:
    if not isinstance(node, ast.Name):
        return None
    if node.id.startswith(_MANGLE):
        return _PLAN_VARS.get("$" + node.id.removeprefix(_MANGLE))
    name = names.get(node.id)  # (ast gives identifiers NFKC-normalised)
    return None if name is None else prog.Var("local", name)


def _plan_const(node: ast.expr) -> object:
    """A scalar literal's value, or _plan_const (not one)."""
    match node:
        case ast.Constant(value=value) if value is None or type(value) in (str, int, float, bool):
            return value
        case ast.UnaryOp(op=ast.USub(), operand=ast.Constant(value=int() | float() as v)) if (
            type(v) is not bool
        ):
            return -v
        case ast.UnaryOp(op=ast.UAdd(), operand=ast.Constant(value=v)) if type(v) in (int, float):
            return v
    return _plan_const


def _plan(node: ast.expr, names: Mapping[str, str], depth: int = 0) -> prog.Cond | None:
    """``node`` as a program condition, or None when some part has no such form (a chained
    comparison, two names compared, ``is`` other than ``is None``, a bare name, bytes,
    $args/$caller/$stack)."""
    if depth > MAX_DEPTH:
        return None
    match node:
        case ast.BoolOp(op=ast.And() | ast.Or() as op, values=values):
            parts = [_plan(v, names, depth + 1) for v in values]
            if any(p is None for p in parts):
                return None
            kept = tuple(p for p in parts if p is not None)
            return prog.AllOf(kept) if isinstance(op, ast.And) else prog.AnyOf(kept)
        case ast.UnaryOp(op=ast.Not(), operand=operand):
            inner = _plan(operand, names, depth + 1)
            return None if inner is None else prog.Not(inner)
        case ast.Compare(
            left=left, ops=[ast.Is() | ast.IsNot() as op], comparators=[ast.Constant(value=None)]
        ):
            var = _plan_var(left, names)
            return (
                None
                if var is None
                else prog.Cmp("is" if isinstance(op, ast.Is) else "is not", var, None)
            )
        case ast.Compare(left=left, ops=[op], comparators=[right]) if type(op) in _PLAN_OPS:
            name = _PLAN_OPS[type(op)]
            var, const = _plan_var(left, names), None
            if name in ("in", "not in"):
                if var is None or not isinstance(right, ast.Tuple | ast.List | ast.Set):
                    return None
                items = tuple(_plan_const(e) for e in right.elts)
                if any(i is _plan_const for i in items):
                    return None
                return prog.Cmp(name, var, items)  # type: ignore[arg-type]
            if var is not None:
                const = _plan_const(right)
            else:
                var, const, name = _plan_var(right, names), _plan_const(left), _FLIPPED[name]
            if var is None or const is _plan_const:
                return None
            return prog.Cmp(name, var, const)  # type: ignore[arg-type]
    return None
