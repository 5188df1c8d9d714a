"""Aggregations of events: log2 histograms, counts by key, statistics; pure and mergeable."""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

from pyprobes.output.records import RETURN, Event, function_of
from pyprobes.output.render_text import format_value
from pyprobes.output.sanitize import READABLE, dumps, int_text, safe_repr, terminal_safe
from pyprobes.output.units import TIME_UNITS, format_duration

DURATION_FIELD = "$duration"
#: Per-key histograms copied per hold of the lock by Aggregator.snapshot().
SNAPSHOT_CHUNK = 256
BAR_WIDTH = 40


# -- log2 histogram ----------------------------------------------------------------------


class Log2Histogram:
    """Counts of non-negative ints by power of two, printed as bcc's funclatency does.

    Bucket k >= 2 holds [2**(k-1), 2**k - 1]; bucket 1 holds 0 and 1 (bcc's ``0 -> 1``).
    Values are in ``unit``. For ``nsecs`` (durations) every value is also bucketed after
    integer division to usecs and msecs, as bcc's ``-u``/``-m`` do in the kernel, so the
    table is exact in whichever of the three units it is shown. Not thread-safe.
    """

    __slots__ = ("_buckets", "_scales", "count", "max", "total", "unit")

    def __init__(self, unit: str = "nsecs") -> None:
        self.unit = unit
        self._scales: tuple[tuple[str, int], ...] = (
            TIME_UNITS if unit == TIME_UNITS[0][0] else ((unit, 1),)
        )
        self._buckets: list[dict[int, int]] = [{} for _ in self._scales]
        self.count = 0
        self.total = 0
        self.max = 0

    @property
    def units(self) -> tuple[str, ...]:
        """The units this histogram can be shown in."""
        return tuple(name for name, _ in self._scales)

    @staticmethod
    def bucket_of(value: int) -> int:
        """The bucket index of a non-negative int (both 0 and 1 are in bucket 1)."""
        return value.bit_length() or 1

    @staticmethod
    def bucket_bounds(index: int) -> tuple[int, int]:
        """The inclusive value range ``(lo, hi)`` of bucket ``index``."""
        lo = 0 if index <= 1 else 1 << (index - 1)
        return lo, (1 << index) - 1

    def add(self, value: int) -> None:
        """Count one value; TypeError unless an int, ValueError if negative."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"a histogram counts ints, not {type(value).__name__}")
        if value < 0:
            raise ValueError(f"a log2 histogram counts non-negative values, got {value}")
        for (_, divisor), buckets in zip(self._scales, self._buckets, strict=True):
            index = (value // divisor).bit_length() or 1
            buckets[index] = buckets.get(index, 0) + 1
        self.count += 1
        self.total += value
        self.max = max(self.max, value)

    @property
    def mean(self) -> float | None:
        """Mean value in ``unit``, None when empty."""
        return self.total / self.count if self.count else None

    @classmethod
    def from_buckets(
        cls, unit: str, buckets: tuple[dict[int, int], ...], count: int, total: int, high: int
    ) -> Log2Histogram:
        """A histogram of values already bucketed (by a probe program), one dict per unit."""
        new = cls(unit)
        if len(buckets) != len(new._scales):
            n = len(new._scales)
            raise ValueError(f"a {unit} histogram has {n} scales, not {len(buckets)}")
        new._buckets = [dict(b) for b in buckets]
        new.count, new.total, new.max = count, total, high
        return new

    def copy(self) -> Log2Histogram:
        """An independent copy."""
        new = Log2Histogram(self.unit)
        new._buckets = [dict(b) for b in self._buckets]
        new.count, new.total, new.max = self.count, self.total, self.max
        return new

    def merge(self, other: Log2Histogram) -> Log2Histogram:
        """A new histogram holding the values of both; neither input changes."""
        if other.unit != self.unit:
            raise ValueError(f"cannot merge a {self.unit} histogram with a {other.unit} one")
        new = self.copy()
        for mine, theirs in zip(new._buckets, other._buckets, strict=True):
            for index, n in theirs.items():
                mine[index] = mine.get(index, 0) + n
        new.count += other.count
        new.total += other.total
        new.max = max(new.max, other.max)
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Log2Histogram):
            return NotImplemented
        return (self.unit, self.count, self.total, self.max, self._buckets) == (
            other.unit,
            other.count,
            other.total,
            other.max,
            other._buckets,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Log2Histogram(unit={self.unit!r}, count={self.count}, total={self.total})"

    def auto_unit(self) -> str:
        """The unit to show, by the distribution, not the maximum: the largest of nsecs,
        usecs and msecs in which at most 5 % of the values are below 8 units, so the bulk
        of the durations spreads over buckets instead of piling into ``0 -> 1`` (a few
        slow outliers do not push the fast majority into one bucket)."""
        if len(self._scales) == 1 or not self.count:
            return self.unit
        for (name, _), buckets in reversed(list(zip(self._scales, self._buckets, strict=True))):
            below_8 = buckets.get(1, 0) + buckets.get(2, 0) + buckets.get(3, 0)
            if below_8 * 20 <= self.count:
                return name
        return self._scales[0][0]

    def _scale(self, unit: str | None) -> tuple[str, int, dict[int, int]]:
        name = self.auto_unit() if unit is None else unit
        for (scale_name, divisor), buckets in zip(self._scales, self._buckets, strict=True):
            if scale_name == name:
                return name, divisor, buckets
        allowed = ", ".join(self.units)
        raise ValueError(f"cannot show a {self.unit} histogram in {name!r}: allowed are {allowed}")

    def buckets(self, unit: str | None = None) -> list[tuple[int, int, int]]:
        """``(lo, hi, count)`` rows from the first non-empty bucket to the last, in ``unit``."""
        _, _, buckets = self._scale(unit)
        if not buckets:
            return []
        first, last = min(buckets), max(buckets)
        return [(*self.bucket_bounds(i), buckets.get(i, 0)) for i in range(first, last + 1)]

    def render(self, unit: str | None = None) -> str:
        """The funclatency table, leading empty buckets left out, then avg/total/count."""
        name, divisor, _ = self._scale(unit)
        rows = self.buckets(name)
        if not rows:
            return f"{'':5}{name:<19} : no data\n"
        wide = len(str(rows[-1][1])) > 10
        width = 20 if wide else 10
        header = f"{'':15}{name:<29}" if wide else f"{'':5}{name:<19}"
        lines = [f"{header} : count     distribution"]
        peak = max(n for _, _, n in rows)
        for lo, hi, n in rows:
            stars = 0 if n == 0 else max(1, n * BAR_WIDTH // peak)
            bar = "*" * stars
            lines.append(f"{lo:>{width}} -> {hi:<{width}} : {n:<8} |{bar:<{BAR_WIDTH}}|")
        avg = _amount(self.total / self.count / divisor)
        total = int_text(self.total) if divisor == 1 else _amount(self.total / divisor)
        lines.append(f"avg = {avg} {name}, total = {total} {name}, count = {self.count}")
        return "\n".join(lines) + "\n"


def _amount(x: float) -> str:
    """A mean or total with three significant digits at least: 1200.0, 12.3, 4.00, 0.0123
    (not ``0.0`` for a sub-unit average)."""
    if x >= 10 or x <= 0:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.{min(9, 2 - math.floor(math.log10(x)))}f}"


# -- linear histogram --------------------------------------------------------------------

#: The most buckets a linear histogram has between MIN and MAX (bpftrace's lhist limit).
LHIST_MAX_BUCKETS = 1000
#: Linear histograms count values in [-LHIST_LIMIT, LHIST_LIMIT) (64-bit, as the C core).
LHIST_LIMIT = 1 << 63
#: MIN and MAX of a linear histogram are within +-LHIST_BOUND.
LHIST_BOUND = 1 << 62
LHIST_BAR_WIDTH = 52


def check_linear(lo: object, hi: object, step: object) -> tuple[int, int, int]:
    """``(lo, hi, step)`` of a linear histogram, or ValueError saying what is wrong."""
    if not all(type(v) is int for v in (lo, hi, step)):
        raise ValueError(f"MIN, MAX and STEP are ints, not {lo!r}, {hi!r}, {step!r}")
    assert isinstance(lo, int) and isinstance(hi, int) and isinstance(step, int)
    if step <= 0:
        raise ValueError(f"STEP must be positive, not {step}")
    if not lo < hi:
        raise ValueError(f"MIN must be below MAX, not {lo} and {hi}")
    if max(abs(lo), abs(hi)) > LHIST_BOUND:
        raise ValueError(f"MIN and MAX must be within +-{LHIST_BOUND}")
    if (hi - lo) % step:
        up = lo + -(-(hi - lo) // step) * step
        raise ValueError(
            f"MAX - MIN ({hi - lo}) must be a multiple of STEP ({step}): e.g. MAX {up}"
        )
    if (hi - lo) // step > LHIST_MAX_BUCKETS:
        raise ValueError(
            f"(MAX - MIN) / STEP is {(hi - lo) // step} buckets; at most {LHIST_MAX_BUCKETS}"
        )
    return lo, hi, step


def linear_bucket(value: int, lo: int, hi: int, step: int) -> int:
    """The bucket of an int: 0 below ``lo``, ``1 + (value - lo) // step`` up to ``hi``,
    ``(hi - lo) // step + 1`` at or above ``hi`` (bpftrace's lhist buckets)."""
    if value < lo:
        return 0
    if value >= hi:
        return (hi - lo) // step + 1
    return 1 + (value - lo) // step


def linear_value(value: object) -> int | None:
    """The int a linear histogram counts for a value: an int (not a bool), or the floor of a
    finite float, in [-2**63, 2**63); None for anything else."""
    if type(value) is float:
        if not math.isfinite(value):
            return None
        value = math.floor(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if -LHIST_LIMIT <= value < LHIST_LIMIT else None


class LinearHistogram:
    """Counts of ints in buckets of width ``step`` from ``lo`` to ``hi``, plus one below
    ``lo`` and one at or above ``hi``, printed as bpftrace prints ``lhist()``.

    Bucket 0 holds values below ``lo``, bucket ``k`` (1 to n = (hi - lo) / step) holds
    ``[lo + (k-1)*step, lo + k*step)``, bucket n + 1 values at or above ``hi``. ``unit``
    is ``nsecs`` for durations (shown in the largest of nsecs, usecs, msecs that divides
    lo, hi and step) or ``value``. Not thread-safe.
    """

    __slots__ = ("_buckets", "count", "hi", "lo", "step", "total", "unit")

    def __init__(self, lo: int, hi: int, step: int, unit: str = "value") -> None:
        self.lo, self.hi, self.step = check_linear(lo, hi, step)
        self.unit = unit
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0

    @property
    def nbuckets(self) -> int:
        """How many buckets lie between ``lo`` and ``hi``."""
        return (self.hi - self.lo) // self.step

    @property
    def bounds(self) -> tuple[int, int, int]:
        """``(lo, hi, step)``."""
        return self.lo, self.hi, self.step

    def add(self, value: int) -> None:
        """Count one int; TypeError unless an int, ValueError outside [-2**63, 2**63)."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"a linear histogram counts ints, not {type(value).__name__}")
        if not -LHIST_LIMIT <= value < LHIST_LIMIT:
            raise ValueError(f"a linear histogram counts 64-bit ints, got {value}")
        i = linear_bucket(value, self.lo, self.hi, self.step)
        self._buckets[i] = self._buckets.get(i, 0) + 1
        self.count += 1
        self.total += value

    @property
    def mean(self) -> float | None:
        """Mean value, None when empty."""
        return self.total / self.count if self.count else None

    @classmethod
    def from_buckets(
        cls,
        bounds: tuple[int, int, int],
        unit: str,
        buckets: Mapping[int, int],
        count: int,
        total: int,
    ) -> LinearHistogram:
        """A histogram of values already bucketed (by a probe program)."""
        new = cls(*bounds, unit=unit)
        last = new.nbuckets + 1
        if any(not 0 <= i <= last for i in buckets):
            raise ValueError(f"a linear histogram's buckets are 0 to {last}")
        new._buckets = {i: n for i, n in buckets.items() if n}
        new.count, new.total = count, total
        return new

    def counts(self) -> dict[int, int]:
        """``{bucket index: count}`` of the non-empty buckets."""
        return dict(self._buckets)

    def copy(self) -> LinearHistogram:
        """An independent copy."""
        new = LinearHistogram(self.lo, self.hi, self.step, self.unit)
        new._buckets = dict(self._buckets)
        new.count, new.total = self.count, self.total
        return new

    def merge(self, other: LinearHistogram) -> LinearHistogram:
        """A new histogram holding the values of both; neither input changes."""
        if (other.bounds, other.unit) != (self.bounds, self.unit):
            raise ValueError(
                f"cannot merge a linear histogram of {self.bounds} {self.unit}"
                f" with one of {other.bounds} {other.unit}"
            )
        new = self.copy()
        for i, n in other._buckets.items():
            new._buckets[i] = new._buckets.get(i, 0) + n
        new.count += other.count
        new.total += other.total
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LinearHistogram):
            return NotImplemented
        return (self.bounds, self.unit, self.count, self.total, self._buckets) == (
            other.bounds,
            other.unit,
            other.count,
            other.total,
            other._buckets,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"LinearHistogram({self.lo}, {self.hi}, {self.step}, unit={self.unit!r},"
            f" count={self.count}, total={self.total})"
        )

    def display_unit(self) -> tuple[str, int]:
        """The unit the table is shown in, and its divisor: for durations the largest of
        nsecs, usecs and msecs that divides lo, hi and step (so every label is exact)."""
        if self.unit != TIME_UNITS[0][0]:
            return self.unit, 1
        for name, divisor in reversed(TIME_UNITS):
            if not (self.lo % divisor or self.hi % divisor or self.step % divisor):
                return name, divisor
        return TIME_UNITS[0]

    def buckets(self) -> list[tuple[int | None, int | None, int]]:
        """``(low, high, count)`` rows (``low`` inclusive, ``high`` exclusive; None for no
        bound) from the first non-empty bucket to the last."""
        if not self._buckets:
            return []
        last = self.nbuckets + 1
        rows: list[tuple[int | None, int | None, int]] = []
        for i in range(min(self._buckets), max(self._buckets) + 1):
            low = None if i == 0 else self.hi if i == last else self.lo + (i - 1) * self.step
            high = self.lo if i == 0 else None if i == last else self.lo + i * self.step
            rows.append((low, high, self._buckets.get(i, 0)))
        return rows

    def render(self) -> str:
        """bpftrace's lhist table, in ``display_unit()``: ``[0, 10)  12 |@@@@  |`` rows from
        the first non-empty bucket to the last, ``(..., MIN)`` and ``[MAX, ...)`` at the
        ends; nothing when empty."""
        _, divisor = self.display_unit()
        step = self.step // divisor
        rows = self.buckets()
        peak = max((n for _, _, n in rows), default=0)
        out = []
        for low, high, n in rows:
            if low is None:
                assert high is not None
                head = f"(..., {_lhist_label(high // divisor, step)})"
            elif high is None:
                head = f"[{_lhist_label(low // divisor, step)}, ...)"
            else:
                head = (
                    f"[{_lhist_label(low // divisor, step)}, {_lhist_label(high // divisor, step)})"
                )
            bar = "@" * _bar_width(n, peak)
            out.append(f"{head:<16}{n:>8} |{bar:<{LHIST_BAR_WIDTH}}|\n")
        return "".join(out)


def _f32(x: float) -> float:
    return float(struct.unpack("f", struct.pack("f", x))[0])


def _bar_width(n: int, peak: int) -> int:
    """bpftrace's bar: ``n / (float)peak * 52`` in C float arithmetic, truncated."""
    return int(_f32(_f32(_f32(float(n)) / _f32(float(peak))) * LHIST_BAR_WIDTH))


def _lhist_label(number: int, step: int) -> str:
    """A bucket bound as bpftrace writes it: with K or M (powers of 1024) only when the step
    is a multiple of 1024."""
    if step % 1024 or number == 0:
        return str(number)
    if number % (1 << 20) == 0:
        return f"{number >> 20}M"
    if number % 1024 == 0:
        return f"{number >> 10}K"
    return str(number)


# -- counts by key -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerKey:
    """A list or dict used as a key, held as its canonical (sorted-keys) JSON text."""

    json: str

    def __str__(self) -> str:
        return self.json


_NAN = float("nan")


def canonical_key(value: object) -> Hashable:
    """A hashable key for a captured value: containers become canonical JSON, NaNs one key."""
    if isinstance(value, float) and math.isnan(value):
        return _NAN  # NaN != NaN: one shared object makes every NaN the same dict key
    if isinstance(value, list | tuple | Mapping):
        return ContainerKey(dumps(value, separators=READABLE, sort_keys=True))
    try:
        hash(value)
    except Exception:
        return ContainerKey(safe_repr(value))
    return value


def key_text(key: Hashable) -> str:
    """How a key is shown: strings repr-quoted, containers as JSON; terminal-safe (the
    values come from the program)."""
    return terminal_safe(key.json if isinstance(key, ContainerKey) else format_value(key), None)


class CountBy:
    """Counts per key, most frequent first, as bpftrace's ``@[key]: count``; not thread-safe."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[Hashable, int] = {}

    def add(self, key: object, n: int = 1) -> None:
        """Count ``key`` (any captured value) ``n`` times."""
        k = canonical_key(key)
        self._counts[k] = self._counts.get(k, 0) + n

    def __getitem__(self, key: object) -> int:
        return self._counts.get(canonical_key(key), 0)

    def __len__(self) -> int:
        return len(self._counts)

    @property
    def total(self) -> int:
        """Sum of all counts."""
        return sum(self._counts.values())

    def most_common(self) -> list[tuple[Hashable, int]]:
        """``(key, count)`` by count descending, then by the key's text."""
        return sorted(self._counts.items(), key=lambda kv: (-kv[1], key_text(kv[0])))

    def copy(self) -> CountBy:
        """An independent copy."""
        new = CountBy()
        new._counts = dict(self._counts)
        return new

    def merge(self, other: CountBy) -> CountBy:
        """A new CountBy with the counts of both added; neither input changes."""
        new = self.copy()
        for k, n in other._counts.items():
            new._counts[k] = new._counts.get(k, 0) + n
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CountBy):
            return NotImplemented
        return self._counts == other._counts

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CountBy({dict(self.most_common())!r})"

    def render(self, name: str = "") -> str:
        """``@name[key]: count`` lines, most frequent first."""
        if not self._counts:
            return f"@{name}: no data\n"
        return "".join(f"@{name}[{key_text(k)}]: {n}\n" for k, n in self.most_common())


# -- summary statistics ------------------------------------------------------------------


def _plain_number(x: float) -> str:
    return int_text(x) if isinstance(x, int) else f"{x:.6g}"


class Stats:
    """count, sum, min, max, mean and quantiles of numbers, in bounded memory, mergeable.

    count, min and max are exact; sum is exact for ints (float arithmetic otherwise).
    Quantiles come from a log-bucketed sketch (DDSketch): values are counted in
    buckets (g**(k-1), g**k] with g = (1+a)/(1-a), and each estimate is within relative
    error ``a`` (``relative_accuracy``, default 1 %) of the exact lower quantile,
    ``sorted(values)[floor(q * (n - 1))]``. Memory is one counter per occupied bucket:
    ln(max/min)/ln(g) + 1 per sign, e.g. about 810 for values from 1 us to 10 s.
    Not thread-safe; merge() returns a new Stats.
    """

    __slots__ = (
        "_gamma",
        "_log_gamma",
        "_neg",
        "_pos",
        "_zeros",
        "count",
        "max",
        "min",
        "relative_accuracy",
        "sum",
    )

    def __init__(self, relative_accuracy: float = 0.01) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy}")
        self.relative_accuracy = relative_accuracy
        self._gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self._pos: dict[int, int] = {}
        self._neg: dict[int, int] = {}
        self._zeros = 0
        self.count = 0
        self.sum: int | float = 0
        self.min: int | float | None = None
        self.max: int | float | None = None

    def _index(self, magnitude: float) -> int:
        return math.ceil(math.log(magnitude) / self._log_gamma)

    def _value(self, index: int) -> float:
        try:
            return 2 * self._gamma**index / (self._gamma + 1)
        except OverflowError:
            return math.inf

    def add(self, value: float) -> None:
        """Count one finite number; TypeError/ValueError for anything else."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"stats take numbers, not {type(value).__name__}")
        try:
            as_float = float(value)
        except OverflowError:
            raise ValueError("number too large for stats") from None
        if not math.isfinite(as_float):
            raise ValueError(f"stats take finite numbers, got {value}")
        if as_float > 0:
            k = self._index(value)
            self._pos[k] = self._pos.get(k, 0) + 1
        elif as_float < 0:
            k = self._index(-value)
            self._neg[k] = self._neg.get(k, 0) + 1
        else:
            self._zeros += 1
        self.count += 1
        self.sum += value
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    @property
    def mean(self) -> float | None:
        """Exact mean (up to float rounding), None when empty."""
        return self.sum / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (0 <= q <= 1) within ``relative_accuracy``; None when empty."""
        if not 0 <= q <= 1:
            raise ValueError(f"a quantile is between 0 and 1, got {q}")
        if self.min is None or self.max is None:
            return None
        rank = math.floor(q * (self.count - 1))
        seen = 0
        estimate: float | None = None
        for k in sorted(self._neg, reverse=True):
            seen += self._neg[k]
            if seen > rank:
                estimate = -self._value(k)
                break
        if estimate is None:
            seen += self._zeros
            if seen > rank:
                estimate = 0.0
        if estimate is None:
            for k in sorted(self._pos):
                seen += self._pos[k]
                if seen > rank:
                    estimate = self._value(k)
                    break
        if estimate is None:
            return float(self.max)
        # The true quantile lies in [min, max], so clamping only brings it closer.
        return float(min(max(estimate, self.min), self.max))

    @property
    def p50(self) -> float | None:
        """Median estimate."""
        return self.quantile(0.5)

    @property
    def p90(self) -> float | None:
        """90th percentile estimate."""
        return self.quantile(0.9)

    @property
    def p99(self) -> float | None:
        """99th percentile estimate."""
        return self.quantile(0.99)

    @classmethod
    def from_parts(
        cls,
        *,
        count: int,
        sum: int | float,
        min: int | float | None,
        max: int | float | None,
        zeros: int,
        pos: dict[int, int],
        neg: dict[int, int],
        relative_accuracy: float = 0.01,
    ) -> Stats:
        """Stats gathered elsewhere (a probe program in the core) with the same sketch."""
        new = cls(relative_accuracy)
        new._pos, new._neg, new._zeros = dict(pos), dict(neg), zeros
        new.count, new.sum, new.min, new.max = count, sum, min, max
        return new

    def copy(self) -> Stats:
        """An independent copy."""
        new = Stats(self.relative_accuracy)
        new._pos, new._neg, new._zeros = dict(self._pos), dict(self._neg), self._zeros
        new.count, new.sum, new.min, new.max = self.count, self.sum, self.min, self.max
        return new

    def merge(self, other: Stats) -> Stats:
        """A new Stats holding the values of both; neither input changes."""
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError("cannot merge stats kept with different relative accuracy")
        new = self.copy()
        for mine, theirs in ((new._pos, other._pos), (new._neg, other._neg)):
            for k, n in theirs.items():
                mine[k] = mine.get(k, 0) + n
        new._zeros += other._zeros
        new.count += other.count
        new.sum += other.sum
        if other.min is not None and (new.min is None or other.min < new.min):
            new.min = other.min
        if other.max is not None and (new.max is None or other.max > new.max):
            new.max = other.max
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Stats):
            return NotImplemented
        return (
            self.relative_accuracy,
            self.count,
            self.sum,
            self.min,
            self.max,
            self._zeros,
            self._pos,
            self._neg,
        ) == (
            other.relative_accuracy,
            other.count,
            other.sum,
            other.min,
            other.max,
            other._zeros,
            other._pos,
            other._neg,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Stats(count={self.count}, sum={self.sum}, min={self.min}, max={self.max})"

    def render(self, fmt: Callable[[float], str] | None = None) -> str:
        """One line ``count=.. sum=.. min=.. max=.. mean=.. p50=.. p90=.. p99=..``."""
        show = fmt or _plain_number
        if self.count == 0:
            return "count=0 (no data)\n"
        values = {
            "sum": self.sum,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
        }
        parts = [f"count={self.count}"]
        parts += [f"{name}={show(v)}" for name, v in values.items() if v is not None]
        return " ".join(parts) + "\n"


# -- the aggregator ----------------------------------------------------------------------


class _Missing:
    """The field is absent from this event (not the same as a None value)."""


MISSING = _Missing()


def field_value(event: Event, name: str) -> object:
    """The value of field ``name`` in ``event``, or MISSING.

    A fetch arg of that name wins; else ``$duration`` is duration_ns, ``$retval`` and
    ``$exception`` come from a return event, ``$thread`` is the thread name,
    ``$location`` where the event fired, ``$function`` the probed function
    (``module:qualname``) and ``$probe`` the probe's own text.
    """
    args = event.args
    if name in args:
        return args[name]
    if name == DURATION_FIELD:
        return MISSING if event.duration_ns is None else event.duration_ns
    if event.kind == RETURN and name == "$retval":
        return event.retval
    if event.kind == RETURN and name == "$exception":
        return event.exception
    if name == "$thread":
        return event.thread_name
    if name == "$location":
        return event.location
    if name == "$function":
        return function_of(event.probe)
    if name == "$probe":
        return event.probe
    return MISSING


def _as_hist_value(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value >= 0:
        return int(value)
    return None


def _as_number(value: object) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        finite = math.isfinite(value)
    except OverflowError:
        return None
    return value if finite else None


@dataclass(frozen=True, slots=True)
class AggregatorConfig:
    """What to aggregate per probe event; fields are fetch-arg names or ``$`` specials."""

    hist_field: str | None = None
    count: bool = False
    by_field: str | None = None
    stats_field: str | None = None
    hist_unit: str | None = None  # nsecs/usecs/msecs for a $duration histogram; None: auto
    #: --lhist FIELD,MIN,MAX,STEP: a linear histogram of FIELD, bounds (MIN, MAX, STEP).
    lhist_field: str | None = None
    lhist_bounds: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if (self.lhist_field is None) != (self.lhist_bounds is None):
            raise ValueError("a linear histogram needs both a field and its bounds")
        if self.lhist_bounds is not None:
            check_linear(*self.lhist_bounds)
        if self.lhist_field is not None and self.hist_field is not None:
            raise ValueError("a log2 and a linear histogram cannot be asked at once")

    @property
    def histogram_field(self) -> str | None:
        """The field of the histogram, log2 or linear (one at most)."""
        return self.hist_field if self.hist_field is not None else self.lhist_field


@dataclass(slots=True)
class EventAggregates:
    """The aggregations of one probe event; each is created with its first value."""

    event: str
    hits: int = 0
    by: CountBy | None = None
    hist: Log2Histogram | None = None
    stats: Stats | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    #: With --by and --hist: one histogram per key (bpftrace's ``@[probefunc] = hist()``).
    hist_by: dict[Hashable, Log2Histogram] = field(default_factory=dict)
    lhist: LinearHistogram | None = None
    #: With --by and --lhist: one linear histogram per key.
    lhist_by: dict[Hashable, LinearHistogram] = field(default_factory=dict)

    def merge(self, other: EventAggregates) -> EventAggregates:
        """A new EventAggregates with both added up; neither input changes."""
        skipped = dict(self.skipped)
        for name, n in other.skipped.items():
            skipped[name] = skipped.get(name, 0) + n
        hist_by = {k: h.copy() for k, h in self.hist_by.items()}
        for k, h in other.hist_by.items():
            hist_by[k] = hist_by[k].merge(h) if k in hist_by else h.copy()
        lhist_by = {k: h.copy() for k, h in self.lhist_by.items()}
        for k, lh in other.lhist_by.items():
            lhist_by[k] = lhist_by[k].merge(lh) if k in lhist_by else lh.copy()
        return EventAggregates(
            event=self.event,
            hits=self.hits + other.hits,
            by=_merged(self.by, other.by),
            hist=_merged(self.hist, other.hist),
            stats=_merged(self.stats, other.stats),
            skipped=skipped,
            hist_by=hist_by,
            lhist=_merged(self.lhist, other.lhist),
            lhist_by=lhist_by,
        )

    def copy(self) -> EventAggregates:
        """An independent copy."""
        return self.merge(EventAggregates(self.event))

    def render(self, config: AggregatorConfig) -> str:
        """This event's aggregations as text, in a fixed order."""
        out: list[str] = []
        event = terminal_safe(self.event, 256)  # an attached process names its events
        if config.count:
            out.append(f"@{event}: {self.hits}\n")
        if self.by is not None:
            out.append(self.by.render(event))
        if self.hist is not None:
            out.append(f"{event} {config.hist_field}:\n{self.hist.render(config.hist_unit)}")
        if self.hist_by and self.by is not None:
            for key, _ in self.by.most_common():
                hist = self.hist_by.get(key)
                if hist is not None:
                    head = f"{event}[{key_text(key)}] {config.hist_field}:"
                    out.append(f"{head}\n{hist.render(config.hist_unit)}")
        if self.lhist is not None and self.lhist.count:
            out.append(f"{event} {_lhist_title(config, self.lhist)}:\n{self.lhist.render()}")
        if self.lhist_by and self.by is not None:
            for key, _ in self.by.most_common():
                lhist = self.lhist_by.get(key)
                if lhist is not None and lhist.count:
                    head = f"{event}[{key_text(key)}] {_lhist_title(config, lhist)}:"
                    out.append(f"{head}\n{lhist.render()}")
        if self.stats is not None:
            fmt = format_duration if config.stats_field == DURATION_FIELD else None
            out.append(f"{event} {config.stats_field}: {self.stats.render(fmt)}")
        for name, n in sorted(self.skipped.items()):
            out.append(f"{event}: {n} {name} value{'' if n == 1 else 's'} skipped (not numeric)\n")
        return "".join(out)


def _lhist_title(config: AggregatorConfig, hist: LinearHistogram) -> str:
    unit, _ = hist.display_unit()
    return f"{config.lhist_field}" + (f" ({unit})" if hist.unit != "value" else "")


def _merged[T: (CountBy, Log2Histogram, LinearHistogram, Stats)](
    a: T | None, b: T | None
) -> T | None:
    if a is None:
        return None if b is None else b.copy()
    return a.copy() if b is None else a.merge(b)


class Aggregator:
    """Per probe event: a hit count, counts by a field, a log2 histogram, stats of a field.

    One of these is fed from probe threads (or the writer thread): be careful. add()
    may run on any thread; its lock is held only for the O(1) updates of one event's
    aggregations, never for rendering or I/O, and makes snapshot_and_reset() (an O(1)
    swap) see every add() whole. render() and merge() read without the lock: use them
    on a snapshot, or once nothing feeds this aggregator any more.

    Events without the configured field are ignored for it (an entry event has no
    ``$duration``); values present but not numbers, or negative for the histogram,
    are counted as skipped per field and never raise.
    """

    def __init__(
        self,
        *,
        hist_field: str | None = None,
        count: bool = False,
        by_field: str | None = None,
        stats_field: str | None = None,
        hist_unit: str | None = None,
        lhist_field: str | None = None,
        lhist_bounds: tuple[int, int, int] | None = None,
    ) -> None:
        self.config = AggregatorConfig(
            hist_field, count, by_field, stats_field, hist_unit, lhist_field, lhist_bounds
        )
        self._lock = threading.Lock()
        self._per_event: dict[str, EventAggregates] = {}

    @classmethod
    def from_config(cls, config: AggregatorConfig) -> Aggregator:
        """An empty aggregator with this configuration."""
        return cls(
            hist_field=config.hist_field,
            count=config.count,
            by_field=config.by_field,
            stats_field=config.stats_field,
            hist_unit=config.hist_unit,
            lhist_field=config.lhist_field,
            lhist_bounds=config.lhist_bounds,
        )

    def add(self, event: Event) -> None:
        """Aggregate one event's configured fields."""
        config = self.config
        by_value: object = MISSING
        hist_value: int | None = None
        lhist_value: int | None = None
        stats_value: int | float | None = None
        skipped: list[str] = []
        if config.by_field is not None:
            by_value = field_value(event, config.by_field)
        if config.hist_field is not None:
            raw = field_value(event, config.hist_field)
            if raw is not MISSING:
                hist_value = _as_hist_value(raw)
                if hist_value is None:
                    skipped.append(config.hist_field)
        if config.lhist_field is not None:
            raw = field_value(event, config.lhist_field)
            if raw is not MISSING:
                lhist_value = linear_value(raw)
                if lhist_value is None:
                    skipped.append(config.lhist_field)
        if config.stats_field is not None:
            raw = field_value(event, config.stats_field)
            if raw is not MISSING:
                stats_value = _as_number(raw)
                if stats_value is None and config.stats_field not in skipped:
                    skipped.append(config.stats_field)
        nothing = (
            by_value is MISSING and hist_value is None and lhist_value is None
        ) and stats_value is None
        if nothing and not skipped and not config.count:
            return
        by_key = None if by_value is MISSING else canonical_key(by_value)
        hist_unit = "nsecs" if config.histogram_field == DURATION_FIELD else "value"
        with self._lock:
            agg = self._per_event.get(event.event)
            if agg is None:
                agg = self._per_event[event.event] = EventAggregates(event.event)
            agg.hits += 1
            if by_value is not MISSING:
                if agg.by is None:
                    agg.by = CountBy()
                agg.by.add(by_key)
            if hist_value is not None:
                if config.by_field is None:
                    if agg.hist is None:
                        agg.hist = Log2Histogram(hist_unit)
                    agg.hist.add(hist_value)
                elif by_value is not MISSING:
                    hist = agg.hist_by.get(by_key)
                    if hist is None:
                        hist = agg.hist_by[by_key] = Log2Histogram(hist_unit)
                    hist.add(hist_value)
            if lhist_value is not None:
                bounds = config.lhist_bounds
                assert bounds is not None
                if config.by_field is None:
                    if agg.lhist is None:
                        agg.lhist = LinearHistogram(*bounds, unit=hist_unit)
                    agg.lhist.add(lhist_value)
                elif by_value is not MISSING:
                    lhist = agg.lhist_by.get(by_key)
                    if lhist is None:
                        lhist = agg.lhist_by[by_key] = LinearHistogram(*bounds, unit=hist_unit)
                    lhist.add(lhist_value)
            if stats_value is not None:
                if agg.stats is None:
                    agg.stats = Stats()
                agg.stats.add(stats_value)
            for name in skipped:
                agg.skipped[name] = agg.skipped.get(name, 0) + 1

    def add_totals(
        self,
        event: str,
        rows: list[tuple[object, int, tuple[dict[int, int], ...], int, int, int]],
        *,
        keyed: bool,
        hist_unit: str,
        stats: tuple[Stats, int] | None = None,
    ) -> None:
        """Aggregate what a probe program gathered for ``event``, as add() would its events.

        Each row is ``(key, hits, hist buckets per unit, total, max, skipped)``: ``key`` is
        the --by value (when ``keyed``), and hits that had no histogram value are skipped.
        ``stats`` are the --stats of every row, and how many hits had no number for them.
        """
        config = self.config
        rows = [r for r in rows if r[1] and (config.count or keyed or r[2] or stats)]
        if not rows:
            return
        with self._lock:
            agg = self._per_event.get(event)
            if agg is None:
                agg = self._per_event[event] = EventAggregates(event)
            if stats is not None:
                got, skipped_stats = stats
                if got.count:
                    agg.stats = got if agg.stats is None else agg.stats.merge(got)
                name = config.stats_field
                if skipped_stats and name is not None and name != config.histogram_field:
                    agg.skipped[name] = agg.skipped.get(name, 0) + skipped_stats
            for key, hits, buckets, total, high, skipped in rows:
                agg.hits += hits
                if keyed:
                    if agg.by is None:
                        agg.by = CountBy()
                    agg.by.add(key, hits)
                counted = hits - skipped
                wanted = buckets and counted and (keyed or config.by_field is None)
                if wanted and config.lhist_bounds is not None:
                    self._add_linear(agg, key, keyed, buckets[0], counted, total, hist_unit)
                elif wanted:
                    hist = Log2Histogram.from_buckets(hist_unit, buckets, counted, total, high)
                    if not keyed:
                        agg.hist = hist if agg.hist is None else agg.hist.merge(hist)
                    else:  # one histogram per key, as add() keeps them
                        ck = canonical_key(key)
                        mine = agg.hist_by.get(ck)
                        agg.hist_by[ck] = hist if mine is None else mine.merge(hist)
                name = config.histogram_field
                if skipped and name is not None:
                    agg.skipped[name] = agg.skipped.get(name, 0) + skipped

    def _add_linear(
        self,
        agg: EventAggregates,
        key: object,
        keyed: bool,
        buckets: dict[int, int],
        counted: int,
        total: int,
        unit: str,
    ) -> None:
        """One row's linear histogram into ``agg`` (its lock held)."""
        bounds = self.config.lhist_bounds
        assert bounds is not None
        hist = LinearHistogram.from_buckets(bounds, unit, buckets, counted, total)
        if not keyed:
            agg.lhist = hist if agg.lhist is None else agg.lhist.merge(hist)
        else:
            ck = canonical_key(key)
            mine = agg.lhist_by.get(ck)
            agg.lhist_by[ck] = hist if mine is None else mine.merge(hist)

    def put(self, aggregates: EventAggregates) -> None:
        """Add one event's aggregations gathered elsewhere (an attached process's agent)."""
        with self._lock:
            mine = self._per_event.get(aggregates.event)
            self._per_event[aggregates.event] = (
                aggregates if mine is None else mine.merge(aggregates)
            )

    def absorb(self, other: Aggregator) -> None:
        """Add everything ``other`` holds (it must not be fed any more)."""
        for name in other.events:
            got = other.get(name)
            if got is not None:
                self.put(got)

    def snapshot_and_reset(self) -> Aggregator:
        """What was aggregated so far, as a new Aggregator; this one starts over (--interval)."""
        with self._lock:
            taken, self._per_event = self._per_event, {}
        snapshot = Aggregator.from_config(self.config)
        snapshot._per_event = taken
        return snapshot

    def snapshot(self) -> Aggregator:
        """What was aggregated so far, as a new independent Aggregator; this one is unchanged
        and keeps counting (cumulative readers such as ``/metrics``).

        The lock is held for short pieces of the copy, so an add() on a probed thread never
        waits for a whole large aggregation: per event, its hits, counts by key, histogram
        and stats at once (they agree), then its per-key histograms SNAPSHOT_CHUNK at a time
        (each whole; keys first seen meanwhile are in the next snapshot).
        """
        snapshot = Aggregator.from_config(self.config)
        with self._lock:
            names = list(self._per_event)
        for name in names:
            with self._lock:
                agg = self._per_event.get(name)
                if agg is None:
                    continue
                copy = EventAggregates(
                    agg.event,
                    agg.hits,
                    by=None if agg.by is None else agg.by.copy(),
                    hist=None if agg.hist is None else agg.hist.copy(),
                    stats=None if agg.stats is None else agg.stats.copy(),
                    skipped=dict(agg.skipped),
                    lhist=None if agg.lhist is None else agg.lhist.copy(),
                )
                keys = list(agg.hist_by)
                lkeys = list(agg.lhist_by)
            for i in range(0, len(keys), SNAPSHOT_CHUNK):
                with self._lock:
                    for k in keys[i : i + SNAPSHOT_CHUNK]:
                        hist = agg.hist_by.get(k)
                        if hist is not None:
                            copy.hist_by[k] = hist.copy()
            for i in range(0, len(lkeys), SNAPSHOT_CHUNK):
                with self._lock:
                    for k in lkeys[i : i + SNAPSHOT_CHUNK]:
                        lhist = agg.lhist_by.get(k)
                        if lhist is not None:
                            copy.lhist_by[k] = lhist.copy()
            snapshot._per_event[name] = copy
        return snapshot

    @property
    def events(self) -> list[str]:
        """The event names seen, sorted."""
        return sorted(self._per_event)

    def get(self, event: str) -> EventAggregates | None:
        """The aggregations of one event name, if it was seen."""
        return self._per_event.get(event)

    def merge(self, other: Aggregator) -> Aggregator:
        """A new Aggregator holding both (same configuration required); inputs unchanged."""
        if other.config != self.config:
            raise ValueError(f"cannot merge aggregators of {self.config} and {other.config}")
        merged = Aggregator.from_config(self.config)
        for name in self._per_event.keys() | other._per_event.keys():
            mine, theirs = self._per_event.get(name), other._per_event.get(name)
            if mine is None:
                assert theirs is not None
                merged._per_event[name] = theirs.copy()
            else:
                merged._per_event[name] = mine.copy() if theirs is None else mine.merge(theirs)
        return merged

    def render(self) -> str:
        """Every event's aggregations, events sorted by name, blocks separated by a blank line."""
        if not self._per_event:
            return "(no events)\n"
        blocks = [self._per_event[name].render(self.config) for name in sorted(self._per_event)]
        return "\n".join(b for b in blocks if b)
