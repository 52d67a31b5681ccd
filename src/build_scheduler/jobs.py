"""A submitted job as the scheduler tracks it, from queue to outcome.

The scheduler keeps its own copy of each job's log and its outcome: once a
worker starts a job, the scheduler follows the worker's Job capability the
way a client would, and clients read from the scheduler's copy. So the
scheduler always knows how each job ended, any number of clients can follow
a job at the cost of one stream from the worker, and a client's view does
not depend on the worker staying reachable after the build.

States:

    queued ──▶ running ──▶ succeeded | failed | cancelled
       ▲          │
       └──────────┘  the worker was lost: the job is tried again
    queued ──────────────▶ cancelled

Each start is an attempt, numbered from 1. Only the current attempt may
write to the log or end the job: when an attempt is abandoned (its worker
was lost), its follower is stopped and anything its worker says later is
ignored.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import capnp

from build_api.joblog import JobLog
from build_api.latch import Latch
from build_api.rpc import is_disconnect, remote_message

logger = logging.getLogger(__name__)

CANCEL_TIMEOUT_SECONDS = 10.0


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Outcome:
    state: JobState
    detail: str = ""  # the image id on success, the reason on failure


class JobRecord:
    # A scheduler holds one per queued job, so each byte counts.
    __slots__ = (
        "id", "pool", "client", "description", "state", "worker", "attempt",
        "submitted_at", "started_at", "holders", "_log", "_log_dir", "outcome",
        "started", "finished", "on_finish", "on_worker_lost",
        "_attempt_log_start", "losses", "cancel_requested", "queued",
        "_worker_job", "_follower",
    )  # fmt: skip

    def __init__(
        self,
        job_id: str,
        pool: str,
        client: str,
        description: bytes,
        *,
        submitted_at: float = 0.0,
        log: JobLog | None = None,
        log_dir: str | None = None,
    ) -> None:
        self.id = job_id
        self.pool = pool
        self.client = client
        # Packed as on the wire: a fraction of the size of a message object.
        self.description: bytes | None = description
        self.state = JobState.QUEUED
        self.worker = ""
        self.attempt = 0
        self.submitted_at = submitted_at
        self.started_at: float | None = None
        self.holders = 0  # capabilities on this job held by clients
        self._log = log
        self._log_dir = log_dir  # where the log goes once it outgrows memory
        self.outcome: Outcome | None = None
        self.started = Latch()
        self.finished = Latch()
        self.on_finish: Callable[[JobRecord], None] | None = None
        # Told when the current attempt's worker is lost, with the reason;
        # without a handler the job fails.
        self.on_worker_lost: Callable[[JobRecord, str], None] | None = None
        self._attempt_log_start = 0
        self.losses = 0  # attempts whose worker was lost
        self.cancel_requested = False  # a cancel is on its way to the worker
        self.queued: Any = None  # the pool's entry for this job
        self._worker_job: Any = None
        self._follower: asyncio.Task[None] | None = None

    @property
    def log(self) -> JobLog:
        """The job's log, made when first used: most queued jobs need none."""
        if self._log is None:
            path = f"{self._log_dir}/{self.id}.log" if self._log_dir else None
            self._log = JobLog(path=path)
        return self._log

    @property
    def has_log(self) -> bool:
        return self._log is not None

    def start(self, worker: str, worker_job: Any, *, now: float = 0.0) -> None:
        """The job went to ``worker``, whose Job capability is ``worker_job``."""
        self.started_at = now
        self.state = JobState.RUNNING
        self.worker = worker
        self.attempt += 1
        self._attempt_log_start = len(self.log)
        self._worker_job = worker_job
        self._follower = asyncio.create_task(
            self._follow(worker_job), name=f"follow-{self.id}-{self.attempt}"
        )
        self.started.set()

    def abandon_attempt(self) -> bool:
        """Stop following the current attempt; True if it had logged anything."""
        self._stop_following()
        return len(self.log) > self._attempt_log_start

    def requeue(self, note: str, *, count_attempt: bool) -> None:
        """Back to the queue after an abandoned attempt."""
        if not count_attempt:
            self.attempt -= 1
        self.log.write(note.encode())
        self.state = JobState.QUEUED
        self.worker = ""

    def _stop_following(self) -> None:
        self._worker_job = None
        follower, self._follower = self._follower, None
        if follower is not None and follower is not asyncio.current_task():
            follower.cancel()

    def finish(self, outcome: Outcome, *, note: str = "") -> None:
        if self.state.final:
            return
        if note:
            self.log.write(note.encode())
        self.state = outcome.state
        self.outcome = outcome
        self.log.close()
        self._stop_following()
        # The description may hold a registry password: keep it no longer.
        self.description = None
        self.started.set()  # so nobody waits for a start that will not come
        self.finished.set()
        if self.on_finish is not None:
            self.on_finish(self)

    async def cancel_running(self) -> None:
        """Ask the worker to stop the build, and wait until the job has ended.

        A worker that does not confirm in time (it hangs, or its connection
        does) cannot be relied on to stop: the job ends as cancelled anyway,
        and the cancel stays on its way, so that a worker that wakes up
        still stops the build.
        """
        worker_job, attempt = self._worker_job, self.attempt
        if worker_job is None:
            return
        delivery = asyncio.ensure_future(_deliver_cancel(worker_job))
        _PENDING_CANCELS.add(delivery)
        delivery.add_done_callback(_delivered)
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_SECONDS):
                await asyncio.shield(delivery)
                await self.finished.wait()  # the follower sees the build end
            return
        except TimeoutError:
            reason = f"did not confirm within {CANCEL_TIMEOUT_SECONDS:.0f} s"
        except capnp.KjException as exc:
            reason = f"could not confirm: {remote_message(exc)}"
        if self.state is not JobState.RUNNING or self.attempt != attempt:
            return  # it ended meanwhile, for another reason
        logger.warning(
            "Worker %s %s the cancel of job %s", self.worker, reason, self.id
        )
        note = f"\nJob cancelled; worker {self.worker} {reason}.\n"
        self.finish(Outcome(JobState.CANCELLED, "cancelled"), note=note)

    async def _follow(self, worker_job: Any) -> None:
        """Copy the worker's log and result into this record."""
        offset = 0
        try:
            while True:
                reply = await worker_job.log(offset)
                if reply.data and reply.next != offset + len(reply.data):
                    raise _ProtocolViolation("sent a log chunk with a wrong offset")
                self.log.write(reply.data)
                offset = reply.next
                if reply.ended or not reply.data:
                    break
            if reply._has("outcome"):  # the end of the log brought it
                outcome = reply.outcome
            else:
                outcome = (await worker_job.result()).outcome
        except capnp.KjException as exc:
            if is_disconnect(exc):
                self._lost("its connection closed")
                return
            else:
                reason = f"worker {self.worker} failed to report the build: "
                reason += remote_message(exc)
            self._fail(reason)
            return
        except _ProtocolViolation as exc:
            self._fail(f"worker {self.worker} {exc}")
            return
        kind = outcome.which()
        if kind == "success":
            self.finish(Outcome(JobState.SUCCEEDED, outcome.success))
        elif kind == "failure":
            self.finish(Outcome(JobState.FAILED, outcome.failure))
        else:
            self.finish(Outcome(JobState.CANCELLED, "cancelled"))

    def _lost(self, reason: str) -> None:
        reason = f"worker {self.worker} was lost: {reason}"
        if self.on_worker_lost is not None:
            self.on_worker_lost(self, reason)
        else:
            self._fail(reason)

    def _fail(self, reason: str) -> None:
        logger.warning("Job %s failed: %s", self.id, reason)
        self.finish(Outcome(JobState.FAILED, reason), note=f"\n{reason}\n")


# Cancels still on their way to workers that did not answer in time.
_PENDING_CANCELS: set[asyncio.Future[None]] = set()


async def _deliver_cancel(worker_job: Any) -> None:
    await worker_job.cancel()


def _delivered(delivery: asyncio.Future[None]) -> None:
    _PENDING_CANCELS.discard(delivery)
    if not delivery.cancelled() and delivery.exception() is not None:
        logger.debug("A late cancel failed: %s", delivery.exception())


class _ProtocolViolation(Exception):
    """A worker answered in a way the protocol does not allow."""
