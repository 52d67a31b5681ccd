"""The scheduler's job bookkeeping, in one process without RPC."""

from __future__ import annotations

import asyncio

import pytest

from build_api.errors import ServiceError
from build_scheduler import scheduler as scheduler_module
from build_scheduler.jobs import JobState, Outcome
from build_scheduler.scheduler import Scheduler


async def test_unknown_pool_is_refused_with_the_known_pools() -> None:
    scheduler = Scheduler(["linux", "arm"])
    with pytest.raises(
        ServiceError, match=r"unknown pool 'x' \(known pools: arm, linux\)"
    ):
        scheduler.submit("x", None, urgent=False, client="c")
    assert scheduler.jobs == {}


async def test_cancelling_a_queued_job_ends_its_log() -> None:
    scheduler = Scheduler(["linux"])
    record = scheduler.submit("linux", None, urgent=False, client="c")
    await scheduler.cancel(record)
    assert record.state is JobState.CANCELLED
    assert record.log.contents() == b"Job cancelled while queued.\n"
    assert len(scheduler.pools["linux"]) == 0


async def test_only_the_newest_finished_jobs_are_kept(monkeypatch) -> None:
    monkeypatch.setattr(scheduler_module, "FINISHED_JOBS_KEPT", 2)
    scheduler = Scheduler(["linux"])
    records = [
        scheduler.submit("linux", None, urgent=False, client="c") for _ in range(4)
    ]
    for record in records[:3]:
        record.finish(Outcome(JobState.FAILED, "test"))
    assert set(scheduler.jobs) == {r.id for r in records[1:]}


class StubWorkerCapability:
    """Stands in for a worker's capability: answers pings, or never does."""

    def __init__(self, *, alive: bool) -> None:
        self.alive = alive

    async def ping(self) -> None:
        if not self.alive:
            await asyncio.sleep(3600)


async def test_registration_refused_while_the_name_answers_stub_worker() -> None:
    scheduler = Scheduler(["linux"])
    first = await scheduler.register("linux", "w1", 1, StubWorkerCapability(alive=True))
    with pytest.raises(ServiceError, match="'w1' is already connected to pool linux"):
        await scheduler.register("linux", "w1", 2, StubWorkerCapability(alive=True))
    assert not first.closed


async def test_a_silent_old_session_is_replaced_stub_worker(monkeypatch) -> None:
    monkeypatch.setattr(scheduler_module, "PING_TIMEOUT_SECONDS", 0.05)
    scheduler = Scheduler(["linux"])
    first = await scheduler.register(
        "linux", "w1", 1, StubWorkerCapability(alive=False)
    )
    second = await scheduler.register(
        "linux", "w1", 2, StubWorkerCapability(alive=True)
    )
    assert first.closed and not second.closed
    assert [w.capacity for w in scheduler.pools["linux"].workers] == [2]
    with pytest.raises(ServiceError, match="replaced or closed"):
        await scheduler.pop(first, worker_job=None)
