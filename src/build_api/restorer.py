"""The bootstrap capability: a table from secret service ids to capabilities.

Ids are stored only as their SHA-256, so the table never holds a secret, and
a lookup compares hashes rather than the secret itself: the time it takes
tells a prober nothing about how close a guessed id is to a real one. Every
failure gives the caller the same message, so probing reveals nothing about
which ids exist.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from build_api import schema
from build_api.errors import ServiceError
from build_api.rpc import PeerConnection, remote

logger = logging.getLogger(__name__)

UNKNOWN_CAPABILITY = "unknown capability (revoked, or not issued by this scheduler)"


@dataclass(frozen=True)
class Service:
    name: str
    interface: Any
    make: Callable[[PeerConnection], Any]


class ServiceTable:
    """The services a scheduler offers, by the hash of their secret ids."""

    def __init__(self) -> None:
        self._by_hash: dict[bytes, Service] = {}

    def add(self, service_id: bytes, service: Service) -> None:
        self.add_hash(id_hash(service_id), service)

    def add_hash(self, service_hash: bytes, service: Service) -> None:
        """Offer a service known only by the SHA-256 of its id."""
        self._by_hash[service_hash] = service

    def remove_hash(self, service_hash: bytes) -> None:
        self._by_hash.pop(service_hash, None)

    def lookup(self, service_id: bytes) -> Service | None:
        return self._by_hash.get(id_hash(service_id))


def id_hash(service_id: bytes) -> bytes:
    """What the table keeps of a service id."""
    return hashlib.sha256(service_id).digest()


class Restorer(schema.build.Restorer.Server):  # type: ignore[misc]
    """Serves ``restore(id, interface)`` from a :class:`ServiceTable`."""

    def __init__(self, table: ServiceTable, peer: PeerConnection) -> None:
        self._table = table
        self._peer = peer

    @remote
    async def restore(self, id: bytes, interfaceId: int, **_: Any) -> Any:
        service = self._table.lookup(bytes(id))
        if service is None:
            raise ServiceError(UNKNOWN_CAPABILITY)
        expected = schema.interface_id(service.interface)
        if interfaceId != expected:
            raise ServiceError(
                f"this capability is for {service.name}; "
                f"it cannot be used for {_purpose(interfaceId)}"
            )
        return service.make(self._peer)


_PURPOSES = {
    "Submission": "submitting jobs",
    "Admin": "administration",
    "Registration": "registering workers",
}


def _purpose(interface_id: int) -> str:
    for name, purpose in _PURPOSES.items():
        if schema.interface_id(getattr(schema.build, name)) == interface_id:
            return purpose
    return "this purpose"
