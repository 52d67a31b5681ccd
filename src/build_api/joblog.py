"""A build log that grows while followers read it.

The log is kept as bytes, exactly as produced: it is never decoded, so a
multi-byte character cut by a chunk boundary arrives intact once the reader
joins the chunks. Readers long-poll: a read at the end of a running log
waits until more bytes arrive or the log is closed.
"""

from __future__ import annotations

import asyncio

CHUNK_BYTES = 64 * 1024


class JobLog:
    def __init__(self) -> None:
        self._data = bytearray()
        self._closed = False
        self._grew = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._data)

    def write(self, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("write to a closed log")
        if data:
            self._data += data
            self._wake()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._wake()

    def contents(self) -> bytes:
        return bytes(self._data)

    async def read(self, start: int, *, limit: int = CHUNK_BYTES) -> tuple[bytes, int]:
        """Up to ``limit`` bytes from ``start``, and the offset after them.

        A negative ``start`` counts from the end. Returns an empty chunk only
        once the log is closed and ``start`` is at its end.
        """
        if start < 0:
            start = max(0, len(self._data) + start)
        while start >= len(self._data) and not self._closed:
            await self._grew.wait()
        start = min(start, len(self._data))
        chunk = bytes(self._data[start : start + limit])
        return chunk, start + len(chunk)

    def _wake(self) -> None:
        # Wake every waiter, then arm a fresh event for the next ones.
        self._grew.set()
        self._grew = asyncio.Event()
