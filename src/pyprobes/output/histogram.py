"""Histograms of aggregations: log2 (``--hist``, as bpftrace's hist()) and linear (``--lhist``,
as its lhist()); pure and mergeable."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

from pyprobes.output.sanitize import int_text
from pyprobes.output.units import TIME_UNITS

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
