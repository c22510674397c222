"""Hypothesis strategies for hostile outside input: JSON of any shape, odd text, extreme times."""

from __future__ import annotations

import json
import sys
from typing import Any

from hypothesis import strategies as st

# Text that stresses parsers: controls, separators, surrogate-free astral characters, RTL marks.
odd_text = st.one_of(
    st.text(max_size=20),
    st.text(
        alphabet=st.sampled_from(
            [*"a@. \t\r\n\x00\x0b\x0c\x7f\x85\u2028\u2029", *'\u200d\u202e\ufeff\U0001f600\u00e9:"\\{}']
        ),
        max_size=20,
    ),
)

huge_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, -(2**63), 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, -0.0]),
)

_OFFSET = st.one_of(
    st.sampled_from(["Z", "z", "+14:00", "-14:00", "+23:59", "-23:59", "+24:00", "+00:00", ""]),
    st.builds(
        lambda sign, hh, mm: f"{sign}{hh:02d}:{mm:02d}",
        st.sampled_from("+-"),
        st.integers(0, 99),
        st.integers(0, 99),
    ),
)

rfc3339_like = st.builds(
    lambda y, mo, d, h, mi, s, frac, sep, off: (
        f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{frac}{off}"
    ),
    st.one_of(st.integers(0, 9999), st.sampled_from([1, 9999])),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 61),
    st.sampled_from(["", ".5", ".123456", ".123456789", ".1234567890123"]),
    st.sampled_from(["T", "t", " "]),
    _OFFSET,
)
"""Times in RFC 3339 shape, including impossible dates and offsets that push years 1 and 9999 out."""

extreme_times = st.one_of(
    st.sampled_from(
        [
            "9999-12-31T23:59:59-14:00",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
        ]
    ),
    rfc3339_like,
)


def _nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


deep_nesting = st.builds(_nested, st.integers(0, 1100), st.sampled_from([1, "x", None, {}]))
"""Values nested up to past orjson's limits (254 levels to write, 1024 to read)."""

json_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), huge_numbers, odd_text, extreme_times),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(odd_text, children, max_size=4)
    ),
    max_leaves=12,
)
"""Any JSON value, with leaves chosen to hurt: huge numbers, odd text, extreme times."""


def to_wire(value: Any) -> bytes:
    """``value`` as JSON bytes, as a producer would send it (integers of any size, any depth)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))  # json's encoder recurses once per level
    try:
        return json.dumps(value, ensure_ascii=False).encode()
    finally:
        sys.setrecursionlimit(limit)
