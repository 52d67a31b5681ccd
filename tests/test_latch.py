"""The latch: a one-way event with no cost until someone waits."""

from __future__ import annotations

import asyncio

from build_api.latch import Latch


async def test_every_waiter_wakes_when_the_latch_is_set() -> None:
    latch = Latch()
    waiters = [asyncio.create_task(latch.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(waiter.done() for waiter in waiters)
    latch.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert latch.is_set()


async def test_a_wait_on_a_set_latch_returns_at_once() -> None:
    latch = Latch()
    latch.set()
    latch.set()  # setting twice is harmless
    await asyncio.wait_for(latch.wait(), 0.1)


async def test_a_cancelled_waiter_is_forgotten() -> None:
    latch = Latch()
    waiter = asyncio.create_task(latch.wait())
    stays = asyncio.create_task(latch.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert latch._waiters is not None and len(latch._waiters) == 1
    latch.set()
    await asyncio.wait_for(stays, 1)
