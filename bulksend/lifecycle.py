"""``async with`` for the long-lived parts that open and close: stores, brokers, publishers."""

from __future__ import annotations

from typing import Self

__all__ = ["OpenClose"]


class OpenClose:
    """``async with`` support for anything with ``open()``/``close()``."""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
