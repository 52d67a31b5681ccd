"""The scheduler's pools and jobs, glued to asyncio.

:class:`Scheduler` owns the pure :class:`~build_scheduler.pool.Pool` of each
pool, the record of each job, and the futures that waiting worker slots are
parked on. The Cap'n Proto servers in :mod:`build_scheduler.services` call
into it and hold no state of their own beyond what a connection needs.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import capnp

from build_api.errors import ServiceError
from build_api.joblog import JobLog
from build_scheduler.jobs import JobRecord, JobState, Outcome
from build_scheduler.metrics import SchedulerMetrics
from build_scheduler.pool import Assignment, Pool, QueuedJob

logger = logging.getLogger(__name__)

# Finished jobs stay visible (by id, with their logs) until this many newer
# jobs have finished.
FINISHED_JOBS_KEPT = 1000
# How long a worker may take to answer a ping before it counts as gone.
PING_TIMEOUT_SECONDS = 5.0
MAX_NAME_LENGTH = 100


@dataclass(eq=False)
class WorkerSession:
    """One registration of a worker: ends when its connection does."""

    pool: str
    name: str
    capacity: int
    capability: Any
    closed: bool = False
    # Slots waiting for a job plus jobs running: never more than capacity.
    load: int = 0
    _room: asyncio.Event = field(default_factory=asyncio.Event)

    async def take_slot(self) -> None:
        """Wait until the worker is below its capacity, then count one more."""
        while self.load >= self.capacity and not self.closed:
            # A worker asks again as soon as a build ends, which can be just
            # before the scheduler sees that end: wait for it, do not refuse.
            self._room.clear()
            await self._room.wait()
        if self.closed:
            raise ServiceError("this worker session has been replaced or closed")
        self.load += 1

    def release_slot(self) -> None:
        self.load -= 1
        self._room.set()

    def close(self) -> None:
        self.closed = True
        self._room.set()


@dataclass(eq=False)
class _Slot:
    session: WorkerSession
    worker_job: Any
    future: asyncio.Future[JobRecord]


class Scheduler:
    def __init__(
        self,
        pool_names: list[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        log_dir: Path | None = None,
    ):
        self._clock = clock
        self._log_dir = log_dir
        self._registering: dict[tuple[str, str], asyncio.Lock] = {}
        self.pools = {name: Pool(name, clock) for name in pool_names}
        self.jobs: dict[str, JobRecord] = {}
        self._sessions: dict[tuple[str, str], WorkerSession] = {}
        self._slots: dict[object, _Slot] = {}
        self._finished: deque[str] = deque()
        self.metrics = SchedulerMetrics(lambda: self.pools)

    def pool(self, name: str) -> Pool:
        try:
            return self.pools[name]
        except KeyError:
            known = ", ".join(sorted(self.pools)) or "none"
            raise ServiceError(
                f"unknown pool {name!r} (known pools: {known})"
            ) from None

    # Clients

    def submit(
        self, pool_name: str, description: Any, *, urgent: bool, client: str
    ) -> JobRecord:
        pool = self.pool(pool_name)
        now = self._clock()
        job_id = secrets.token_hex(6)
        log_path = self._log_dir / f"{job_id}.log" if self._log_dir else None
        record = JobRecord(
            job_id, pool_name, client, description, submitted_at=now,
            log=JobLog(path=log_path),
        )  # fmt: skip
        self.jobs[record.id] = record
        record.on_finish.append(self._retire)
        self.metrics.submitted.labels(pool_name).inc()
        queued = QueuedJob(record.id, client, urgent, now, payload=record)
        logger.info("Job %s queued in pool %s for %s", record.id, pool_name, client)
        self._start(pool.submit(queued))
        return record

    async def cancel(self, record: JobRecord) -> None:
        if record.state is JobState.QUEUED:
            if self.pools[record.pool].cancel(record.id):
                logger.info("Job %s cancelled while queued", record.id)
                record.finish(
                    Outcome(JobState.CANCELLED, "cancelled"),
                    note="Job cancelled while queued.\n",
                )
        elif record.state is JobState.RUNNING:
            logger.info("Cancelling job %s on %s", record.id, record.worker)
            await record.cancel_running()

    def _retire(self, record: JobRecord) -> None:
        result = record.state.value
        self.metrics.finished.labels(record.pool, result).inc()
        if record.started_at is not None:
            duration = self._clock() - record.started_at
            self.metrics.job_duration.labels(record.pool, result).observe(duration)
        self._finished.append(record.id)
        while len(self._finished) > FINISHED_JOBS_KEPT:
            dropped = self.jobs.pop(self._finished.popleft(), None)
            if dropped is not None:
                dropped.log.discard()

    def position(self, record: JobRecord) -> int:
        position = self.pools[record.pool].queue_position(record.id)
        return position if position is not None else 0

    # Workers

    async def register(
        self, pool_name: str, name: str, capacity: int, capability: Any
    ) -> WorkerSession:
        """Add a worker's session, unless a live worker already has the name.

        A worker that restarts may register before its old session is seen
        to end. The old session is asked to answer a ping: if it does, the
        name is taken and the new registration is refused; if not, the old
        session is dropped and the new one takes over.
        """
        pool = self.pool(pool_name)
        if not _is_plain_name(name):
            raise ServiceError(
                f"a worker's name must be 1 to {MAX_NAME_LENGTH} printable characters "
                "without spaces"
            )
        if capacity < 1:
            raise ServiceError("a worker's capacity must be at least 1")
        # One registration of a name at a time, so two cannot both take over.
        lock = self._registering.setdefault((pool_name, name), asyncio.Lock())
        async with lock:
            return await self._register(pool, name, capacity, capability)

    async def _register(
        self, pool: Pool, name: str, capacity: int, capability: Any
    ) -> WorkerSession:
        pool_name = pool.name
        old = self._sessions.get((pool_name, name))
        if old is not None:
            if await _answers_ping(old.capability):
                raise ServiceError(
                    f"a worker named {name!r} is already connected to pool {pool_name}"
                )
            logger.warning("Worker %r registered again; dropping its old session", name)
            if self._sessions.get((pool_name, name)) is old:
                self.unregister(old)
        session = WorkerSession(pool_name, name, capacity, capability)
        self._sessions[(pool_name, name)] = session
        pool.add_worker(name, capacity)
        logger.info(
            'Registered new worker "%s" in pool %s (capacity %d)',
            name,
            pool_name,
            capacity,
        )
        return session

    def unregister(self, session: WorkerSession) -> None:
        if session.closed:
            return
        session.close()
        if self._sessions.get((session.pool, session.name)) is session:
            del self._sessions[(session.pool, session.name)]
            self.pools[session.pool].remove_worker(session.name)
        for key, slot in list(self._slots.items()):
            if slot.session is session:
                del self._slots[key]
                slot.future.cancel()
        logger.info('Worker "%s" left pool %s', session.name, session.pool)

    async def pop(self, session: WorkerSession, worker_job: Any) -> JobRecord:
        """Wait until a job is given to this slot of ``session``."""
        await session.take_slot()
        pool = self.pools[session.pool]
        key = object()
        future: asyncio.Future[JobRecord] = asyncio.get_running_loop().create_future()
        self._slots[key] = _Slot(session, worker_job, future)
        self._start(pool.slot_ready(session.name, key))
        try:
            return await future
        finally:
            if self._slots.pop(key, None) is not None:
                # No job came to this slot: it no longer counts.
                pool.slot_gone(key)
                session.release_slot()

    def _start(self, assignment: Assignment | None) -> None:
        if assignment is None:
            return
        slot = self._slots.pop(assignment.slot)
        record: JobRecord = assignment.job.payload
        pool = self.pools[record.pool]
        now = self._clock()
        record.start(assignment.worker, slot.worker_job, now=now)
        self.metrics.accepted.labels(record.pool).inc()
        self.metrics.queue_wait.labels(record.pool).observe(now - record.submitted_at)
        record.on_finish.append(lambda r: pool.job_finished(assignment.worker, r.id))
        record.on_finish.append(lambda r: slot.session.release_slot())
        logger.info("Job %s started on %s", record.id, assignment.worker)
        slot.future.set_result(record)

    def worker_capability(self, pool_name: str, name: str) -> Any:
        """The capability of a connected worker; raises ``LookupError`` if none."""
        if pool_name not in self.pools:
            raise LookupError(f"unknown pool {pool_name!r}")
        session = self._sessions.get((pool_name, name))
        if session is None:
            raise LookupError(f"worker {name!r} is not connected to pool {pool_name}")
        return session.capability

    def set_active(self, session: WorkerSession, active: bool) -> None:
        pool = self.pools[session.pool]
        for assignment in pool.set_active(session.name, active):
            self._start(assignment)


def _is_plain_name(name: str) -> bool:
    """Names go into logs and tables: printable, no spaces, not too long."""
    return 0 < len(name) <= MAX_NAME_LENGTH and name.isprintable() and " " not in name


async def _answers_ping(worker: Any) -> bool:
    if worker is None:
        return False
    try:
        await asyncio.wait_for(worker.ping(), PING_TIMEOUT_SECONDS)
    except (TimeoutError, capnp.KjException):
        return False
    return True
