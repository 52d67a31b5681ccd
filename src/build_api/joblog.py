"""A build log that grows while followers read it.

The log is kept as bytes, exactly as produced: it is never decoded, so a
multi-byte character cut by a chunk boundary arrives intact once the reader
joins the chunks. Readers long-poll: a read at the end of a running log
waits until more bytes arrive or the log is closed.

A log is held in memory. Given a path (the scheduler keeps many logs, the
worker only those it is building), a log that grows past ``SPILL_BYTES``
moves to that file, so small logs cost no file operations and large ones
no memory. Either way it stops growing at ``max_bytes``: the rest of the
output is dropped and one line says so, so one noisy build cannot exhaust
memory or disk.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from build_api.latch import Latch

CHUNK_BYTES = 1024 * 1024
SPILL_BYTES = 16 * 1024
DEFAULT_MAX_LOG_BYTES = 64 * 1024 * 1024


class JobLog:
    __slots__ = (
        "_memory", "_path", "_fd", "_spilled", "_has_file", "_length",
        "_max_bytes", "_truncated", "_closed", "_grew",
    )  # fmt: skip

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        max_bytes: int = DEFAULT_MAX_LOG_BYTES,
    ) -> None:
        self._memory = bytearray()
        # Kept as a string: a Path object costs a few hundred bytes per log.
        self._path = os.fspath(path) if path is not None else None
        # Opened when a log in its file is written; closed when the log is.
        self._fd: int | None = None
        self._spilled = False  # the log is in its file, not in memory
        self._has_file = False  # its file may exist, to delete with the log
        self._length = 0
        self._max_bytes = max_bytes
        self._truncated = False
        self._closed = False
        self._grew: Latch | None = None  # made when a reader waits

    @classmethod
    def reopen(
        cls, path: str | Path, *, max_bytes: int = DEFAULT_MAX_LOG_BYTES
    ) -> JobLog:
        """The log kept in ``path`` by :meth:`persist`, to go on writing it.

        It holds no descriptor until it is written: a scheduler restarted
        with many jobs waiting would otherwise run out of them. A small log
        comes back into memory.
        """
        log = cls(path=path, max_bytes=max_bytes)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return log
        log._has_file = True
        if size <= SPILL_BYTES:
            with open(path, "rb") as file:
                log._memory = bytearray(file.read())
            log._length = len(log._memory)
        else:
            log._spilled = True
            log._length = size
        return log

    def persist(self) -> None:
        """Make sure the whole log is in its file, however small it is.

        The log lets go of its descriptor: the scheduler persists every
        unfinished log as it stops, and must not hold a file open for each.
        """
        if self._path is None or self._closed:
            return
        if not self._spilled:
            self._spill(self._path)
        self._close_file()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return self._length

    def write(self, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("write to a closed log")
        if not data or self._truncated:
            return
        room = self._max_bytes - self._length
        if len(data) > room:
            limit = self._max_bytes
            marker = f"\n[log truncated: it passed the limit of {limit} bytes]\n"
            data = data[:room] + marker.encode()
            self._truncated = True
        self._append(data)
        self._wake()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            # A finished log is read rarely: hold no descriptor for it.
            self._close_file()
            self._wake()

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Close the log and free what it holds (its file, if any)."""
        self.close()
        self._memory = bytearray()
        if self._path is not None and self._has_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)

    def contents(self) -> bytes:
        return self._slice(0, self._length)

    async def read(
        self, start: int, *, limit: int = CHUNK_BYTES
    ) -> tuple[bytes, int, bool]:
        """Up to ``limit`` bytes from ``start``, the offset after them, and
        whether that offset is the end of the finished log.

        A negative ``start`` counts from the end. Returns an empty chunk only
        once the log is closed and ``start`` is at its end.
        """
        if start < 0:
            start = max(0, self._length + start)
        while start >= self._length and not self._closed:
            if self._grew is None:
                self._grew = Latch()
            await self._grew.wait()
        start = min(start, self._length)
        chunk = self._slice(start, min(limit, self._length - start))
        end = start + len(chunk)
        return chunk, end, self._closed and end == self._length

    def _append(self, data: bytes) -> None:
        if not self._spilled:
            self._memory += data
            self._length += len(data)
            if self._path is not None and self._length > SPILL_BYTES:
                self._spill(self._path)
            return
        if self._fd is None:
            assert self._path is not None  # only a log with a path spills
            self._fd = os.open(self._path, os.O_RDWR)
        written = 0
        while written < len(data):
            written += os.pwrite(self._fd, data[written:], self._length + written)
        self._length += len(data)

    def _spill(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._spilled = True
        self._has_file = True
        data, self._memory = self._memory, bytearray()
        written = 0
        while written < len(data):
            written += os.pwrite(self._fd, data[written:], written)

    def _slice(self, start: int, size: int) -> bytes:
        if size <= 0:
            return b""
        if self._fd is not None:
            return os.pread(self._fd, size, start)
        if self._spilled and self._path is not None:
            try:
                with open(self._path, "rb") as file:
                    file.seek(start)
                    return file.read(size)
            except FileNotFoundError:  # discarded meanwhile
                return b""
        return bytes(self._memory[start : start + size])

    def _wake(self) -> None:
        # Wake every waiter; the next ones make a fresh latch.
        grew, self._grew = self._grew, None
        if grew is not None:
            grew.set()
