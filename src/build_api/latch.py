"""A one-way event that costs next to nothing until somebody waits on it.

The scheduler keeps several of these per queued job, and an
:class:`asyncio.Event` holds a deque of about 600 bytes from the start,
whether anyone ever waits or not. A :class:`Latch` is set once and stays
set; its waiters are made only when there are some.
"""

from __future__ import annotations

import asyncio


class Latch:
    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """Open the latch: wake every waiter; later waits return at once."""
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)  # cancelled while waiting
