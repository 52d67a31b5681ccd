"""What sits between asyncio's TLS transport and pycapnp's stream.

pycapnp hands each piece of each outgoing message to the transport as a
write of its own, and over TLS every write is a TLS record and a ``send``
system call. A busy scheduler sends many small messages in one turn of the
event loop (a return, a release, the next call), so most of its time went
to writing. :class:`CoalescingTransport` gathers the writes of one turn and
hands them on as one, at the end of the turn or once enough has gathered.
:class:`EndAtEof` keeps a pycapnp crash at the end of a stream away.
"""

from __future__ import annotations

import asyncio
from typing import Any

# Hand the gathered bytes on at once past this size, so that a burst (a log
# chunk) is not copied about and the transport's flow control still works.
FLUSH_BYTES = 64 * 1024


class CoalescingTransport:
    """Wraps a transport; ``write`` gathers, the end of the loop turn writes.

    Everything else goes to the wrapped transport, with what is gathered
    written first where the order matters (closing, flow control).
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flush_scheduled = False

    def write(self, data: bytes) -> None:
        if len(data) >= FLUSH_BYTES:  # large enough alone: do not copy it
            self.flush()
            self._write_through(data)
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write what has gathered now."""
        if not self._pending:
            return
        pending = self._pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self._pending = []
        self._pending_bytes = 0
        self._write_through(data)

    def _write_through(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = []
        self._pending_bytes = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class EndAtEof(asyncio.BufferedProtocol):
    """Hands pycapnp's stream protocol everything but the end of the stream.

    pycapnp 2.2.4 crashes the whole process (a null pointer) when a peer
    ends its stream in the middle of a message: the read that follows the
    end fulfils a promise that is gone. Any peer could do that before it
    has shown a capability, so the protocol is never told of the end;
    asyncio then closes the connection, and pycapnp sees it lost, which it
    handles. Reads go straight to pycapnp's own methods.
    """

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self.get_buffer = protocol.get_buffer  # type: ignore[method-assign]
        self.buffer_updated = protocol.buffer_updated  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._protocol.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()

    def eof_received(self) -> bool:
        return False  # close: the peer will send nothing more


def coalesce_writes(protocol: Any) -> CoalescingTransport:
    """Make a connected pycapnp stream protocol write through a coalescer."""
    transport = CoalescingTransport(protocol.transport)
    protocol.transport = transport
    return transport
