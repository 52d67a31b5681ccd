"""A discrete-event simulation of one pool, driving the real pure Pool.

Workers are simulated: a build takes ``cached`` seconds on a worker that
built the same hint before and ``uncached`` seconds otherwise, whatever the
pool believes. The pool decides everything else, with a fake clock, so the
policy's outcome on a workload can be measured without any I/O. Used by the
policy tests and by ``bench/affinity.py``.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from build_scheduler.pool import Assignment, Pool, QueuedJob, WorkerState


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FirstComeFirstServedPool(Pool):
    """A pool that ignores cache hints: the plain policy, for comparison."""

    def submit(self, job: QueuedJob) -> list[Assignment]:
        job.cache_hint = ""
        return super().submit(job)


class UnboundedAffinityPool(Pool):
    """Always waits for the worker that built the hint, however long the
    queue there: the pile-up that bounded affinity avoids, for comparison."""

    def _place(self, job: QueuedJob, free: WorkerState) -> tuple[WorkerState, bool]:
        holders = self._holders(job.cache_hint)
        if holders and not any(h.waiting for h in holders):
            return min(holders, key=lambda h: len(h.reserved)), True
        return super()._place(job, free)


@dataclass
class Outcome:
    makespan: float
    jobs_per_worker: dict[str, int]
    uncached_builds: int
    mean_wait: float


@dataclass(order=True)
class _Event:
    time: float
    order: int
    action: Callable[[], None] = field(compare=False)


@dataclass
class Simulation:
    make_pool: Callable[[Callable[[], float]], Pool]
    workers: dict[str, int]  # name -> capacity
    cached: float = 2.0
    uncached: float = 10.0
    clock: FakeClock = field(default_factory=FakeClock)

    def __post_init__(self) -> None:
        self.pool = self.make_pool(self.clock)
        self._events: list[_Event] = []
        self._order = itertools.count()
        self._built: dict[str, set[str]] = {name: set() for name in self.workers}
        self._ran: Counter[str] = Counter()
        self._uncached = 0
        self._waits: list[float] = []
        self._tick_at: float | None = None
        self._hints: dict[str, str] = {}  # what each job really builds
        self._last_end = 0.0

    def run(self, jobs: list[tuple[float, str]], *, client: str = "c") -> Outcome:
        """Submit ``(arrival time, hint)`` jobs; run until all have ended."""
        for name, capacity in self.workers.items():
            self.pool.add_worker(name, capacity)
            for index in range(capacity):
                self._ready(name, (name, index))
        for number, (arrival, hint) in enumerate(jobs):
            job = QueuedJob(f"j{number:03}", client, False, arrival, cache_hint=hint)
            self._hints[job.id] = hint
            self._at(arrival, lambda job=job: self._handle(self.pool.submit(job)))
        while self._events:
            event = heapq.heappop(self._events)
            self.clock.now = event.time
            event.action()
            self._arm_tick()
        assert len(self.pool) == 0, "jobs were left in the queue"
        waits = self._waits
        return Outcome(
            makespan=self._last_end,
            jobs_per_worker=dict(sorted(self._ran.items())),
            uncached_builds=self._uncached,
            mean_wait=sum(waits) / len(waits) if waits else 0.0,
        )

    def _at(self, time: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, _Event(time, next(self._order), action))

    def _arm_tick(self) -> None:
        when = self.pool.next_tick()
        if when is not None and when != self._tick_at:
            self._tick_at = when
            self._at(max(when, self.clock.now), self._tick)

    def _tick(self) -> None:
        self._tick_at = None
        self._handle(self.pool.tick())

    def _ready(self, worker: str, slot: Hashable) -> None:
        self._handle(self.pool.slot_ready(worker, slot))

    def _handle(self, assignments: list[Assignment]) -> None:
        for assignment in assignments:
            self._run(assignment)

    def _run(self, assignment: Assignment) -> None:
        job, worker = assignment.job, assignment.worker
        built, hint = self._built[worker], self._hints[job.id]
        cached = hint in built
        built.add(hint)
        self._uncached += not cached
        self._ran[worker] += 1
        self._waits.append(self.clock.now - job.submitted_at)
        duration = self.cached if cached else self.uncached

        def finish() -> None:
            self._last_end = self.clock.now
            self.pool.job_finished(worker, job.id, succeeded=True)
            self._ready(worker, assignment.slot)

        self._at(self.clock.now + duration, finish)
