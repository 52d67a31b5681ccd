"""One pool's queue and workers, as a pure state machine.

Nothing here does I/O or reads the time itself: the clock is passed in, and
the RPC layer turns what the methods return into replies. That keeps the
policy testable with a fake clock and compared by readable snapshots.

Rules:

* Waiting jobs leave the queue urgent first, then oldest first.
* A worker asks for work once per free slot (its capacity is the number of
  slots it has). A slot that asks when nothing is queued waits, and the next
  job submitted goes to the slot that has waited longest.
* A paused worker's slots get nothing; its waiting slots stay parked until it
  is resumed.
* A cancelled job leaves the queue at once; it is skipped, never handed out.

Queues are deques with cancelled entries skipped lazily, so submit, pop and
cancel cost O(1) whatever the queue length.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class QueuedJob:
    id: str
    client: str
    urgent: bool
    submitted_at: float
    payload: Any = None
    cancelled: bool = False


@dataclass(frozen=True)
class Assignment:
    """A job given to a worker's slot."""

    job: QueuedJob
    worker: str
    slot: Hashable


@dataclass
class WorkerState:
    name: str
    capacity: int
    active: bool = True
    running: set[str] = field(default_factory=set)


class Pool:
    def __init__(self, name: str, clock: Callable[[], float]) -> None:
        self.name = name
        self._clock = clock
        self._urgent: deque[QueuedJob] = deque()
        self._normal: deque[QueuedJob] = deque()
        self._queued: dict[str, QueuedJob] = {}
        self._urgent_waiting = 0
        self._workers: dict[str, WorkerState] = {}
        # slot -> worker name, in the order the slots started waiting
        self._waiting: OrderedDict[Hashable, str] = OrderedDict()

    # Workers

    def add_worker(self, name: str, capacity: int) -> None:
        """Register a worker, replacing any earlier registration of that name."""
        self.remove_worker(name)
        self._workers[name] = WorkerState(name, capacity)

    def remove_worker(self, name: str) -> list[str]:
        """Forget a worker; returns the ids of the jobs it was running."""
        state = self._workers.pop(name, None)
        for slot in [s for s, w in self._waiting.items() if w == name]:
            del self._waiting[slot]
        return sorted(state.running) if state else []

    def set_active(self, name: str, active: bool) -> list[Assignment]:
        """Pause or resume a worker; resuming may hand its waiting slots work."""
        self._workers[name].active = active
        return self._dispatch() if active else []

    def slot_ready(self, worker: str, slot: Hashable) -> Assignment | None:
        """A free slot of ``worker`` asks for work.

        Returns the assignment if a job can start now; otherwise the slot
        waits until :meth:`submit` or :meth:`set_active` hands it one.
        """
        self._waiting[slot] = worker
        assignments = self._dispatch()
        for assignment in assignments:
            if assignment.slot == slot:
                return assignment
        return None

    def slot_gone(self, slot: Hashable) -> None:
        """A waiting slot stopped waiting (its worker went away)."""
        self._waiting.pop(slot, None)

    def job_finished(self, worker: str, job_id: str) -> None:
        state = self._workers.get(worker)
        if state:
            state.running.discard(job_id)

    # Jobs

    def submit(self, job: QueuedJob) -> Assignment | None:
        """Queue ``job``; returns its assignment if a slot was waiting for work."""
        (self._urgent if job.urgent else self._normal).append(job)
        self._queued[job.id] = job
        self._urgent_waiting += job.urgent
        assignments = self._dispatch()
        return assignments[0] if assignments else None

    def requeue(self, job: QueuedJob) -> Assignment | None:
        """Put a job that was taken back at the head of its queue."""
        job.cancelled = False
        (self._urgent if job.urgent else self._normal).appendleft(job)
        self._queued[job.id] = job
        self._urgent_waiting += job.urgent
        assignments = self._dispatch()
        return assignments[0] if assignments else None

    def cancel(self, job_id: str) -> bool:
        """Take a queued job out of the queue; False if it was not queued."""
        job = self._queued.pop(job_id, None)
        if job is None:
            return False
        job.cancelled = True
        self._urgent_waiting -= job.urgent
        return True

    def queue_position(self, job_id: str) -> int | None:
        if job_id not in self._queued:
            return None
        return next(i for i, job in enumerate(self.queued_jobs()) if job.id == job_id)

    def queued_jobs(self) -> Iterator[QueuedJob]:
        for queue in (self._urgent, self._normal):
            yield from (job for job in queue if not job.cancelled)

    def __len__(self) -> int:
        return len(self._queued)

    def queue_lengths(self) -> tuple[int, int]:
        """How many urgent and how many normal jobs wait."""
        return self._urgent_waiting, len(self._queued) - self._urgent_waiting

    @property
    def workers(self) -> list[WorkerState]:
        return sorted(self._workers.values(), key=lambda w: w.name)

    # Choosing

    def _dispatch(self) -> list[Assignment]:
        assignments = []
        for slot, worker in list(self._waiting.items()):
            if not self._workers[worker].active:
                continue
            job = self._next_job()
            if job is None:
                break
            del self._waiting[slot]
            self._workers[worker].running.add(job.id)
            assignments.append(Assignment(job, worker, slot))
        return assignments

    def _next_job(self) -> QueuedJob | None:
        for queue in (self._urgent, self._normal):
            while queue:
                job = queue.popleft()
                if not job.cancelled:
                    del self._queued[job.id]
                    self._urgent_waiting -= job.urgent
                    return job
        return None

    # Showing

    def show(self) -> str:
        """A readable snapshot of the pool, used by ``show`` and by tests."""
        now = self._clock()
        lines = [f"pool {self.name}: {len(self)} queued"]
        for w in self.workers:
            free = sum(1 for name in self._waiting.values() if name == w.name)
            flags = "" if w.active else " (paused)"
            lines.append(
                f"  worker {w.name}{flags}: capacity {w.capacity},"
                f" running {len(w.running)}, idle slots {free}"
            )
        for job in self.queued_jobs():
            mark = "urgent " if job.urgent else ""
            waited = now - job.submitted_at
            lines.append(
                f"  queued {mark}{job.id} from {job.client}, waiting {waited:.0f}s"
            )
        return "\n".join(lines)
