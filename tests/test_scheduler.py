"""The scheduler's job bookkeeping, in one process without RPC."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from build_api import schema
from build_api.errors import ServiceError
from build_scheduler import jobs as jobs_module
from build_scheduler import scheduler as scheduler_module
from build_scheduler.jobs import JobState, Outcome
from build_scheduler.scheduler import Scheduler

# As a call's parameters hold it: a reader.
DESCRIPTION = schema.build.JobDescription.new_message().as_reader()


async def test_unknown_pool_is_refused_with_the_known_pools() -> None:
    scheduler = Scheduler(["linux", "arm"])
    with pytest.raises(
        ServiceError, match=r"unknown pool 'x' \(known pools: arm, linux\)"
    ):
        scheduler.submit("x", DESCRIPTION, urgent=False, client="c")
    assert scheduler.jobs == {}


async def test_cancelling_a_queued_job_ends_its_log() -> None:
    scheduler = Scheduler(["linux"])
    record = scheduler.submit("linux", DESCRIPTION, urgent=False, client="c")
    await scheduler.cancel(record)
    assert record.state is JobState.CANCELLED
    assert record.log.contents() == b"Job cancelled while queued.\n"
    assert len(scheduler.pools["linux"]) == 0


async def test_only_the_newest_finished_jobs_are_kept(monkeypatch) -> None:
    monkeypatch.setattr(scheduler_module, "FINISHED_JOBS_KEPT", 2)
    scheduler = Scheduler(["linux"])
    records = [
        scheduler.submit("linux", DESCRIPTION, urgent=False, client="c")
        for _ in range(4)
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


async def test_pops_beyond_capacity_wait_for_a_free_slot() -> None:
    scheduler = Scheduler(["linux"])
    session = await scheduler.register("linux", "w1", 1, capability=None)
    first = asyncio.create_task(scheduler.pop(session, worker_job=StubWorkerJob()))
    second = asyncio.create_task(scheduler.pop(session, worker_job=StubWorkerJob()))
    await asyncio.sleep(0.01)
    records = [
        scheduler.submit("linux", DESCRIPTION, urgent=False, client="c")
        for _ in range(2)
    ]
    await asyncio.sleep(0.01)
    assert first.done() and not second.done()  # capacity 1: one job at a time
    records[0].finish(Outcome(JobState.SUCCEEDED, "sha256:x"))
    assert (await asyncio.wait_for(second, 1))[0] is records[1]


async def test_two_registrations_racing_for_a_silent_name_stub_worker(
    monkeypatch,
) -> None:
    monkeypatch.setattr(scheduler_module, "PING_TIMEOUT_SECONDS", 0.05)
    scheduler = Scheduler(["linux"])
    await scheduler.register("linux", "w1", 1, StubWorkerCapability(alive=False))
    results = await asyncio.gather(
        scheduler.register("linux", "w1", 2, StubWorkerCapability(alive=True)),
        scheduler.register("linux", "w1", 2, StubWorkerCapability(alive=True)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, ServiceError) for r in results) == 1


@pytest.mark.parametrize("name", ["", "two words", "line\nbreak", "x" * 101])
async def test_worker_names_must_be_plain(name: str) -> None:
    scheduler = Scheduler(["linux"])
    with pytest.raises(ServiceError, match="printable characters without spaces"):
        await scheduler.register("linux", name, 1, capability=None)


class StubWorkerJob:
    """Stands in for a worker's Job capability, answering as told."""

    def __init__(self, chunks: list[tuple[bytes, int]] | None = None) -> None:
        self.chunks = list(chunks or [])
        self.cancel_hangs = False

    async def log(self, start: int):
        if self.chunks:
            data, next_offset = self.chunks.pop(0)
            return SimpleNamespace(data=data, next=next_offset, ended=False)
        await asyncio.sleep(3600)

    def result(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()  # never answers

    async def cancel(self) -> None:
        if self.cancel_hangs:
            await asyncio.sleep(3600)


async def started_job(worker_job: StubWorkerJob):
    scheduler = Scheduler(["linux"])
    session = await scheduler.register("linux", "w1", 1, capability=None)
    pop = asyncio.create_task(scheduler.pop(session, worker_job))
    await asyncio.sleep(0)
    record = scheduler.submit("linux", DESCRIPTION, urgent=False, client="c")
    assert (await pop)[0] is record
    return scheduler, record


async def test_log_chunk_with_a_wrong_offset_fails_the_job_stub_worker() -> None:
    stub = StubWorkerJob([(b"hello", 5), (b"again", 5)])
    _, record = await started_job(stub)
    await asyncio.wait_for(record.finished.wait(), 1)
    assert record.outcome == Outcome(
        JobState.FAILED, "worker w1 sent a log chunk with a wrong offset"
    )
    assert record.log.contents().startswith(b"hello\n")


async def test_cancel_unconfirmed_by_a_hung_worker_still_ends_stub_worker(
    monkeypatch,
) -> None:
    monkeypatch.setattr(jobs_module, "CANCEL_TIMEOUT_SECONDS", 0.05)
    stub = StubWorkerJob()
    stub.cancel_hangs = True
    scheduler, record = await started_job(stub)
    await scheduler.cancel(record)
    assert record.state is JobState.CANCELLED
    assert b"worker w1 did not confirm within 0 s" in record.log.contents()


async def test_a_cancel_holds_when_the_worker_is_lost_before_confirming_stub_worker(
    monkeypatch,
) -> None:
    monkeypatch.setattr(jobs_module, "CANCEL_TIMEOUT_SECONDS", 0.2)
    stub = StubWorkerJob()
    stub.cancel_hangs = True  # a frozen worker
    scheduler, record = await started_job(stub)
    session = scheduler._running[record.id]
    cancelling = asyncio.create_task(scheduler.cancel(record))
    await asyncio.sleep(0.01)
    scheduler.worker_lost(session, "it did not answer a ping")
    await asyncio.wait_for(cancelling, 1)
    assert record.state is JobState.CANCELLED
    assert len(scheduler.pools["linux"]) == 0  # not queued again
    assert b"Job cancelled; worker w1 was lost: it did not answer a ping" in (
        record.log.contents()
    )


async def test_job_of_a_lost_worker_that_logged_nothing_is_requeued_stub_worker() -> (
    None
):
    scheduler, record = await started_job(StubWorkerJob())
    session = scheduler._running[record.id]
    scheduler.worker_lost(session, "test")
    assert record.state is JobState.QUEUED
    assert record.attempt == 0  # not counted: it never started
    assert scheduler.pools["linux"].queue_position(record.id) == 0


async def test_building_job_is_retried_once_then_fails_stub_worker() -> None:
    scheduler, record = await started_job(StubWorkerJob([(b"step 1\n", 7)]))
    await asyncio.sleep(0.01)
    scheduler.worker_lost(scheduler._running[record.id], "it vanished")
    assert record.state is JobState.QUEUED and record.attempt == 1
    assert (
        b"worker w1 was lost: it vanished; trying again on the next free worker "
        in (record.log.contents())
    )

    second = await scheduler.register("linux", "w2", 1, capability=None)
    assert (await scheduler.pop(second, StubWorkerJob([(b"again\n", 6)])))[0] is record
    await asyncio.sleep(0.01)
    assert record.attempt == 2
    scheduler.worker_lost(second, "it vanished too")
    assert record.state is JobState.FAILED
    assert record.outcome is not None
    assert record.outcome.detail == (
        "worker w2 was lost: it vanished too; the job was lost with it after 2 attempts"
    )


async def test_result_of_an_abandoned_attempt_is_ignored_stub_worker() -> None:
    stale = StubWorkerJob()
    scheduler, record = await started_job(stale)
    record.log.write(b"x")  # as if the first attempt had logged
    scheduler.worker_lost(scheduler._running[record.id], "frozen")
    stale.chunks.append((b"late output\n", 1))  # the frozen worker wakes up
    await asyncio.sleep(0.01)
    assert b"late output" not in record.log.contents()
    assert record.state is JobState.QUEUED


async def test_a_job_that_keeps_killing_workers_silently_ends_stub_worker() -> None:
    scheduler, record = await started_job(StubWorkerJob())
    for i in range(10):
        if record.state is not JobState.RUNNING:
            break
        scheduler.worker_lost(scheduler._running[record.id], f"crash {i}")
        if record.state is JobState.QUEUED:
            session = await scheduler.register("linux", f"w{i + 2}", 1, capability=None)
            assert (await scheduler.pop(session, StubWorkerJob()))[0] is record
    assert record.state is JobState.FAILED
    assert 3 < record.losses < 10


async def test_an_unpause_ends_a_drain_at_once_stub_worker() -> None:
    scheduler, record = await started_job(StubWorkerJob([(b"building\n", 9)]))
    reports: list[int] = []

    async def report(running: int) -> None:
        reports.append(running)

    drain = asyncio.create_task(scheduler.drain("linux", "w1", report))
    await asyncio.sleep(0.01)
    assert reports == [1]
    scheduler.set_active("linux", "w1", True)
    with pytest.raises(ServiceError, match="was unpaused: the drain ends"):
        await asyncio.wait_for(drain, 1)
    assert record.state is JobState.RUNNING


async def test_a_removed_clients_job_is_not_retried_after_a_loss_stub_worker() -> None:
    scheduler, record = await started_job(StubWorkerJob([(b"step 1\n", 7)]))
    await asyncio.sleep(0.01)
    scheduler.client_allowed = lambda client: client != "c"
    scheduler.worker_lost(scheduler._running[record.id], "it vanished")
    assert record.state is JobState.CANCELLED
    assert len(scheduler.pools["linux"]) == 0
    assert b"client c was removed: cancelled" in record.log.contents()
