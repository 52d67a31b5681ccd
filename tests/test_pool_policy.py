"""Fair share, cache affinity and learned costs, on the pure pool.

Each test drives the state machine with a fake clock and compares the
pool's snapshot (``show``) or the order jobs leave in.
"""

from __future__ import annotations

import pytest

from build_scheduler.costs import PRIOR_CACHED_RATIO, PRIOR_UNCACHED_SECONDS
from build_scheduler.pool import Assignment, Pool, QueuedJob
from tests.pool_simulation import (
    FakeClock,
    FirstComeFirstServedPool,
    Simulation,
    UnboundedAffinityPool,
)


def only(assignments: list[Assignment]) -> Assignment | None:
    """The one assignment an operation made, if any."""
    assert len(assignments) <= 1, assignments
    return assignments[0] if assignments else None


def ready(pool: Pool, worker: str, slot: object) -> Assignment | None:
    return only(pool.slot_ready(worker, slot))


def submit(pool: Pool, queued: QueuedJob) -> Assignment | None:
    return only(pool.submit(queued))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def pool(clock: FakeClock) -> Pool:
    return Pool("linux", clock)


def job(
    job_id: str,
    client: str = "alice",
    *,
    hint: str = "",
    urgent: bool = False,
    estimate: float = 0.0,
    at: float = 1000.0,
) -> QueuedJob:
    return QueuedJob(job_id, client, urgent, at, cache_hint=hint, estimate=estimate)


def drain_order(pool: Pool, worker: str = "w1") -> list[str]:
    """Take every queued job through one slot of ``worker``, in order."""
    order = []
    while (assignment := ready(pool, worker, object())) is not None:
        order.append(assignment.job.id)
        pool.job_finished(worker, assignment.job.id, succeeded=False)
    return order


def run_one(pool: Pool, clock: FakeClock, worker: str, seconds: float) -> str:
    """A slot of ``worker`` takes the next job and builds it for ``seconds``."""
    assignment = ready(pool, worker, object())
    assert assignment is not None
    clock.now += seconds
    pool.job_finished(worker, assignment.job.id, succeeded=True)
    return assignment.job.id


# Fair share


def test_a_burst_delays_only_its_own_client(pool: Pool) -> None:
    pool.add_worker("w1", 1)
    for number in range(4):
        submit(pool, job(f"alice-{number}", "alice"))
    submit(pool, job("bob-0", "bob"))
    assert drain_order(pool) == ["alice-0", "bob-0", "alice-1", "alice-2", "alice-3"]


def test_clients_share_in_proportion_to_their_rates(pool: Pool) -> None:
    pool.set_rate("bob", 2)
    for number in range(4):
        submit(pool, job(f"a{number}", "alice"))
        submit(pool, job(f"b{number}", "bob"))
    pool.add_worker("w1", 1)
    # bob's jobs are spaced half as far apart as alice's
    assert drain_order(pool) == ["a0", "b0", "b1", "a1", "b2", "b3", "a2", "a3"]


def test_urgent_jobs_go_first_but_use_up_their_clients_share(pool: Pool) -> None:
    for number in range(3):
        submit(pool, job(f"alice-urgent-{number}", "alice", urgent=True))
    submit(pool, job("alice-normal", "alice"))
    submit(pool, job("bob-normal", "bob"))
    pool.add_worker("w1", 1)
    assert drain_order(pool) == [
        "alice-urgent-0",
        "alice-urgent-1",
        "alice-urgent-2",
        "bob-normal",
        "alice-normal",
    ]


def test_a_client_is_charged_what_its_jobs_really_cost(
    pool: Pool, clock: FakeClock
) -> None:
    pool.add_worker("w1", 1)
    # alice says her jobs take 1 s each; the first takes 600 s
    for number in range(3):
        submit(pool, job(f"a{number}", "alice", estimate=1))
    assert run_one(pool, clock, "w1", 600) == "a0"
    submit(pool, job("a3", "alice", estimate=1, at=clock.now))
    submit(pool, job("b0", "bob", estimate=1, at=clock.now))
    # she has used 600 s of builder time and bob none: bob goes first
    assert drain_order(pool) == ["b0", "a1", "a2", "a3"]


def test_an_estimate_below_what_the_pool_measured_buys_nothing(
    pool: Pool, clock: FakeClock
) -> None:
    pool.add_worker("w1", 1)
    warm(pool, clock, "w1", "", 10)  # the pool has measured a 10 s build
    for number in range(5):
        submit(pool, job(f"a{number}", "alice", estimate=0.001, at=clock.now))
    submit(pool, job("b0", "bob", at=clock.now))
    assert drain_order(pool)[:3] == ["a0", "b0", "a1"]


def test_a_client_that_used_idle_workers_is_not_held_back_for_it(
    clock: FakeClock,
) -> None:
    pool = Pool("linux", clock)
    for name in ("w1", "w2", "w3", "w4"):
        pool.add_worker(name, 1)
    for number in range(8):  # alice alone keeps four workers busy
        pool.submit(job(f"early{number}", "alice", estimate=10, at=clock.now))
    for _ in range(2):
        for name in ("w1", "w2", "w3", "w4"):
            run_one(pool, clock, name, 10)
    for number in range(4):
        submit(pool, job(f"a{number}", "alice", estimate=10, at=clock.now))
        submit(pool, job(f"b{number}", "bob", estimate=10, at=clock.now))
    assert drain_order(pool) == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3"]


def test_snapshot_shows_clients_with_rates_and_shares(
    pool: Pool, clock: FakeClock
) -> None:
    pool.set_rate("bob", 3)
    pool.add_worker("w1", 1)
    submit(pool, job("a1", "alice"))
    submit(pool, job("b1", "bob"))
    submit(pool, job("b2", "bob"))
    clock.now += 5
    assert pool.show() == "\n".join(
        [
            "pool linux: 3 queued",
            "  worker w1: capacity 1, running 0, idle slots 0",
            "  client alice: rate 1, share 25%, running 0, queued 1",
            "  client bob: rate 3, share 75%, running 0, queued 2",
            "  queued a1 from alice, waiting 5s",
            "  queued b1 from bob, waiting 5s",
            "  queued b2 from bob, waiting 5s",
        ]
    )


# Cache affinity


def warm(pool: Pool, clock: FakeClock, worker: str, hint: str, seconds: float) -> None:
    """``worker`` builds ``hint`` once, taking ``seconds``."""
    submit(pool, job(f"warm-{worker}-{hint}", hint=hint, at=clock.now))
    assert run_one(pool, clock, worker, seconds) == f"warm-{worker}-{hint}"


def test_a_hinted_job_goes_to_the_free_worker_that_built_the_hint(
    pool: Pool, clock: FakeClock
) -> None:
    pool.add_worker("w1", 1)
    pool.add_worker("w2", 1)
    warm(pool, clock, "w2", "app", 10)
    ready(pool, "w1", "w1-slot")  # w1's slot has waited longest
    ready(pool, "w2", "w2-slot")
    assignment = submit(pool, job("a", hint="app", at=clock.now))
    assert assignment and assignment.worker == "w2"


def test_a_hinted_job_waits_for_its_busy_worker_within_the_bound(
    pool: Pool, clock: FakeClock
) -> None:
    pool.add_worker("w1", 1)
    pool.add_worker("w2", 1)
    warm(pool, clock, "w1", "app", 100)  # uncached: 100 s
    warm(pool, clock, "w1", "app", 10)  # cached: 10 s
    submit(pool, job("a", hint="app", at=clock.now))
    assert ready(pool, "w1", "w1-slot") is not None  # w1 builds a
    clock.now += 2
    ready(pool, "w2", "w2-slot")  # w2 is free, and has no cache of app
    # w1 is expected free in 8 s, and a cached build saves about 90 s
    assert submit(pool, job("b", hint="app", at=clock.now)) is None
    assert pool.show() == "\n".join(
        [
            "pool linux: 1 queued",
            "  worker w1: capacity 1, running 1 (a), idle slots 0,"
            " queue 1 (b), hints app",
            "  worker w2: capacity 1, running 0, idle slots 1",
            "  client alice: rate 1, share 100%, running 1, queued 1",
            "  queued b from alice for w1, waiting 0s",
        ]
    )
    clock.now += 8
    pool.job_finished("w1", "a", succeeded=True)
    assignment = ready(pool, "w1", "w1-slot-2")
    assert assignment and assignment.job.id == "b"


def test_a_hinted_job_does_not_wait_past_the_bound(
    pool: Pool, clock: FakeClock
) -> None:
    pool.add_worker("w1", 1)
    pool.add_worker("w2", 1)
    warm(pool, clock, "w1", "app", 12)  # uncached: 12 s
    warm(pool, clock, "w1", "app", 10)  # cached: 10 s, so caching saves 2 s
    submit(pool, job("a", hint="app", at=clock.now))
    assert ready(pool, "w1", "w1-slot") is not None
    ready(pool, "w2", "w2-slot")
    # w1 is busy for about 10 s more: not worth waiting 10 s to save 2 s
    assignment = submit(pool, job("b", hint="app", at=clock.now))
    assert assignment and assignment.worker == "w2"
    assert "worker w2: capacity 1, running 1 (b), idle slots 0, hints app" in (
        pool.show()
    )


def test_a_job_that_waited_the_longest_allowed_goes_back_to_the_pool(
    clock: FakeClock,
) -> None:
    pool = Pool("linux", clock, max_affinity_wait=30)
    pool.add_worker("w1", 1)
    pool.add_worker("w2", 1)
    warm(pool, clock, "w1", "app", 100)
    warm(pool, clock, "w1", "app", 10)
    submit(pool, job("a", hint="app", at=clock.now))
    ready(pool, "w1", "w1-slot")  # w1 builds a, expected to take 10 s
    ready(pool, "w2", "w2-slot")
    assert submit(pool, job("b", hint="app", at=clock.now)) is None
    assert pool.next_tick() == clock.now + 30
    clock.now += 29
    assert pool.tick() == []
    clock.now += 1  # a is long overdue; b has waited 30 s
    [assignment] = pool.tick()
    assert (assignment.job.id, assignment.worker) == ("b", "w2")
    assert pool.next_tick() is None


def test_pausing_a_worker_gives_its_queue_back_to_the_pool(
    pool: Pool, clock: FakeClock
) -> None:
    pool.add_worker("w1", 1)
    pool.add_worker("w2", 1)
    warm(pool, clock, "w1", "app", 100)
    warm(pool, clock, "w1", "app", 10)
    submit(pool, job("a", hint="app", at=clock.now))
    ready(pool, "w1", "w1-slot")
    ready(pool, "w2", "w2-slot")
    submit(pool, job("b", hint="app", at=clock.now))
    assert "queue 1 (b)" in pool.show()
    [assignment] = pool.set_active("w1", False)
    assert (assignment.job.id, assignment.worker) == ("b", "w2")
    assert "queue 1" not in pool.show()


def test_a_worker_that_pruned_its_cache_no_longer_attracts_its_hints(
    pool: Pool, clock: FakeClock
) -> None:
    pool.add_worker("w1", 1)
    pool.add_worker("w2", 1)
    warm(pool, clock, "w2", "app", 10)
    pool.cache_pruned("w2")
    ready(pool, "w1", "w1-slot")
    ready(pool, "w2", "w2-slot")
    assignment = submit(pool, job("a", hint="app", at=clock.now))
    assert assignment and assignment.worker == "w1"  # waited longest


def test_hints_age_out(clock: FakeClock) -> None:
    pool = Pool("linux", clock, hint_ttl=600)
    pool.add_worker("w1", 1)
    pool.add_worker("w2", 1)
    warm(pool, clock, "w2", "app", 10)
    clock.now += 601
    ready(pool, "w1", "w1-slot")
    ready(pool, "w2", "w2-slot")
    assignment = submit(pool, job("a", hint="app", at=clock.now))
    assert assignment and assignment.worker == "w1"
    assert "hints" not in pool.show().splitlines()[2]


def test_a_worker_keeps_its_hints_across_a_reconnection(
    pool: Pool, clock: FakeClock
) -> None:
    pool.add_worker("w1", 1)
    pool.add_worker("w2", 1)
    warm(pool, clock, "w2", "app", 10)
    pool.remove_worker("w2")
    pool.add_worker("w2", 1)
    ready(pool, "w1", "w1-slot")
    ready(pool, "w2", "w2-slot")
    assignment = submit(pool, job("a", hint="app", at=clock.now))
    assert assignment and assignment.worker == "w2"


def test_a_paused_worker_stays_paused_when_it_comes_back(pool: Pool) -> None:
    pool.set_active("w1", False)  # not connected yet
    assert pool.show().splitlines()[1] == "  worker w1 (paused): not connected"
    pool.add_worker("w1", 1)
    ready(pool, "w1", "slot")
    assert submit(pool, job("a")) is None
    pool.forget("w3")  # forgetting an unknown worker is harmless
    with pytest.raises(ValueError, match="connected"):
        pool.forget("w1")


# Learned costs


def test_costs_start_from_the_prior_then_follow_what_was_measured(
    pool: Pool, clock: FakeClock
) -> None:
    costs = pool.costs
    assert costs.expected("app", cached=False) == PRIOR_UNCACHED_SECONDS
    assert costs.expected("app", cached=False, estimate=30) == 30
    assert costs.expected("app", cached=True) == pytest.approx(
        PRIOR_UNCACHED_SECONDS * PRIOR_CACHED_RATIO
    )
    pool.add_worker("w1", 1)
    warm(pool, clock, "w1", "app", 40)  # uncached
    assert costs.expected("app", cached=False, estimate=30) == 40
    warm(pool, clock, "w1", "app", 8)  # cached
    assert costs.expected("app", cached=True) == 8
    assert costs.cached_ratio() == pytest.approx(0.2)
    # another hint, never built: the pool's own means
    assert costs.expected("other", cached=False) == 40
    assert costs.saving("app") == 32


def test_failed_builds_teach_nothing(pool: Pool, clock: FakeClock) -> None:
    pool.add_worker("w1", 1)
    submit(pool, job("a", hint="app"))
    assignment = ready(pool, "w1", object())
    assert assignment is not None
    clock.now += 1
    pool.job_finished("w1", "a", succeeded=False)
    assert pool.costs.records() == []


# The whole policy on workloads


def four_workers() -> dict[str, int]:
    return {f"w{number}": 1 for number in range(1, 5)}


def one_hint_a_hundred_times() -> list[tuple[float, str]]:
    """A build that one worker has cached, then the same build 100 times."""
    return [(0.0, "app")] + [(1.0, "app")] * 100


def ten_hints_interleaved() -> list[tuple[float, str]]:
    return [(0.0, f"app-{number % 10}") for number in range(100)]


def test_one_hint_submitted_a_hundred_times_spreads_over_the_pool() -> None:
    ours = Simulation(lambda c: Pool("p", c), four_workers()).run(
        one_hint_a_hundred_times()
    )
    plain = Simulation(lambda c: FirstComeFirstServedPool("p", c), four_workers()).run(
        one_hint_a_hundred_times()
    )
    sticky = Simulation(lambda c: UnboundedAffinityPool("p", c), four_workers()).run(
        one_hint_a_hundred_times()
    )
    assert ours.jobs_per_worker == {"w1": 26, "w2": 25, "w3": 25, "w4": 25}
    assert ours.makespan <= plain.makespan
    # waiting for the one worker with the cache piles everything on it
    assert sticky.jobs_per_worker == {"w1": 101}
    assert sticky.makespan > 3 * ours.makespan


def test_affinity_builds_fewer_layers_than_first_come_first_served() -> None:
    ours = Simulation(lambda c: Pool("p", c), four_workers()).run(
        ten_hints_interleaved()
    )
    plain = Simulation(lambda c: FirstComeFirstServedPool("p", c), four_workers()).run(
        ten_hints_interleaved()
    )
    assert ours.uncached_builds < plain.uncached_builds
    assert ours.makespan < plain.makespan
    assert min(ours.jobs_per_worker.values()) >= 20


def test_a_lost_workers_queue_goes_to_the_free_slots_at_once(
    pool: Pool, clock: FakeClock
) -> None:
    pool.add_worker("w1", 1)
    ready(pool, "w1", "w1-slot")
    submit(pool, job("a", hint="app", estimate=10))  # w1 builds a, holds app
    pool.add_worker("w2", 2)
    ready(pool, "w2", "w2-slot-1")
    ready(pool, "w2", "w2-slot-2")
    clock.now += 1
    # b waits for w1: its cache is expected to save more than the wait
    assert submit(pool, job("b", hint="app", estimate=100, at=clock.now)) is None
    assert "queue 1 (b)" in pool.show()
    clock.now += 1
    pool.job_finished("w1", "a", succeeded=True)
    assert pool.remove_worker("w1") == []  # gone before it asked again
    given = pool.dispatch()
    assert [(a.job.id, a.worker) for a in given] == [("b", "w2")]


def test_a_lost_worker_hands_out_its_queue_and_its_retried_jobs(
    pool: Pool, clock: FakeClock
) -> None:
    pool.add_worker("w1", 1)
    ready(pool, "w1", "w1-slot")
    [started] = pool.submit(job("a", hint="app", estimate=10))
    pool.add_worker("w2", 2)
    ready(pool, "w2", "w2-slot-1")
    ready(pool, "w2", "w2-slot-2")
    clock.now += 1
    assert submit(pool, job("b", hint="app", estimate=100, at=clock.now)) is None
    assert pool.remove_worker("w1") == ["a"]  # lost while building a
    retried = pool.requeue(started.job)  # the lost job goes first
    given = pool.dispatch()
    assert [(a.job.id, a.worker) for a in retried + given] == [
        ("a", "w2"),
        ("b", "w2"),
    ]
    assert len(pool) == 0


def test_a_cancelled_job_gives_its_client_back_its_share(
    pool: Pool, clock: FakeClock
) -> None:
    for number in range(50):
        submit(pool, job(f"a{number}", "alice"))
        pool.cancel(f"a{number}")
    for number in range(3):
        submit(pool, job(f"b{number}", "bob"))
    submit(pool, job("a-real", "alice"))
    pool.add_worker("w1", 1)
    assert drain_order(pool) == ["b0", "a-real", "b1", "b2"]


def test_a_worker_resting_by_itself_cannot_lift_an_operators_pause(
    pool: Pool,
) -> None:
    pool.set_active("w1", False)
    pool.add_worker("w1", 1)
    ready(pool, "w1", "slot")
    assert pool.set_resting("w1", False) == []
    assert submit(pool, job("a")) is None
    pool.set_resting("w1", True)
    assert pool.set_active("w1", True) == []  # still resting
    [assignment] = pool.set_resting("w1", False)
    assert assignment.job.id == "a"
