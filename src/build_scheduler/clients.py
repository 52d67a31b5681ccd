"""The clients allowed to submit, each with a submission capability of its own.

``submission.cap`` belongs to the client ``default``; its id is derived
from the key, like every fixed service's. Other clients are added by an
operator: each gets a random id, handed out once in a new `.cap` file and
kept only as its SHA-256, in the restorer's table and in the store.

Removing a client takes effect at once, for connections it already has
too: the restorer forgets the id, and each Submission capability asks
here before every call whether its client is still allowed. Its queued
jobs are cancelled; its running jobs finish.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable
from typing import Any

from build_api import schema
from build_api.errors import ServiceError
from build_api.restorer import Service, ServiceTable, id_hash
from build_api.sturdy import SturdyRef
from build_scheduler.scheduler import Scheduler
from build_scheduler.store import Store

logger = logging.getLogger(__name__)

DEFAULT_CLIENT = "default"
# Names become file names (NAME.cap) and appear in logs and tables.
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ClientRegistry:
    def __init__(
        self,
        scheduler: Scheduler,
        table: ServiceTable,
        store: Store,
        *,
        make_server: Callable[[str], Any],
    ) -> None:
        self._scheduler = scheduler
        self._table = table
        self._store = store
        self._make_server = make_server
        # Set once the scheduler knows the address it is reached at.
        self.make_ref: Callable[[bytes], SturdyRef] | None = None
        self._hashes: dict[str, bytes] = {}

    def load(self) -> None:
        """Offer the submission capability of every stored client."""
        for name, service_hash in self._store.clients().items():
            self._offer(name, service_hash)

    def allowed(self, name: str) -> bool:
        return name == DEFAULT_CLIENT or name in self._hashes

    def names(self) -> list[str]:
        return sorted([DEFAULT_CLIENT, *self._hashes])

    def add(self, name: str) -> SturdyRef:
        """A new client; returns its submission capability's reference."""
        if not CLIENT_NAME.fullmatch(name):
            raise ServiceError(
                f"{name!r} is not a valid client name: use 1 to 64 letters, digits, "
                "'.', '_' or '-', starting with a letter or digit"
            )
        if self.allowed(name):
            raise ServiceError(f"client {name!r} already exists")
        if self.make_ref is None:
            raise ServiceError("the scheduler is not listening yet")
        service_id = secrets.token_bytes(32)
        service_hash = id_hash(service_id)
        self._store.add_client(name, service_hash)
        self._offer(name, service_hash)
        logger.info("Added client %s", name)
        return self.make_ref(service_id)

    def remove(self, name: str) -> int:
        """Revoke a client at once; returns how many queued jobs were cancelled."""
        if name == DEFAULT_CLIENT:
            raise ServiceError(
                "the default client's capability is derived from the key: "
                "make a new key to revoke it"
            )
        service_hash = self._hashes.pop(name, None)
        if service_hash is None:
            raise ServiceError(f"no client {name!r}")
        self._table.remove_hash(service_hash)
        self._store.remove_client(name)
        for pool in self._scheduler.pools.values():
            pool.forget_client(name)
        cancelled = self._scheduler.cancel_client_jobs(name)
        logger.info(
            "Removed client %s; cancelled its %d queued jobs", name, len(cancelled)
        )
        return len(cancelled)

    def _offer(self, name: str, service_hash: bytes) -> None:
        self._hashes[name] = service_hash
        self._table.add_hash(
            service_hash,
            Service(
                f"submitting jobs as {name}",
                schema.build.Submission,
                lambda peer: self._make_server(name),
            ),
        )
