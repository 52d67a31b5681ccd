"""Random sequences of pool operations, checked against a model of the
scheduler around the pool: no job is lost, duplicated or stranded.

The model plays the scheduler: it keeps the slots that wait and the jobs it
started from what the pool's operations return, as the scheduler does, and
after every step compares that with the pool's own state.
"""

from __future__ import annotations

import random

import pytest

from build_scheduler.pool import Assignment, Pool, QueuedJob
from tests.pool_simulation import FakeClock

WORKERS = ("w0", "w1", "w2")
OPERATIONS = (
    ["submit"] * 4 + ["slot"] * 3 + ["finish"] * 3
    + ["lose", "add", "pause", "unpause", "rest", "cancel", "tick", "tick"]
)  # fmt: skip


class Model:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.clock = FakeClock(1000.0)
        self.pool = Pool("p", self.clock, max_affinity_wait=60)
        self.capacity: dict[str, int] = {}  # connected workers
        self.slots: dict[object, str] = {}  # waiting slots
        self.started: dict[str, str] = {}  # job -> worker
        self.queued: dict[str, QueuedJob] = {}
        self.jobs: dict[str, QueuedJob] = {}

    def take(self, assignments: list[Assignment]) -> None:
        for assignment in assignments:
            assert self.slots.pop(assignment.slot) == assignment.worker
            job = assignment.job
            assert self.queued.pop(job.id) is job, f"{job.id} started twice"
            self.started[job.id] = assignment.worker

    def step(self, operation: str) -> None:
        rng, pool = self.rng, self.pool
        self.clock.now += rng.choice([0.5, 3, 20, 70])
        name = rng.choice(WORKERS)
        if operation == "add" and name not in self.capacity:
            self.capacity[name] = rng.randint(1, 2)
            pool.add_worker(name, self.capacity[name])
        elif operation == "slot" and self.capacity:
            worker = rng.choice(sorted(self.capacity))
            busy = [w for w in [*self.started.values(), *self.slots.values()]]
            if busy.count(worker) < self.capacity[worker]:
                slot = object()
                self.slots[slot] = worker
                self.take(pool.slot_ready(worker, slot))
        elif operation == "submit":
            job = QueuedJob(
                f"j{len(self.jobs)}", rng.choice("abc"), rng.random() < 0.2,
                self.clock.now, cache_hint=rng.choice(["", "h1", "h2"]),
                estimate=rng.choice([0, 5, 100]),
            )  # fmt: skip
            self.jobs[job.id] = self.queued[job.id] = job
            self.take(pool.submit(job))
        elif operation == "finish" and self.started:
            job_id = rng.choice(sorted(self.started))
            worker = self.started.pop(job_id)
            pool.job_finished(worker, job_id, succeeded=rng.random() < 0.8)
        elif operation == "lose" and name in self.capacity:
            del self.capacity[name]
            for slot in [s for s, w in self.slots.items() if w == name]:
                del self.slots[slot]
            running = pool.remove_worker(name)
            mine = sorted(j for j, w in self.started.items() if w == name)
            assert running == mine
            for job_id in mine:  # the scheduler retries them
                del self.started[job_id]
                self.queued[job_id] = self.jobs[job_id]
                self.take(pool.requeue(self.jobs[job_id]))
            self.take(pool.dispatch())
        elif operation in ("pause", "unpause"):
            self.take(pool.set_active(name, operation == "unpause"))
        elif operation == "rest":
            self.take(pool.set_resting(name, rng.random() < 0.5))
        elif operation == "cancel" and self.queued:
            job_id = rng.choice(sorted(self.queued))
            assert pool.cancel(job_id)
            del self.queued[job_id]
        elif operation == "tick":
            self.take(pool.tick())

    def check(self) -> None:
        pool = self.pool
        running = {j: w.name for w in pool.workers for j in w.running}
        assert running == self.started
        assert pool._running_total == len(running)
        assert set(pool.jobs_of("a") + pool.jobs_of("b") + pool.jobs_of("c")) == set(
            self.queued
        )
        for job_id in self.queued:
            assert pool.queue_position(job_id) is not None
        shared = [job for job in pool.queued_jobs() if not job.reserved_for]
        idle = [w for w in pool.workers if w.active and w.waiting]
        assert not (shared and idle), "a job waits while a slot is free"
        for worker in pool.workers:
            live = [job for job in worker.reserved if not job.cancelled]
            assert worker.active or not live, "a job waits for a paused worker"
            if live:
                assert pool.next_tick() is not None
        for client in "abc":
            queued = [j for j in self.queued.values() if j.client == client]
            started = [j for j in self.started if self.jobs[j].client == client]
            assert pool.counts(client) == (len(queued), len(started))


@pytest.mark.parametrize("seed", range(200))
def test_random_operations_keep_every_job_accounted_for(seed: int) -> None:
    model = Model(random.Random(seed))
    for _ in range(300):
        model.step(model.rng.choice(OPERATIONS))
        model.check()
