"""The Cap'n Proto servers the scheduler offers.

Each class implements one interface of the schema and translates between
the wire (camelCase, capnp structs) and :class:`Scheduler` calls.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Callable
from typing import Any

from build_api import schema
from build_api.errors import ServiceError
from build_api.rpc import PeerConnection, detached, remote
from build_scheduler.clients import ClientRegistry
from build_scheduler.jobs import JobRecord, JobState, Outcome
from build_scheduler.scheduler import Scheduler
from build_scheduler.sessions import WorkerSession

logger = logging.getLogger(__name__)

MAX_DOCKERFILE_BYTES = 1024 * 1024
MAX_COMMITS = 100
_COMMIT = re.compile(r"[0-9a-fA-F]{4,64}")
MAX_CACHE_HINT_LENGTH = 1000


def _check_description(description: Any) -> None:
    if description.dockerfile.which() == "contents":
        size = len(description.dockerfile.contents.encode())
        if size > MAX_DOCKERFILE_BYTES:
            raise ServiceError(
                f"the Dockerfile is {size} bytes; the limit is {MAX_DOCKERFILE_BYTES}"
            )
    elif not description.repository:
        raise ServiceError("a Dockerfile path needs a repository to find it in")
    if description.commits and not description.repository:
        raise ServiceError("commits were given without a repository")
    if len(description.commits) > MAX_COMMITS:
        raise ServiceError(
            f"{len(description.commits)} commits; the limit is {MAX_COMMITS}"
        )
    for commit in description.commits:
        if not _COMMIT.fullmatch(commit):
            raise ServiceError(f"{commit!r} is not a commit hash (4 to 64 hex digits)")
    if len(description.cacheHint) > MAX_CACHE_HINT_LENGTH:
        raise ServiceError(
            f"the cache hint is longer than {MAX_CACHE_HINT_LENGTH} characters"
        )
    estimate = description.estimatedSeconds
    if not (math.isfinite(estimate) and estimate >= 0):
        raise ServiceError("the estimated duration must be a number of seconds >= 0")


class SubmissionServer(schema.build.Submission.Server):  # type: ignore[misc]
    def __init__(
        self, scheduler: Scheduler, client: str, allowed: Callable[[str], bool]
    ) -> None:
        self._scheduler = scheduler
        self._client = client
        self._allowed = allowed

    def _check_allowed(self) -> None:
        if not self._allowed(self._client):
            raise ServiceError(f"client {self._client!r} has been removed")

    @remote
    async def submit(self, pool: str, description: Any, urgent: bool, **_: Any) -> Any:
        self._check_allowed()
        _check_description(description)
        record = self._scheduler.submit(
            pool, description, urgent=urgent, client=self._client
        )
        return TicketServer(self._scheduler, record)

    @remote
    async def ticket(self, id: str, **_: Any) -> Any:
        self._check_allowed()
        record = self._scheduler.jobs.get(id)
        if record is None or record.client != self._client:
            raise ServiceError(f"no job {id!r} of client {self._client}")
        return TicketServer(self._scheduler, record, holds=False)


class _Holder:
    """What a job's Ticket and Job servers share: its outcome, and a count
    of the live capabilities on the job held by its submitter.

    When the submitter lets go of every capability on a job that has not
    ended, because it quit or its connection dropped, the job is cancelled.
    Capabilities got by reattaching to a job (``holds`` false) do not count:
    whoever follows a job from another terminal may stop without ending it.
    """

    def __init__(
        self, scheduler: Scheduler, record: JobRecord, *, holds: bool = True
    ) -> None:
        self._scheduler = scheduler
        self.record = record
        self._holds = holds
        record.holders += holds

    def __del__(self) -> None:
        if not self._holds:
            return
        record = self.record
        record.holders -= 1
        if record.holders == 0 and not record.state.final:
            if self._scheduler.stopping:
                return  # the job stays stored for the next start
            logger.info("Every client let go of job %s; cancelling it", record.id)
            asyncio.get_event_loop().create_task(self._scheduler.cancel(record))

    @remote
    async def result(self, _context: Any, **_: Any) -> None:
        """How the job ended, once it has (``Ticket.result``, ``Job.result``)."""
        await self.record.finished.wait()
        outcome = self.record.outcome
        assert outcome is not None
        _write_outcome(_context.results.init("outcome"), outcome)


class TicketServer(_Holder, schema.build.Ticket.Server):  # type: ignore[misc]
    @remote
    async def job(self, **_: Any) -> Any:
        await self.record.started.wait()
        job = JobServer(self._scheduler, self.record, holds=self._holds)
        return job, self.record.worker

    @remote
    async def cancel(self, **_: Any) -> None:
        await self._scheduler.cancel(self.record)

    @remote
    async def status(self, _context: Any, **_: Any) -> None:
        status = _context.results.init("status")
        record = self.record
        status.id = record.id
        status.pool = record.pool
        status.state = record.state.value
        status.worker = record.worker
        status.attempt = record.attempt
        if record.state is JobState.QUEUED:
            status.queuePosition = self._scheduler.position(record)


class JobServer(_Holder, schema.build.Job.Server):  # type: ignore[misc]
    @remote
    async def log(self, start: int, _context: Any, **_: Any) -> None:
        data, next_offset, ended = await self.record.log.read(start)
        results = _context.results
        results.data = data
        results.next = next_offset
        results.ended = ended
        outcome = self.record.outcome
        if ended and outcome is not None:
            _write_outcome(results.init("outcome"), outcome)

    @remote
    async def cancel(self, **_: Any) -> None:
        await self._scheduler.cancel(self.record)


_OUTCOME_KINDS = {JobState.SUCCEEDED: "success", JobState.FAILED: "failure"}


def _write_outcome(builder: Any, outcome: Outcome) -> None:
    kind = _OUTCOME_KINDS.get(outcome.state, "cancelled")
    schema.write_outcome(builder, kind, outcome.detail)


class RegistrationServer(schema.build.Registration.Server):  # type: ignore[misc]
    def __init__(self, scheduler: Scheduler, pool: str, peer: PeerConnection) -> None:
        self._scheduler = scheduler
        self._pool = pool
        self._peer = peer

    @remote
    async def register(self, name: str, worker: Any, capacity: int, **_: Any) -> Any:
        session = await self._scheduler.register(
            self._pool, name, capacity, detached(worker), connection=self._peer
        )
        return QueueServer(self._scheduler, session)


class QueueServer(schema.build.Queue.Server):  # type: ignore[misc]
    """A worker's session: when the worker lets go of it, the worker has left."""

    def __init__(self, scheduler: Scheduler, session: WorkerSession) -> None:
        self._scheduler = scheduler
        self._session = session

    def __del__(self) -> None:
        self._scheduler.worker_lost(self._session, "its connection closed")

    @remote
    async def pop(self, job: Any, _context: Any, **_: Any) -> None:
        # Detached, or the call's whole message stays while the job runs.
        record, packed = await self._scheduler.pop(self._session, detached(job))
        _context.results.id = record.id
        _context.results.description = schema.build.JobDescription.from_bytes_packed(
            packed
        )

    @remote
    async def setActive(self, active: bool, **_: Any) -> None:
        self._scheduler.set_resting(self._session, not active)

    @remote
    async def cachePruned(self, **_: Any) -> None:
        self._scheduler.cache_pruned(self._session)


class AdminServer(schema.build.Admin.Server):  # type: ignore[misc]
    def __init__(self, scheduler: Scheduler, clients: ClientRegistry) -> None:
        self._scheduler = scheduler
        self._clients = clients

    @remote
    async def pools(self, **_: Any) -> list[str]:
        return sorted(self._scheduler.pools)

    @remote
    async def pool(self, name: str, **_: Any) -> Any:
        self._scheduler.pool(name)
        return PoolAdminServer(self._scheduler, self._clients, name)

    @remote
    async def addClient(self, name: str, **_: Any) -> str:
        return str(self._clients.add(name))

    @remote
    async def removeClient(self, name: str, **_: Any) -> None:
        self._clients.remove(name)

    @remote
    async def listClients(self, _context: Any, **_: Any) -> None:
        names = self._clients.names()
        result = _context.results.init("clients", len(names))
        for item, name in zip(result, names, strict=True):
            item.name = name

    @remote
    async def job(self, id: str, **_: Any) -> Any:
        record = self._scheduler.jobs.get(id)
        if record is None:
            raise ServiceError(f"no job {id!r}")
        return TicketServer(self._scheduler, record, holds=False)


class PoolAdminServer(schema.build.PoolAdmin.Server):  # type: ignore[misc]
    def __init__(
        self, scheduler: Scheduler, clients: ClientRegistry, pool: str
    ) -> None:
        self._scheduler = scheduler
        self._clients = clients
        self._pool = pool

    @remote
    async def show(self, **_: Any) -> str:
        return self._scheduler.pools[self._pool].show()

    @remote
    async def workers(self, _context: Any, **_: Any) -> None:
        pool = self._scheduler.pools[self._pool]
        connected = {w.name: w for w in pool.workers}
        known = self._scheduler.known_workers(self._pool)
        result = _context.results.init("workers", len(known))
        for item, (name, is_connected) in zip(result, known, strict=True):
            item.name = name
            item.connected = is_connected
            item.active = not pool.is_paused(name)
            worker = connected.get(name)
            if worker is not None:
                item.capacity = worker.capacity
                item.running = len(worker.running)

    @remote
    async def setActive(self, worker: str, active: bool, **_: Any) -> None:
        self._scheduler.set_active(self._pool, worker, active)

    @remote
    async def drain(self, worker: str, progress: Any, **_: Any) -> None:
        async def report(running: int) -> None:
            await progress.running(running)

        await self._scheduler.drain(self._pool, worker, report)

    @remote
    async def forget(self, worker: str, **_: Any) -> None:
        self._scheduler.forget(self._pool, worker)

    @remote
    async def setRate(self, client: str, rate: float, **_: Any) -> None:
        if not self._clients.allowed(client):
            raise ServiceError(f"no client {client!r}")
        self._scheduler.set_rate(self._pool, client, rate)
