"""The scheduler's pools and jobs, glued to asyncio.

:class:`Scheduler` owns the pure :class:`~build_scheduler.pool.Pool` of each
pool, the record of each job, the sessions of the connected workers, and
the futures that waiting worker slots are parked on. The Cap'n Proto
servers in :mod:`build_scheduler.services` call into it and hold no state
of their own beyond what a connection needs.

When a worker is lost (its connection closed, or it stopped answering the
heartbeat), each job it had is dealt with at once: a job whose attempt had
not logged anything yet goes back to the queue as if never taken; a job
that was building is tried again, at the head of the queue, while it has
attempts left, and fails with the reason once it has none.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from build_api import schema
from build_api.errors import ServiceError
from build_api.joblog import JobLog
from build_api.rpc import PeerConnection
from build_scheduler.jobs import JobRecord, JobState, Outcome
from build_scheduler.metrics import SchedulerMetrics
from build_scheduler.pool import Assignment, Pool, QueuedJob
from build_scheduler.sessions import Heartbeat, WorkerSession, answers_ping
from build_scheduler.store import CacheRecord, CostRecord, Store, StoredJob

logger = logging.getLogger(__name__)

# Finished jobs stay visible (by id, with their logs) until this many newer
# jobs have finished.
FINISHED_JOBS_KEPT = 1000
# How long a worker may take to answer the ping sent when another worker
# registers under its name.
PING_TIMEOUT_SECONDS = 5.0
MAX_NAME_LENGTH = 100
DEFAULT_MAX_ATTEMPTS = 2
MAX_SILENT_LOSSES = 3


@dataclass(eq=False)
class _Slot:
    session: WorkerSession
    worker_job: Any
    future: asyncio.Future[tuple[JobRecord, bytes]]


class Scheduler:
    def __init__(
        self,
        pool_names: list[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        log_dir: Path | None = None,
        heartbeat: Heartbeat | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        store: Store | None = None,
        wall_clock: Callable[[], float] = time.time,
    ):
        self._clock = clock
        self._wall_clock = wall_clock
        self.store = store
        self.stopping = False
        # Whether a client may still submit (the registry of clients says).
        self.client_allowed: Callable[[str], bool] = lambda client: True
        # A string, shared by every job record that may need a log file.
        self._log_dir = str(log_dir) if log_dir is not None else None
        self._heartbeat = heartbeat
        self._max_attempts = max_attempts
        self.pools = {name: Pool(name, clock) for name in pool_names}
        self.jobs: dict[str, JobRecord] = {}
        self._sessions: dict[tuple[str, str], WorkerSession] = {}
        # (pool, name) -> the lock of its registrations, and how many use it
        self._registering: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        self._slots: dict[object, _Slot] = {}
        # job id -> the session running its current attempt
        self._running: dict[str, WorkerSession] = {}
        self._finished: deque[str] = deque()
        # pool -> when its next tick is due, and the timer that calls it
        self._timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        # Set, and replaced, when a job ends or a pause changes: drains wait.
        self._drains_wake = asyncio.Event()
        self.metrics = SchedulerMetrics(lambda: self.pools)
        self._on_finish = self._finished_job
        self._on_worker_lost = self._attempt_lost

    # What outlives a restart

    def load_state(self) -> None:
        """Take up what the store kept: rates, pauses, caches, unfinished jobs.

        Jobs of clients no longer allowed are dropped. Records of pools this
        scheduler no longer has are left alone.
        """
        store = self.store
        if store is None:
            return
        for pool_name, client, rate in store.rates():
            if pool_name in self.pools:
                self.pools[pool_name].set_rate(client, rate)
        for pool_name, worker in store.paused_workers():
            if pool_name in self.pools:
                self.pools[pool_name].set_active(worker, False)
        now = self._wall_clock()
        for hint in store.cache_records():
            if hint.pool in self.pools:
                age = max(0.0, now - hint.last_used)
                self.pools[hint.pool].restore_hint(hint.worker, hint.hint, age)
        for cost in store.cost_records():
            if cost.pool in self.pools:
                self.pools[cost.pool].costs.restore(
                    cost.hint, cached=cost.cached, mean=cost.mean,
                    samples=cost.samples,
                )  # fmt: skip
        for stored in store.unfinished_jobs():
            if stored.pool not in self.pools:
                logger.warning(
                    "Job %s was queued in pool %s, which this scheduler does not "
                    "have: it stays stored until that pool is back",
                    stored.id, stored.pool,
                )  # fmt: skip
                continue
            if not self.client_allowed(stored.client):
                logger.info(
                    "Job %s of removed client %s is not queued again",
                    stored.id, stored.client,
                )  # fmt: skip
                store.remove_job(stored.id)
                continue
            self.restore_job(stored)

    def save_cache(self) -> None:
        """Write the cache records and costs of every pool to the store."""
        if self.store is None:
            return
        now = self._wall_clock()
        hints, costs = [], []
        for pool in self.pools.values():
            for worker, hint, age in pool.cache_records():
                hints.append(CacheRecord(pool.name, worker, hint, now - age))
            for hint, cached, mean in pool.costs.records():
                costs.append(
                    CostRecord(pool.name, hint, cached, mean.mean, mean.samples)
                )
        self.store.save_cache(hints, costs)

    def stop(self) -> None:
        """Keep what a restart needs, then stop acting on events.

        Once the scheduler stops, connections close all at once; a job whose
        client or worker goes with them must stay as it is in the store,
        not be cancelled or retried.
        """
        self.stopping = True
        for _, timer in self._timers.values():
            timer.cancel()
        for record in self.jobs.values():
            if not record.state.final and record.has_log:
                try:
                    record.log.persist()
                except OSError as exc:
                    logger.error(
                        "Could not keep the log of job %s for the restart: %s",
                        record.id, exc,
                    )  # fmt: skip
        if self.store is not None:
            self.save_cache()
            self.store.close()
            self.store = None

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
        # A reader cannot be packed: copy it to a builder sized to fit.
        words = description.total_size.word_count + 1
        packed = description.as_builder(num_first_segment_words=words).to_bytes_packed()
        record = self._new_record(
            secrets.token_hex(6), pool_name, client, packed, self._clock()
        )
        if self.store is not None:
            self.store.add_job(
                StoredJob(
                    record.id, pool_name, client, urgent, self._wall_clock(), packed
                )
            )
        self.metrics.submitted.labels(pool_name).inc()
        logger.debug("Job %s queued in pool %s for %s", record.id, pool_name, client)
        queued = self._queued_job(record, description, urgent)
        self._start_all(pool, pool.submit(queued))
        return record

    def restore_job(self, stored: StoredJob) -> JobRecord:
        """Queue again a job that had not ended when the scheduler stopped."""
        pool = self.pool(stored.pool)
        waited = max(0.0, self._wall_clock() - stored.submitted)
        log = None
        if self._log_dir is not None:
            log = JobLog.reopen(f"{self._log_dir}/{stored.id}.log")
        record = self._new_record(
            stored.id, stored.pool, stored.client, stored.description,
            self._clock() - waited, log=log,
        )  # fmt: skip
        note = "--- the scheduler restarted; the job is queued again ---\n"
        record.log.write(f"\n{note}".encode() if len(record.log) else note.encode())
        logger.info("Job %s queued again in pool %s", record.id, stored.pool)
        description = schema.build.JobDescription.from_bytes_packed(stored.description)
        queued = self._queued_job(record, description, stored.urgent)
        self._start_all(pool, pool.submit(queued))
        return record

    def _new_record(
        self,
        job_id: str,
        pool_name: str,
        client: str,
        description: bytes,
        submitted_at: float,
        *,
        log: JobLog | None = None,
    ) -> JobRecord:
        record = JobRecord(
            job_id, pool_name, client, description, submitted_at=submitted_at,
            log=log, log_dir=self._log_dir,
        )  # fmt: skip
        self.jobs[record.id] = record
        # Bound once: a bound method made per job costs 64 bytes each time.
        record.on_finish = self._on_finish
        record.on_worker_lost = self._on_worker_lost
        return record

    def _queued_job(
        self, record: JobRecord, description: Any, urgent: bool
    ) -> QueuedJob:
        queued = QueuedJob(
            record.id, record.client, urgent, record.submitted_at, payload=record,
            cache_hint=description.cacheHint,
            estimate=max(0.0, description.estimatedSeconds),
        )  # fmt: skip
        record.queued = queued
        return queued

    def cancel_client_jobs(self, client: str) -> list[JobRecord]:
        """Cancel every queued job of ``client``; returns them."""
        cancelled = []
        for pool in self.pools.values():
            for job_id in pool.jobs_of(client):
                record = self.jobs[job_id]
                note = f"Job cancelled while queued: client {client} was removed.\n"
                record.finish(Outcome(JobState.CANCELLED, "cancelled"), note=note)
                cancelled.append(record)
        return cancelled

    async def cancel(self, record: JobRecord) -> None:
        """Cancel a job: take it out of the queue, or stop its build.

        A cancel of a running job holds even if its worker is lost before
        it confirms: the job then ends cancelled, never queued again.
        """
        if record.state is JobState.QUEUED:
            logger.debug("Job %s cancelled while queued", record.id)
            record.finish(
                Outcome(JobState.CANCELLED, "cancelled"),
                note="Job cancelled while queued.\n",
            )
        elif record.state is JobState.RUNNING:
            logger.info("Cancelling job %s on %s", record.id, record.worker)
            record.cancel_requested = True
            await record.cancel_running()

    def position(self, record: JobRecord) -> int:
        position = self.pools[record.pool].queue_position(record.id)
        return position if position is not None else 0

    def _finished_job(self, record: JobRecord) -> None:
        succeeded = record.state is JobState.SUCCEEDED
        if not self._end_attempt(record, succeeded=succeeded):
            # It ended while no worker ran it: queued, or its last attempt lost.
            pool = self.pools[record.pool]
            if not pool.cancel(record.id):
                pool.job_abandoned(record.queued)
        # The pool's entry and the record point at each other: part them, so
        # that the record goes as soon as nothing else holds it, even while
        # a cancelled entry waits in the queue to be dropped.
        queued, record.queued = record.queued, None
        if queued is not None:
            queued.payload = None
        if self.store is not None:
            self.store.remove_job(record.id)
        result = record.state.value
        self.metrics.finished.labels(record.pool, result).inc()
        if record.started_at is not None:
            duration = self._clock() - record.started_at
            self.metrics.job_duration.labels(record.pool, result).observe(duration)
        if record.worker:
            logger.info(
                "Job %s on %s: %s (attempt %d, client %s)",
                record.id, record.worker, result, record.attempt, record.client,
            )  # fmt: skip
        else:
            logger.info(
                "Job %s of client %s: %s while queued", record.id, record.client, result
            )
        self._finished.append(record.id)
        while len(self._finished) > FINISHED_JOBS_KEPT:
            dropped = self.jobs.pop(self._finished.popleft(), None)
            if dropped is not None:
                dropped.log.discard()

    # Workers

    async def register(
        self,
        pool_name: str,
        name: str,
        capacity: int,
        capability: Any,
        *,
        connection: PeerConnection | None = None,
    ) -> WorkerSession:
        """Add a worker's session, unless a live worker already has the name.

        A worker that restarts may register before its old session is seen
        to end. The old session is asked to answer a ping: if it does, the
        name is taken and the new registration is refused; if not, the old
        session is dropped and the new one takes over.
        """
        pool = self.pool(pool_name)
        if not is_plain_name(name):
            raise ServiceError(
                f"a worker's name must be 1 to {MAX_NAME_LENGTH} printable characters "
                "without spaces"
            )
        if capacity < 1:
            raise ServiceError("a worker's capacity must be at least 1")
        # One registration of a name at a time, so two cannot both take over.
        key = (pool_name, name)
        lock, users = self._registering.get(key, (asyncio.Lock(), 0))
        self._registering[key] = (lock, users + 1)
        try:
            async with lock:
                old = self._sessions.get(key)
                if old is not None:
                    if await answers_ping(old.capability, PING_TIMEOUT_SECONDS):
                        raise ServiceError(
                            f"a worker named {name!r} is already connected to "
                            f"pool {pool_name}"
                        )
                    self.worker_lost(old, "a new worker registered under its name")
                session = WorkerSession(
                    pool_name, name, capacity, capability, connection
                )
                self._sessions[key] = session
                pool.add_worker(name, capacity)
        finally:
            lock, users = self._registering[key]
            if users == 1:
                del self._registering[key]
            else:
                self._registering[key] = (lock, users - 1)
        if self._heartbeat is not None:
            session.start_heartbeat(
                self._heartbeat, lambda reason: self.worker_lost(session, reason)
            )
        logger.info(
            'Registered new worker "%s" in pool %s (capacity %d)',
            name,
            pool_name,
            capacity,
        )
        return session

    def worker_lost(self, session: WorkerSession, reason: str) -> None:
        """End a session and deal with every job it had."""
        if session.closed or self.stopping:
            return
        session.close()
        key = (session.pool, session.name)
        for slot_key, slot in list(self._slots.items()):
            if slot.session is session:
                del self._slots[slot_key]
                slot.future.cancel()
        pool = self.pools[session.pool]
        if self._sessions.get(key) is session:
            del self._sessions[key]
            pool.remove_worker(session.name)
        logger.info('Worker "%s" left pool %s: %s', session.name, session.pool, reason)
        for job_id in sorted(session.running):
            record = self.jobs.get(job_id)
            if record is not None and record.state is JobState.RUNNING:
                self._attempt_lost(record, f"worker {session.name} was lost: {reason}")
        # Its running jobs went back first; now its queue, and the rest.
        self._start_all(pool, pool.dispatch())

    async def pop(
        self, session: WorkerSession, worker_job: Any
    ) -> tuple[JobRecord, bytes]:
        """Wait until a job is given to this slot of ``session``.

        Returns the job and its packed description, taken when it started:
        the job may end before the worker is told, and its record then no
        longer holds the description.
        """
        await session.take_slot()
        pool = self.pools[session.pool]
        key = object()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[JobRecord, bytes]] = loop.create_future()
        self._slots[key] = _Slot(session, worker_job, future)
        self._start_all(pool, pool.slot_ready(session.name, key))
        try:
            return await future
        finally:
            if self._slots.pop(key, None) is not None:
                # No job came to this slot: it no longer counts.
                pool.slot_gone(key)
                session.release_slot()

    def _start_all(self, pool: Pool, assignments: list[Assignment]) -> None:
        """Start what the pool assigned, and wake it when it next has to act."""
        for assignment in assignments:
            self._start(assignment)
        when = pool.next_tick()
        armed = self._timers.get(pool.name)
        if armed is not None and armed[0] == when:
            return  # the timer that is set already fits
        if armed is not None:
            armed[1].cancel()
            del self._timers[pool.name]
        if when is not None:
            loop = asyncio.get_running_loop()
            timer = loop.call_later(max(0.0, when - self._clock()), self._tick, pool)
            self._timers[pool.name] = (when, timer)

    def _tick(self, pool: Pool) -> None:
        del self._timers[pool.name]
        self._start_all(pool, pool.tick())

    def _start(self, assignment: Assignment) -> None:
        slot = self._slots.pop(assignment.slot)
        record: JobRecord = assignment.job.payload
        now = self._clock()
        record.start(assignment.worker, slot.worker_job, now=now)
        self._running[record.id] = slot.session
        slot.session.running.add(record.id)
        self.metrics.accepted.labels(record.pool).inc()
        self.metrics.queue_wait.labels(record.pool).observe(now - record.submitted_at)
        logger.debug(
            "Job %s started on %s (attempt %d)",
            record.id,
            assignment.worker,
            record.attempt,
        )
        assert record.description is not None  # queued, so it has not ended
        slot.future.set_result((record, record.description))

    def _end_attempt(
        self, record: JobRecord, *, succeeded: bool = False, final: bool = True
    ) -> bool:
        """Free the slot of the job's current attempt; False if it had none."""
        session = self._running.pop(record.id, None)
        if session is None:
            return False
        self.pools[record.pool].job_finished(
            session.name, record.id, succeeded=succeeded, final=final
        )
        session.running.discard(record.id)
        session.release_slot()
        self._wake_drains()
        return True

    def _wake_drains(self) -> None:
        self._drains_wake.set()
        self._drains_wake = asyncio.Event()

    def _attempt_lost(self, record: JobRecord, reason: str) -> None:
        """The worker of the job's current attempt is gone: retry or fail."""
        if record.state is not JobState.RUNNING or self.stopping:
            return
        self._end_attempt(record, final=False)
        logged = record.abandon_attempt()
        record.losses += 1
        if record.cancel_requested:
            note = f"\nJob cancelled; {reason} before it confirmed.\n"
            record.finish(Outcome(JobState.CANCELLED, "cancelled"), note=note)
            return
        if not self.client_allowed(record.client):
            note = f"\n{reason}; client {record.client} was removed: cancelled.\n"
            record.finish(Outcome(JobState.CANCELLED, "cancelled"), note=note)
            return
        # A job that takes its worker down before logging anything would
        # otherwise go round forever: past a few such losses, they count.
        if not logged and record.losses <= MAX_SILENT_LOSSES:
            logger.info("Job %s goes back to the queue: %s", record.id, reason)
            record.requeue("", count_attempt=False)
        elif record.attempt < self._max_attempts:
            next_attempt = record.attempt + 1
            logger.warning(
                "Job %s will be tried again (attempt %d of %d): %s",
                record.id, next_attempt, self._max_attempts, reason,
            )  # fmt: skip
            record.requeue(
                f"\n--- {reason}; trying again on the next free worker "
                f"(attempt {next_attempt} of {self._max_attempts}) ---\n",
                count_attempt=True,
            )
        else:
            message = (
                f"{reason}; the job was lost with it after {record.attempt} "
                f"attempt{'s' if record.attempt > 1 else ''}"
            )
            logger.warning("Job %s failed: %s", record.id, message)
            record.finish(Outcome(JobState.FAILED, message), note=f"\n{message}\n")
            return
        self.metrics.requeued.labels(record.pool).inc()
        pool = self.pools[record.pool]
        self._start_all(pool, pool.requeue(record.queued))

    def worker_capability(self, pool_name: str, name: str) -> Any:
        """The capability of a connected worker; raises ``LookupError`` if none."""
        if pool_name not in self.pools:
            raise LookupError(f"unknown pool {pool_name!r}")
        session = self._sessions.get((pool_name, name))
        if session is None:
            raise LookupError(f"worker {name!r} is not connected to pool {pool_name}")
        return session.capability

    def set_active(self, pool_name: str, worker: str, active: bool) -> None:
        """Pause or resume a worker, connected or not; it lasts across restarts."""
        pool = self.pool(pool_name)
        if not active and not is_plain_name(worker):
            raise ServiceError(f"{worker!r} is not a worker's name")
        connected = (pool_name, worker) in self._sessions
        if active and not pool.is_paused(worker) and not connected:
            raise ServiceError(self._not_known(pool_name, worker, "known"))
        if self.store is not None:
            self.store.set_paused(pool_name, worker, not active)
        logger.info(
            "Worker %s in pool %s %s", worker, pool_name,
            "resumed" if active else "paused",
        )  # fmt: skip
        self._start_all(pool, pool.set_active(worker, active))
        self._wake_drains()

    def set_resting(self, session: WorkerSession, resting: bool) -> None:
        """A worker pauses or resumes itself: for its session only."""
        pool = self.pools[session.pool]
        self._start_all(pool, pool.set_resting(session.name, resting))

    async def drain(
        self, pool_name: str, worker: str, report: Callable[[int], Any]
    ) -> None:
        """Pause a worker, then wait until it runs nothing, reporting progress.

        ``report`` is awaited with the number of jobs still running each time
        it changes, first at once.
        """
        self.set_active(pool_name, worker, False)
        pool = self.pools[pool_name]
        last = -1
        while True:
            if not pool.is_paused(worker):
                raise ServiceError(f"worker {worker!r} was unpaused: the drain ends")
            running = self._running_on(pool_name, worker)
            if running != last:
                await report(running)
                last = running
            if running == 0:
                return
            await self._drains_wake.wait()

    def _running_on(self, pool_name: str, worker: str) -> int:
        session = self._sessions.get((pool_name, worker))
        return len(session.running) if session is not None else 0

    def forget(self, pool_name: str, worker: str) -> None:
        """Drop the records of a worker that is not connected."""
        pool = self.pool(pool_name)
        if (pool_name, worker) in self._sessions:
            raise ServiceError(
                f"worker {worker!r} is connected to pool {pool_name}; stop it first"
            )
        if not pool.is_paused(worker) and not pool.has_hints(worker):
            raise ServiceError(self._not_known(pool_name, worker, "known"))
        pool.forget(worker)
        if self.store is not None:
            self.store.forget_worker(pool_name, worker)
        logger.info("Forgot worker %s of pool %s", worker, pool_name)

    def _not_known(self, pool_name: str, worker: str, what: str) -> str:
        known = ", ".join(name for name, _ in self.known_workers(pool_name))
        return (
            f"worker {worker!r} is not {what} in pool {pool_name} "
            f"(workers: {known or 'none'})"
        )

    def set_rate(self, pool_name: str, client: str, rate: float) -> None:
        pool = self.pool(pool_name)
        try:
            pool.set_rate(client, rate)
        except ValueError as exc:
            raise ServiceError(f"{exc}, not {rate:g}") from None
        if self.store is not None:
            self.store.set_rate(pool_name, client, rate)
        logger.info("Client %s has rate %g in pool %s", client, rate, pool_name)

    def cache_pruned(self, session: WorkerSession) -> None:
        self.pools[session.pool].cache_pruned(session.name)
        logger.info(
            "Worker %s of pool %s pruned its build cache", session.name, session.pool
        )

    def known_workers(self, pool_name: str) -> list[tuple[str, bool]]:
        """Names of the pool's workers with whether each is connected."""
        pool = self.pool(pool_name)
        names = {w.name: True for w in pool.workers}
        for name in pool.paused:
            names.setdefault(name, False)
        return sorted(names.items())


def is_plain_name(name: str) -> bool:
    """Names go into logs and tables: printable, no spaces, not too long."""
    return 0 < len(name) <= MAX_NAME_LENGTH and name.isprintable() and " " not in name
