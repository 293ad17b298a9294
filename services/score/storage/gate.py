"""A gate for asyncio tasks: many calls at once, or one holder alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Gate:
    """Many calls at once, or one holder alone (a shard swap, a snapshot). A holder waiting
    for the gate holds new calls back until it is done, so it never waits for long. Not
    reentrant: a task inside shared() must not enter it again (a waiting holder would make
    it wait for itself)."""

    def __init__(self) -> None:
        self._calls = 0
        self._swapping = False
        self._changed = asyncio.Condition()

    @property
    def closed(self) -> bool:
        """A holder waits for the gate or holds it: new calls wait."""
        return self._swapping

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        if self._swapping:
            async with self._changed:
                await self._changed.wait_for(lambda: not self._swapping)
        self._calls += 1
        try:
            yield
        finally:
            self._calls -= 1
            if self._swapping:  # the swap waits for the last call in flight
                async with self._changed:
                    self._changed.notify_all()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._swapping)
            self._swapping = True
            await self._changed.wait_for(lambda: self._calls == 0)
        try:
            yield
        finally:
            async with self._changed:
                self._swapping = False
                self._changed.notify_all()
