"""Summary statistics of a field (``--stats``): count, sum, min, max, mean and a quantile
sketch; pure and mergeable."""

from __future__ import annotations

import math
from collections.abc import Callable

from pyprobes.output.sanitize import int_text

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
