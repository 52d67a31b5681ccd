"""The operator's commands, through the admin capability."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import capnp

from build_api import schema
from build_api.errors import ServiceError
from build_api.rpc import connect_and_restore, remote_message
from build_api.sturdy import SturdyRef, parse_sturdy_ref


@asynccontextmanager
async def admin_session(ref: SturdyRef) -> AsyncIterator[Any]:
    """The Admin capability; a refused request becomes a ServiceError."""
    connection, admin = await connect_and_restore(ref, schema.build.Admin)
    try:
        yield admin
    except capnp.KjException as exc:
        raise ServiceError(remote_message(exc)) from None
    finally:
        connection.close()


async def show(ref: SturdyRef, pool: str | None) -> str:
    """The text to print: the pool names, or one pool's state."""
    async with admin_session(ref) as admin:
        if pool is None:
            names = (await admin.pools()).names
            return "\n".join(names)
        return str((await admin.pool(pool).pool.show()).state)


async def add_client(ref: SturdyRef, name: str) -> SturdyRef:
    """A new client's submission capability."""
    async with admin_session(ref) as admin:
        uri = (await admin.addClient(name)).capUri
    return parse_sturdy_ref(uri)


async def remove_client(ref: SturdyRef, name: str) -> None:
    async with admin_session(ref) as admin:
        await admin.removeClient(name)


async def list_clients(ref: SturdyRef) -> list[str]:
    async with admin_session(ref) as admin:
        clients = (await admin.listClients()).clients
        return [client.name for client in clients]


async def set_rate(ref: SturdyRef, pool: str, client: str, rate: float) -> None:
    async with admin_session(ref) as admin:
        await admin.pool(pool).pool.setRate(client, rate)


async def set_active(ref: SturdyRef, pool: str, worker: str, active: bool) -> bool:
    """Pause or resume the worker; returns whether it is connected."""
    async with admin_session(ref) as admin:
        pool_admin = admin.pool(pool).pool
        await pool_admin.setActive(worker, active)
        return await _is_connected(pool_admin, worker)


async def _is_connected(pool_admin: Any, worker: str) -> bool:
    workers = (await pool_admin.workers()).workers
    return any(w.name == worker and w.connected for w in workers)


class _Progress(schema.build.DrainProgress.Server):  # type: ignore[misc]
    def __init__(self, report: Callable[[int], None]) -> None:
        self._report = report

    async def running(self, jobs: int, **_: Any) -> None:
        self._report(jobs)


async def drain(
    ref: SturdyRef, pool: str, worker: str, report: Callable[[int], None]
) -> bool:
    """Pause the worker and wait until it runs nothing; ``report`` hears how
    many jobs it still runs each time that changes. Returns whether the
    worker is connected."""
    async with admin_session(ref) as admin:
        pool_admin = admin.pool(pool).pool
        await pool_admin.drain(worker, _Progress(report))
        return await _is_connected(pool_admin, worker)


async def forget(ref: SturdyRef, pool: str, worker: str) -> None:
    async with admin_session(ref) as admin:
        await admin.pool(pool).pool.forget(worker)
