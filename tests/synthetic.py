"""Synthetic workers and clients, written against the public schema only.

They speak the protocol as any third-party worker or client could, with no
Docker engine behind them, so tests and benchmarks can drive thousands of
jobs through a real scheduler. Their names say what they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from build_api import schema
from build_api.rpc import connect_and_restore, detached
from build_api.sturdy import SturdyRef
from build_worker.job import WorkerJob


class SyntheticJob(WorkerJob):
    """The worker's own Job capability; a cancel ends it at once."""

    def finish(self, kind: str, detail: str = "") -> None:
        self.set_outcome(kind, detail)

    async def cancel(self, **_: Any) -> None:
        self.cancelled.set()
        self.set_outcome("cancelled")


class SyntheticWorkerServer(schema.build.Worker.Server):  # type: ignore[misc]
    async def metrics(self, source: Any, **_: Any) -> tuple[str, str]:
        return "text/plain", ""

    async def ping(self, **_: Any) -> None:
        return None


JobHandler = Callable[[str, Any, SyntheticJob], Awaitable[None]]


async def finish_at_once(job_id: str, description: Any, job: SyntheticJob) -> None:
    """Build nothing: one log line and an immediate success."""
    job.log_buffer.write(f"synthetic build of {job_id}\n".encode())
    job.finish("success", f"sha256:{job_id}")


@dataclass
class SyntheticWorker:
    """Registers like build-worker and runs ``handler`` for each job."""

    ref: SturdyRef
    name: str
    capacity: int = 1
    handler: JobHandler = finish_at_once
    job_class: type[SyntheticJob] = SyntheticJob
    received: list[str] = field(default_factory=list)

    async def run(self) -> None:
        connection, registration = await connect_and_restore(
            self.ref, schema.build.Registration
        )
        try:
            reply = await registration.register(
                self.name, SyntheticWorkerServer(), self.capacity
            )
            queue = detached(reply.queue)
            await asyncio.gather(*(self._slot(queue) for _ in range(self.capacity)))
        finally:
            connection.close()

    async def _slot(self, queue: Any) -> None:
        while True:
            job = self.job_class()
            reply = await queue.pop(job)
            self.received.append(reply.id)
            await self.handler(reply.id, reply.description, job)


def simple_description(text: str = "FROM busybox\n") -> Any:
    description = schema.build.JobDescription.new_message()
    description.dockerfile.contents = text
    return description
