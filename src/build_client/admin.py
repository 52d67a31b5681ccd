"""Show pools and their workers through the admin capability."""

from __future__ import annotations

from typing import Any

import capnp

from build_api import schema
from build_api.errors import ServiceError
from build_api.rpc import connect_and_restore, remote_message


async def show(ref: Any, pool: str | None) -> str:
    """The text to print: the pool names, or one pool's state."""
    connection, admin = await connect_and_restore(ref, schema.build.Admin)
    try:
        if pool is None:
            names = (await admin.pools()).names
            return "\n".join(names)
        return str((await admin.pool(pool).pool.show()).state)
    except capnp.KjException as exc:
        raise ServiceError(remote_message(exc)) from None
    finally:
        connection.close()
