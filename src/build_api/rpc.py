"""Listening for and dialling Cap'n Proto connections over TLS.

pycapnp builds its stream from an asyncio protocol. We hand that protocol to
asyncio's own ``create_connection`` with a TLS context, so the TLS transport,
and with it the peer's certificate, stays in our hands: the key is checked
against the `.cap` file's fingerprint before the RPC system is even created,
so no RPC byte reaches a peer with the wrong key.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import functools
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import capnp

from build_api import schema
from build_api.errors import ConnectError, ServiceError
from build_api.keys import check_peer_certificate, client_ssl_context
from build_api.sturdy import SturdyRef
from build_api.transport import CoalescingTransport, EndAtEof, coalesce_writes

logger = logging.getLogger(__name__)

# asyncio's TLS layer reads into a buffer of this many bytes per connection,
# 256 KiB unless told otherwise; a scheduler holds a connection per worker
# and per client, and TLS records are at most 16 KiB anyway.
asyncio.sslproto.SSLProtocol.max_size = 64 * 1024

CONNECT_TIMEOUT_SECONDS = 10.0
# Largest message accepted, in 8-byte words (64 MiB).
TRAVERSAL_LIMIT_WORDS = 8 * 1024 * 1024

P = ParamSpec("P")
R = TypeVar("R")


class Connection:
    """An open RPC connection to the scheduler."""

    def __init__(self, client: Any, transport: CoalescingTransport) -> None:
        self._client = client
        self._transport = transport

    def bootstrap(self) -> Any:
        return self._client.bootstrap().cast_as(schema.build.Restorer)

    async def restore(self, ref: SturdyRef, interface: Any) -> Any:
        """Turn ``ref`` into a live capability of the given schema interface."""
        restorer = self.bootstrap()
        try:
            response = await restorer.restore(
                ref.service_id, schema.interface_id(interface)
            )
        except capnp.KjException as exc:
            if is_disconnect(exc):
                raise ConnectError("the scheduler closed the connection") from None
            raise ServiceError(remote_message(exc)) from None
        return detached(response.cap.as_interface(interface))

    async def disconnected(self) -> None:
        """Wait until the connection is lost."""
        await self._client.on_disconnect()

    def close(self) -> None:
        """Drop the connection at once.

        No TLS goodbye: the callers close once every answer they wait for
        has come, and a graceful close would leave the socket open for a
        round trip after the event loop may have ended. What this turn of
        the event loop wrote still goes out first, as far as the socket
        takes it at once.
        """
        self._transport.flush()
        self._transport.abort()


async def connect(ref: SturdyRef) -> Connection:
    """Dial the scheduler named by ``ref`` and check its key."""
    loop = asyncio.get_running_loop()
    streams: list[Any] = []
    protocols: list[Any] = []

    def make_protocol() -> asyncio.BaseProtocol:
        # A private pycapnp helper: it returns the protocol and hands the
        # stream built on it to the callback once the connection is made.
        protocol = capnp.AsyncIoStream._connect(streams.append)
        protocols.append(protocol)
        return EndAtEof(protocol)

    try:
        transport, _ = await asyncio.wait_for(
            loop.create_connection(
                make_protocol, ref.host, ref.port, ssl=client_ssl_context()
            ),
            CONNECT_TIMEOUT_SECONDS,
        )
    except TimeoutError:
        raise ConnectError(f"timed out connecting to {ref.host}:{ref.port}") from None
    except ssl.SSLError as exc:
        raise ConnectError(
            f"TLS handshake with {ref.host}:{ref.port} failed: {exc}"
        ) from None
    except OSError as exc:
        raise ConnectError(
            f"cannot connect to {ref.host}:{ref.port}: {exc.strerror or exc}"
        ) from None

    ssl_object = transport.get_extra_info("ssl_object")
    try:
        check_peer_certificate(
            ssl_object.getpeercert(binary_form=True), ref.fingerprint
        )
    except Exception:
        transport.close()
        raise
    coalescing = coalesce_writes(protocols[0])
    client = capnp.TwoPartyClient(
        streams[0], traversal_limit_in_words=TRAVERSAL_LIMIT_WORDS
    )
    return Connection(client, coalescing)


async def connect_and_restore(ref: SturdyRef, interface: Any) -> tuple[Connection, Any]:
    """Connect to the scheduler and restore ``ref`` as ``interface``."""
    connection = await connect(ref)
    try:
        return connection, await connection.restore(ref, interface)
    except BaseException:
        connection.close()
        raise


class PeerConnection:
    """The server's side of one accepted connection, so that it can drop it.

    A peer that hangs with its connection open (a frozen process, a host
    gone without a goodbye) is never noticed by the RPC system itself;
    whoever notices can cut the connection here.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def close(self) -> None:
        self._stream.close()


async def serve(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    make_bootstrap: Callable[[PeerConnection], Any],
) -> asyncio.Server:
    """Accept TLS connections, giving each a fresh bootstrap capability."""

    async def on_connection(stream: Any, protocol: Any) -> None:
        coalesce_writes(protocol)
        server = capnp.TwoPartyServer(
            stream,
            bootstrap=make_bootstrap(PeerConnection(stream)),
            traversal_limit_in_words=TRAVERSAL_LIMIT_WORDS,
        )
        try:
            await server.on_disconnect()
        except Exception as exc:  # a peer that broke the protocol
            logger.info("Dropped a connection: %s", exc)

    def make_protocol() -> asyncio.BaseProtocol:
        # What pycapnp's own create_server does, keeping hold of the protocol.
        protocol: Any = None

        def connected(stream: Any) -> Awaitable[None]:
            return on_connection(stream, protocol)

        protocol = capnp.AsyncIoStream._connect(connected)
        return EndAtEof(protocol)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(make_protocol, host, port, ssl=ssl_context)
    return server


class Refused(ServiceError):
    """A refusal on its way to a peer: it never carries a traceback.

    pycapnp sends the caller the formatted traceback of an exception raised
    in a server method, which would show the server's files and code. This
    class reports no traceback, so the caller gets one line: its name and
    the message.
    """

    @property
    def __traceback__(self) -> None:
        return None

    @__traceback__.setter
    def __traceback__(self, value: object) -> None:
        pass


def remote(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Wrap a server method so that only a clean message reaches the caller.

    A :class:`ServiceError` reaches the caller as its message alone; anything
    else is logged here with its traceback and reported to the caller as an
    internal error, so no detail of the server leaks out.
    """

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await func(*args, **kwargs)
        except ServiceError as exc:
            message = str(exc)
        except capnp.KjException as exc:
            message = remote_message(exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Internal error in %s", func.__qualname__)
            message = (
                f"internal error in {func.__name__}; the server's log has the details"
            )
        raise Refused(message) from None

    return wrapper


_REFUSED_MARK = Refused.__name__ + ": "


def detached(capability: Any) -> Any:
    """``capability``, no longer tied to the response it arrived in.

    pycapnp keeps a response alive for as long as any capability read from
    it, and only once the response goes does the RPC system tell the other
    side that it may forget the call. Until then the other side keeps the
    whole exchange, about 12 KiB: a client that holds a job's ticket for the
    job's life, or a worker its queue for the session, would cost the
    scheduler that much each. A capability does not need the response's
    memory, so the tie can be cut.
    """
    capability._parent = None
    return capability


def remote_message(exc: Exception) -> str:
    """The message a peer meant for us, without pycapnp's wrapping around it."""
    if is_disconnect(exc):
        return "the connection was lost"
    description = str(getattr(exc, "description", None) or exc)
    _, mark, message = description.partition(_REFUSED_MARK)
    if mark:
        return message.rstrip("\n")
    for prefix in ("remote exception: ", "message = "):
        description = description.removeprefix(prefix)
    lines = description.strip().splitlines()
    return lines[0] if lines else "unknown error"


def is_disconnect(exc: Exception) -> bool:
    """Whether a capnp error means the connection is gone (not a refusal)."""
    return str(getattr(exc, "type", "")) == "DISCONNECTED"
