"""The pool's policy, tested on the pure state machine with a fake clock."""

from __future__ import annotations

import pytest

from build_scheduler.pool import (
    CANCELLED_ENTRIES_KEPT,
    Assignment,
    Pool,
    QueuedJob,
)


def only(assignments: list[Assignment]) -> Assignment | None:
    """The one assignment an operation made, if any."""
    assert len(assignments) <= 1, assignments
    return assignments[0] if assignments else None


def ready(pool: Pool, worker: str, slot: object) -> Assignment | None:
    return only(pool.slot_ready(worker, slot))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pool(clock: FakeClock) -> Pool:
    return Pool("linux", clock)


def submit(pool: Pool, clock: FakeClock, job_id: str, *, urgent: bool = False):
    clock.now += 1
    return only(pool.submit(QueuedJob(job_id, "alice", urgent, clock.now)))


def test_jobs_leave_oldest_first(pool: Pool, clock: FakeClock) -> None:
    pool.add_worker("w1", 1)
    for job_id in ("a", "b", "c"):
        submit(pool, clock, job_id)
    taken = [ready(pool, "w1", object()) for _ in range(3)]
    assert [a.job.id for a in taken if a] == ["a", "b", "c"]


def test_urgent_jobs_go_before_older_normal_ones(pool: Pool, clock: FakeClock) -> None:
    pool.add_worker("w1", 1)
    submit(pool, clock, "normal-1")
    submit(pool, clock, "urgent-1", urgent=True)
    submit(pool, clock, "normal-2")
    submit(pool, clock, "urgent-2", urgent=True)
    order = [ready(pool, "w1", object()) for _ in range(4)]
    assert [a.job.id for a in order if a] == [
        "urgent-1",
        "urgent-2",
        "normal-1",
        "normal-2",
    ]


def test_snapshot_shows_queue_in_dispatch_order(pool: Pool, clock: FakeClock) -> None:
    pool.add_worker("w1", 2)
    submit(pool, clock, "a")
    submit(pool, clock, "b", urgent=True)
    clock.now += 10
    assert pool.show() == "\n".join(
        [
            "pool linux: 2 queued",
            "  worker w1: capacity 2, running 0, idle slots 0",
            "  client alice: rate 1, share 100%, running 0, queued 2",
            "  queued urgent b from alice, waiting 10s",
            "  queued a from alice, waiting 11s",
        ]
    )


def test_waiting_slot_gets_the_next_job_at_once(pool: Pool, clock: FakeClock) -> None:
    pool.add_worker("w1", 1)
    slot = object()
    assert ready(pool, "w1", slot) is None
    assignment = submit(pool, clock, "a")
    assert assignment is not None
    assert (assignment.job.id, assignment.worker, assignment.slot) == ("a", "w1", slot)
    assert len(pool) == 0


def test_longest_waiting_slot_is_served_first(pool: Pool, clock: FakeClock) -> None:
    pool.add_worker("w1", 1)
    pool.add_worker("w2", 1)
    ready(pool, "w2", "w2-slot")
    ready(pool, "w1", "w1-slot")
    first = submit(pool, clock, "a")
    second = submit(pool, clock, "b")
    assert first and first.worker == "w2"
    assert second and second.worker == "w1"


def test_capacity_is_the_number_of_slots(pool: Pool, clock: FakeClock) -> None:
    pool.add_worker("w1", 2)
    for job_id in ("a", "b", "c"):
        submit(pool, clock, job_id)
    assert ready(pool, "w1", 1) is not None
    assert ready(pool, "w1", 2) is not None
    assert (
        pool.show().splitlines()[1]
        == "  worker w1: capacity 2, running 2 (a, b), idle slots 0"
    )
    pool.job_finished("w1", "a", succeeded=True)
    assert (
        pool.show().splitlines()[1]
        == "  worker w1: capacity 2, running 1 (b), idle slots 0"
    )
    assert len(pool) == 1


def test_cancelled_job_is_never_handed_out(pool: Pool, clock: FakeClock) -> None:
    pool.add_worker("w1", 1)
    submit(pool, clock, "a")
    submit(pool, clock, "b")
    assert pool.cancel("a") is True
    assert pool.cancel("a") is False
    assert len(pool) == 1
    assignment = ready(pool, "w1", object())
    assert assignment and assignment.job.id == "b"
    assert ready(pool, "w1", object()) is None


def test_cancel_of_a_started_job_is_refused(pool: Pool, clock: FakeClock) -> None:
    pool.add_worker("w1", 1)
    submit(pool, clock, "a")
    assert ready(pool, "w1", object()) is not None
    assert pool.cancel("a") is False


def test_queue_position_counts_urgent_jobs_first(pool: Pool, clock: FakeClock) -> None:
    submit(pool, clock, "a")
    submit(pool, clock, "b")
    submit(pool, clock, "u", urgent=True)
    assert [pool.queue_position(j) for j in ("u", "a", "b")] == [0, 1, 2]
    pool.cancel("a")
    assert pool.queue_position("b") == 1
    assert pool.queue_position("a") is None


def test_paused_worker_gets_nothing_until_resumed(pool: Pool, clock: FakeClock) -> None:
    pool.add_worker("w1", 1)
    ready(pool, "w1", "slot")
    pool.set_active("w1", False)
    assert submit(pool, clock, "a") is None
    assert len(pool) == 1
    [assignment] = pool.set_active("w1", True)
    assert (assignment.job.id, assignment.slot) == ("a", "slot")


def test_removed_worker_loses_its_waiting_slots(pool: Pool, clock: FakeClock) -> None:
    pool.add_worker("w1", 1)
    ready(pool, "w1", "slot")
    submit(pool, clock, "a")
    assert pool.remove_worker("w1") == ["a"]
    assert submit(pool, clock, "b") is None
    assert len(pool) == 1


def test_slot_that_stops_waiting_gets_no_job(pool: Pool, clock: FakeClock) -> None:
    pool.add_worker("w1", 1)
    ready(pool, "w1", "slot")
    pool.slot_gone("slot")
    assert submit(pool, clock, "a") is None
    assert pool.queue_position("a") == 0


def test_cancelled_jobs_behind_a_busy_worker_do_not_pile_up() -> None:
    pool = Pool("linux", FakeClock())
    pool.add_worker("w1", 1)
    pool.slot_ready("w1", "slot")
    pool.submit(QueuedJob("running", "c", False, 0.0))  # holds the only slot
    for round_ in range(10):
        ids = [f"j{round_}-{i}" for i in range(500)]
        for job_id in ids:
            pool.submit(
                QueuedJob(job_id, "c", urgent=job_id.endswith("7"), submitted_at=0.0)
            )
        for job_id in ids:
            assert pool.cancel(job_id)
    entries = len(pool._urgent) + len(pool._normal) + len(pool._front)
    assert entries <= CANCELLED_ENTRIES_KEPT + 1
    pool.submit(QueuedJob("last", "c", False, 0.0))
    assert [job.id for job in pool.queued_jobs()] == ["last"]
