"""Races between cancels and pops, against a real scheduler process."""

from __future__ import annotations

import asyncio
import random

import capnp

from build_api import schema
from build_api.rpc import connect_and_restore
from build_api.sturdy import read_cap_file
from tests.cluster import Cluster
from tests.synthetic import SyntheticJob, SyntheticWorker, simple_description

JOBS = 1000


async def test_a_cancel_either_beats_the_pop_or_reaches_the_build_synthetic_worker(
    cluster: Cluster,
) -> None:
    reached: set[str] = set()

    async def build_until_cancelled(
        job_id: str, description, job: SyntheticJob
    ) -> None:
        async def wait_for_cancel() -> None:
            await job.cancelled.wait()
            reached.add(job_id)

        asyncio.ensure_future(wait_for_cancel())  # the slot takes the next job

    rng = random.Random(1234)
    async with capnp.kj_loop():
        worker = SyntheticWorker(
            read_cap_file(cluster.cap("pool-linux")), "racer", capacity=50,
            handler=build_until_cancelled,
        )  # fmt: skip
        worker_task = asyncio.ensure_future(worker.run())
        connection, submission = await connect_and_restore(
            read_cap_file(cluster.cap("submission")), schema.build.Submission
        )

        async def submit_then_cancel() -> tuple[str, str]:
            ticket = (
                await submission.submit("linux", simple_description(), False)
            ).ticket
            job_id = (await ticket.status()).status.id
            await asyncio.sleep(rng.uniform(0, 0.02))
            await ticket.cancel()
            state = (await ticket.status()).status.state
            return job_id, str(state)

        results = await asyncio.gather(*(submit_then_cancel() for _ in range(JOBS)))
        await asyncio.sleep(0.5)  # let the last cancels reach the worker
        connection.close()
        worker_task.cancel()

    assert len({job_id for job_id, _ in results}) == JOBS
    assert [s for _, s in results if s != "cancelled"] == []
    popped = set(worker.received)
    assert len(worker.received) == len(popped)  # no job handed out twice
    assert popped <= reached  # every job that started got its cancel
    # Both sides of the race happened.
    assert 0 < len(popped) < JOBS
