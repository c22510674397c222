"""Bounded-memory summaries of a stream: quantiles, counts over time, counts by kind, top items.

Each holds at most a fixed number of entries whatever the number of rows fed, so a report of a
million rows (or a dashboard that runs for weeks) stays small. What they give up is named on each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

__all__ = ["Example", "Group", "Groups", "LogHistogram", "TimeBuckets", "TopItems"]

T = TypeVar("T")


class LogHistogram:
    """Quantiles of non-negative values within a relative error (DDSketch's log buckets).

    A value ``v`` falls in bucket ``ceil(log(v) / log(gamma))``; a quantile is read back as the
    middle of its bucket, within ``relative_error`` of the true value. Values below ``floor`` are
    counted as 0. From 1 ms to a year at 1 %, that is at most 1,300 buckets, usually far fewer.
    """

    __slots__ = ("_per_log", "buckets", "count", "floor", "gamma", "max", "zeros")

    def __init__(self, relative_error: float = 0.01, *, floor: float = 0.001) -> None:
        self.gamma = (1 + relative_error) / (1 - relative_error)
        self._per_log = 1 / math.log(self.gamma)
        self.floor = floor
        self.buckets: dict[int, int] = {}
        self.zeros = 0
        self.count = 0
        self.max = 0.0

    def add(self, value: float) -> None:
        """Count one value (a negative one, from clock skew, counts as 0)."""
        self.count += 1
        if value > self.max:
            self.max = value
        if value < self.floor:
            self.zeros += 1
            return
        key = math.ceil(math.log(value) * self._per_log)
        buckets = self.buckets
        buckets[key] = buckets.get(key, 0) + 1

    def _value(self, key: int) -> float:
        return 2 * self.gamma**key / (self.gamma + 1)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0–1), by nearest rank: the smallest value with at least a share
        ``q`` of the values at or below it (``max`` for 1); None when empty."""
        if not self.count:
            return None
        if q >= 1:
            return self.max
        target = max(1, math.ceil(q * self.count - 1e-9))
        seen = self.zeros
        if seen >= target:
            return 0.0
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen >= target:
                return min(self._value(key), self.max)
        return self.max

    def counts_between(self, edges: list[float]) -> list[int]:
        """How many values fall in each ``[edges[i], edges[i + 1])`` (a bucket goes by its middle),
        plus one last count for values at or above the last edge."""
        out = [0] * len(edges)
        out[0] += self.zeros
        for key, n in self.buckets.items():
            value = self._value(key)
            i = 0
            while i + 1 < len(edges) and value >= edges[i + 1]:
                i += 1
            out[i] += n
        return out


# Bucket widths in seconds, each a multiple of the one before: merging buckets into the next
# width is exact, and every width is one a person reads at a glance.
_WIDTHS: Final = (1, 2, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 43200, 86400)


class TimeBuckets:
    """Counts of several series per time interval, at most ``max_buckets`` intervals.

    Intervals are aligned on the epoch (an interval of 60 s starts on the minute). When the
    times fed span more than ``max_buckets`` intervals, the interval grows to the next width (1,
    2, 10, 30 s, 1, 5, 10, 30 min, 1, 2, 6, 12, 24 h, then whole days doubling) and the counts
    are merged, exactly. Times may come in any order.
    """

    def __init__(self, series: int, *, max_buckets: int = 240) -> None:
        self.series = series
        self.max_buckets = max_buckets
        self.width = 1
        self.buckets: dict[int, list[int]] = {}
        self._low: int | None = None
        self._high: int | None = None

    def add(self, t: float, series: int, n: int = 1) -> None:
        """Count ``n`` in ``series`` at Unix time ``t``."""
        key = int(t // self.width)
        counts = self.buckets.get(key)
        if counts is None:
            low = key if self._low is None else min(self._low, key)
            high = key if self._high is None else max(self._high, key)
            if high - low >= self.max_buckets:
                self._widen(high - low)
                self.add(t, series, n)
                return
            self._low, self._high = low, high
            counts = self.buckets[key] = [0] * self.series
        counts[series] += n

    def _next_width(self, width: int | None = None) -> int:
        current = self.width if width is None else width
        for candidate in _WIDTHS:
            if candidate > current:
                return candidate
        return current * 2

    def _widen(self, span: int) -> None:
        """Grow the interval until ``span`` intervals of the old width fit; merge the counts."""
        factor = 1
        while span // factor >= self.max_buckets:
            new_width = self._next_width()
            factor *= new_width // self.width
            self.width = new_width
        merged: dict[int, list[int]] = {}
        for key, counts in self.buckets.items():
            into = merged.get(key // factor)  # floor division: epoch-aligned intervals nest exactly
            if into is None:
                merged[key // factor] = counts
            else:
                for i, n in enumerate(counts):
                    into[i] += n
        self.buckets = merged
        self._low = min(merged) if merged else None
        self._high = max(merged) if merged else None

    def rows(self) -> list[tuple[float, list[int]]]:
        """``(interval start, counts)`` for every interval from the first to the last, empty ones
        included (as zeros), in time order."""
        if self._low is None or self._high is None:
            return []
        zero = [0] * self.series
        return [
            (float(key * self.width), list(self.buckets.get(key, zero)))
            for key in range(self._low, self._high + 1)
        ]

    def window(
        self, start: float, end: float, *, max_points: int
    ) -> tuple[int, list[tuple[float, list[int]]]]:
        """The intervals from ``start`` to ``end`` merged to at most ``max_points`` of a wider
        width (the next widths of the same ladder, so merging stays exact): ``(width, rows)``."""
        width = self.width
        while (end - start) / width >= max_points:
            width = self._next_width(width)
        factor = width // self.width
        merged: dict[int, list[int]] = {}
        for key, counts in self.buckets.items():
            t = key * self.width
            if start <= t <= end:
                into = merged.setdefault(key // factor, [0] * self.series)
                for i, n in enumerate(counts):
                    into[i] += n
        if not merged:
            return width, []
        zero = [0] * self.series
        return width, [(float(k * width), merged.get(k, zero)) for k in range(min(merged), max(merged) + 1)]


@dataclass(frozen=True, slots=True)
class Example:
    """One row that shows a kind: its row number and its text as written."""

    row: int | None
    text: str


@dataclass
class Group:
    """A kind with its count and up to two examples (different texts when the rows have them)."""

    kind: str
    count: int = 0
    examples: list[Example] = field(default_factory=list)
    _spare: Example | None = None

    def shown_examples(self, n: int = 2) -> list[Example]:
        """Up to ``n`` examples, different texts first."""
        extra = [self._spare] if self._spare is not None and len(self.examples) < n else []
        return (self.examples + extra)[:n]


class Groups:
    """Counts by kind with examples, for at most ``capacity`` kinds.

    Once ``capacity`` kinds are counted, rows of a kind not seen yet are counted in
    :attr:`other` (memory stays flat when every row has a kind of its own).
    """

    def __init__(self, capacity: int = 1000, *, examples: int = 2, example_chars: int = 300) -> None:
        self.capacity = capacity
        self.examples = examples
        self.example_chars = example_chars
        self.groups: dict[str, Group] = {}
        self.other = 0

    def add(self, kind: str, row: int | None, text: str) -> None:
        """Count one row of ``kind``; ``text`` is the row's own wording, kept as an example."""
        group = self.groups.get(kind)
        if group is None:
            if len(self.groups) >= self.capacity:
                self.other += 1
                return
            group = self.groups[kind] = Group(kind)
        group.count += 1
        if len(group.examples) < self.examples:
            text = text[: self.example_chars]
            if all(e.text != text for e in group.examples):
                group.examples.append(Example(row, text))
            elif group._spare is None:
                group._spare = Example(row, text)

    @property
    def total(self) -> int:
        return sum(g.count for g in self.groups.values()) + self.other

    def most_common(self, n: int | None = None) -> list[Group]:
        """The ``n`` largest kinds (all when None), largest first, ties by name."""
        ranked = sorted(self.groups.values(), key=lambda g: (-g.count, g.kind))
        return ranked if n is None else ranked[:n]


class TopItems(Generic[T]):
    """The most frequent items of a stream, each with its own statistics, in bounded memory.

    Up to ``capacity`` items are tracked exactly. When one more would not fit, the least frequent
    half is dropped; an item seen again later starts over, and :attr:`error` (the largest count
    ever dropped) bounds how much any count may be missing. While :attr:`error` is 0, counts are
    exact. Frequent items are never dropped, so the top of the list is right.
    """

    def __init__(self, factory: Callable[[], T], *, capacity: int = 1000) -> None:
        self.factory = factory
        self.capacity = capacity
        self.items: dict[str, tuple[list[int], T]] = {}
        """item → ([count], statistics)."""
        self.error = 0
        self.dropped = 0
        """Items dropped (some may have come back)."""

    def get(self, item: str) -> T:
        """Count one occurrence of ``item`` and give its statistics to update."""
        entry = self.items.get(item)
        if entry is None:
            if len(self.items) >= self.capacity:
                self._prune()
            entry = self.items[item] = ([0], self.factory())
        entry[0][0] += 1
        return entry[1]

    def _prune(self) -> None:
        ranked = sorted(self.items.items(), key=lambda kv: -kv[1][0][0])
        keep = self.capacity // 2
        for _item, (count, _stats) in ranked[keep:]:
            self.error = max(self.error, count[0])
        self.dropped += len(ranked) - keep
        self.items = dict(ranked[:keep])

    def most_common(self, n: int) -> list[tuple[str, int, T]]:
        """The ``n`` most frequent items, with their counts and statistics, largest first."""
        ranked = sorted(self.items.items(), key=lambda kv: (-kv[1][0][0], kv[0]))[:n]
        return [(item, count[0], stats) for item, (count, stats) in ranked]
