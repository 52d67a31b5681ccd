"""How the end of a job travels: with the last log chunk, or on its own."""

from __future__ import annotations

import asyncio
from typing import Any

import capnp

from build_api import schema
from build_api.rpc import connect_and_restore, detached
from build_api.sturdy import read_cap_file
from tests.cluster import Cluster
from tests.synthetic import SyntheticJob, SyntheticWorker, simple_description


class OlderJob(SyntheticJob):
    """A job of a worker that predates the outcome in the log's last chunk."""

    async def log(self, start: int, **_: Any) -> tuple[bytes, int, bool]:
        return await self.log_buffer.read(start)


async def fail_at_once(job_id: str, description: Any, job: SyntheticJob) -> None:
    job.log_buffer.write(b"synthetic build of a broken job\n")
    job.finish("failure", "the build broke")


async def follow_to_the_end(
    cluster: Cluster, job_class: type[SyntheticJob]
) -> tuple[bytes, str]:
    """The log and the failure a client reads, from the log alone."""
    async with capnp.kj_loop():
        worker = SyntheticWorker(
            read_cap_file(cluster.cap("pool-linux")), "w1", job_class=job_class,
            handler=fail_at_once,
        )  # fmt: skip
        worker_task = asyncio.ensure_future(worker.run())
        connection, submission = await connect_and_restore(
            read_cap_file(cluster.cap("submission")), schema.build.Submission
        )
        reply = await submission.submit("linux", simple_description(), False)
        job = detached((await detached(reply.ticket).job()).job)
        offset, log = 0, b""
        while True:
            chunk = await job.log(offset)
            log += chunk.data
            offset = chunk.next
            if chunk.ended:
                break
        assert chunk._has("outcome")
        outcome = chunk.outcome.failure
        connection.close()
        worker_task.cancel()
    return log, outcome


async def test_the_last_log_chunk_brings_the_outcome_synthetic_worker(
    cluster: Cluster,
) -> None:
    log, failure = await follow_to_the_end(cluster, SyntheticJob)
    assert log == b"synthetic build of a broken job\n"
    assert failure == "the build broke"


async def test_an_older_worker_without_it_still_has_its_result_read_synthetic_worker(
    cluster: Cluster,
) -> None:
    log, failure = await follow_to_the_end(cluster, OlderJob)
    assert log == b"synthetic build of a broken job\n"
    assert failure == "the build broke"  # the scheduler asked for the result


async def test_ticket_result_waits_for_the_end_without_a_job_synthetic_worker(
    cluster: Cluster,
) -> None:
    async with capnp.kj_loop():
        worker = SyntheticWorker(
            read_cap_file(cluster.cap("pool-linux")), "w1", handler=fail_at_once
        )
        connection, submission = await connect_and_restore(
            read_cap_file(cluster.cap("submission")), schema.build.Submission
        )
        reply = await submission.submit("linux", simple_description(), False)
        ticket = detached(reply.ticket)
        result = ticket.result()  # asked while the job is still queued
        await asyncio.sleep(0.2)
        worker_task = asyncio.ensure_future(worker.run())
        outcome = (await asyncio.wait_for(result, 10)).outcome
        state = (await ticket.status()).status.state
        connection.close()
        worker_task.cancel()
    assert outcome.failure == "the build broke"
    assert str(state) == "failed"
