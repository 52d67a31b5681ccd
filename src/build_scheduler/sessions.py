"""A worker's registration, from register to loss, and its heartbeat.

A session ends when its connection closes (noticed at once), or when the
worker stops answering pings while the connection stays open: a frozen
process, or a host that vanished without closing its sockets, which TCP
alone may not notice for hours. Either way the scheduler then treats the
worker as lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import capnp

from build_api.errors import ServiceError
from build_api.rpc import PeerConnection

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Heartbeat:
    """Ping each worker every ``interval`` seconds; ``timeout`` to answer."""

    interval: float = 10.0
    timeout: float = 10.0


@dataclass(eq=False)
class WorkerSession:
    """One registration of a worker: ends when its connection does."""

    pool: str
    name: str
    capacity: int
    capability: Any
    connection: PeerConnection | None = None
    closed: bool = False
    # Slots waiting for a job plus jobs running: never more than capacity.
    load: int = 0
    running: set[str] = field(default_factory=set)
    _room: asyncio.Event = field(default_factory=asyncio.Event)
    _heartbeat: asyncio.Task[None] | None = None

    async def take_slot(self) -> None:
        """Wait until the worker is below its capacity, then count one more."""
        while self.load >= self.capacity and not self.closed:
            # A worker asks again as soon as a build ends, which can be just
            # before the scheduler sees that end: wait for it, do not refuse.
            self._room.clear()
            await self._room.wait()
        if self.closed:
            raise ServiceError("this worker session has been replaced or closed")
        self.load += 1

    def release_slot(self) -> None:
        self.load -= 1
        self._room.set()

    def start_heartbeat(
        self, heartbeat: Heartbeat, on_silent: Callable[[str], None]
    ) -> None:
        self._heartbeat = asyncio.create_task(
            self._beat(heartbeat, on_silent), name=f"heartbeat-{self.pool}-{self.name}"
        )

    async def _beat(
        self, heartbeat: Heartbeat, on_silent: Callable[[str], None]
    ) -> None:
        while not self.closed:
            await asyncio.sleep(heartbeat.interval)
            if not await answers_ping(self.capability, heartbeat.timeout):
                on_silent(f"it did not answer a ping within {heartbeat.timeout:g} s")
                return

    def close(self) -> None:
        """End the session; drop the connection too, in case it is still open."""
        self.closed = True
        self._room.set()
        if (
            self._heartbeat is not None
            and self._heartbeat is not asyncio.current_task()
        ):
            self._heartbeat.cancel()
        if self.connection is not None:
            self.connection.close()


async def answers_ping(worker: Any, within: float) -> bool:
    if worker is None:
        return False
    try:
        await asyncio.wait_for(worker.ping(), within)
    except (TimeoutError, capnp.KjException):
        return False
    return True
