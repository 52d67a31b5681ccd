"""The coalescing transport: one write per loop turn, in order, nothing lost.

It runs over a real TCP connection on loopback; a counter between the
coalescer and the socket transport sees how many writes reach the socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from build_api.transport import FLUSH_BYTES, CoalescingTransport


class Received(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = asyncio.Event()
        self.grew = asyncio.Event()
        self.ended = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.grew.set()

    def eof_received(self) -> None:
        self.ended.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


class CountingTransport:
    """The real socket transport, with its writes counted."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


@pytest.fixture
async def link() -> AsyncIterator[
    tuple[CoalescingTransport, CountingTransport, Received]
]:
    loop = asyncio.get_running_loop()
    received = Received()
    server = await loop.create_server(lambda: received, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    counting = CountingTransport(transport)  # type: ignore[arg-type]
    yield CoalescingTransport(counting), counting, received  # type: ignore[arg-type]
    transport.abort()
    server.close()


async def wait_for_bytes(received: Received, count: int) -> None:
    async with asyncio.timeout(5):
        while len(received.data) < count:
            received.grew.clear()
            await received.grew.wait()


async def test_writes_of_one_loop_turn_reach_the_socket_as_one(link: Any) -> None:
    coalescing, counting, received = link
    for piece in (b"first ", b"second ", b"third"):
        coalescing.write(piece)
    assert counting.writes == 0
    await asyncio.sleep(0)
    assert counting.writes == 1
    await wait_for_bytes(received, 18)
    assert bytes(received.data) == b"first second third"


async def test_a_large_write_goes_out_at_once_after_what_was_gathered(
    link: Any,
) -> None:
    coalescing, counting, received = link
    coalescing.write(b"small ")
    coalescing.write(b"x" * FLUSH_BYTES)
    assert counting.writes == 2  # in order, and the large one not copied
    await wait_for_bytes(received, FLUSH_BYTES + 6)
    assert received.data.startswith(b"small xxx")


async def test_gathered_writes_go_out_once_they_add_up_to_the_limit(
    link: Any,
) -> None:
    coalescing, counting, received = link
    piece = b"y" * (FLUSH_BYTES // 4)
    for _ in range(4):
        coalescing.write(piece)
    assert counting.writes == 1
    await wait_for_bytes(received, FLUSH_BYTES)


async def test_close_sends_what_was_gathered_first(link: Any) -> None:
    coalescing, _, received = link
    coalescing.write(b"last words")
    coalescing.close()
    async with asyncio.timeout(5):
        await received.closed.wait()
    assert bytes(received.data) == b"last words"


async def test_abort_drops_what_was_gathered(link: Any) -> None:
    coalescing, counting, received = link
    coalescing.write(b"never sent")
    coalescing.abort()
    async with asyncio.timeout(5):
        await received.closed.wait()
    await asyncio.sleep(0)
    assert counting.writes == 0
    assert received.data == b""


async def test_the_end_of_writing_comes_after_what_was_gathered(link: Any) -> None:
    coalescing, _, received = link
    coalescing.write(b"before the end")
    coalescing.write_eof()
    async with asyncio.timeout(5):
        await received.ended.wait()
    assert bytes(received.data) == b"before the end"
