"""A wrapper that keeps a secret string out of reprs, logs and tracebacks.

``Secret`` is deliberately *not* a ``str`` subclass: formatting, concatenation, ``str()`` and
``repr()`` all show ``Secret('****')``, so the only way to get the value is to ask for it by name
with :meth:`Secret.reveal`, at the one place it is needed (the ``X-Auth-Token`` header).
"""

from __future__ import annotations

import hmac
from typing import Any

__all__ = ["Secret"]

_MASK = "Secret('****')"


class Secret:
    """A secret string that never shows itself: ``repr``/``str`` give ``Secret('****')``."""

    __slots__ = ("_value",)

    def __init__(self, value: str | Secret) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError(f"Secret wraps a str, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The secret value. Call it only where the value must leave the process (an auth header)."""
        return self._value

    def __repr__(self) -> str:
        return _MASK

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return _MASK

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant-time comparison: equality checks on secrets should not leak a prefix by timing.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self
