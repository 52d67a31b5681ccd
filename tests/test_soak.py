"""A bounded soak: 1,000 real builds while workers are killed and restarted."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter

import capnp
import pytest

from build_api import schema
from build_api.rpc import connect_and_restore
from build_api.sturdy import read_cap_file
from tests.cluster import Cluster
from tests.synthetic import SyntheticWorker, simple_description

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

JOBS = 1000
WORKERS = 3
KILLS = 8
DEADLINE_SECONDS = 600


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def killer(cluster: Cluster, rng: random.Random, done: asyncio.Event) -> int:
    """Kill a random worker with SIGKILL now and then, and start it again."""
    kills = 0
    while kills < KILLS and not done.is_set():
        await asyncio.sleep(rng.uniform(1.0, 4.0))
        name = f"w{rng.randrange(WORKERS)}"
        victim = next(
            p for p in reversed(cluster.processes) if p.name == f"worker-{name}"
        )
        victim.stop(signal.SIGKILL)
        kills += 1
        await asyncio.to_thread(cluster.start_worker, name, capacity=2)
    return kills


async def test_every_job_ends_exactly_once_while_workers_die(cluster: Cluster) -> None:
    # The scheduler was started by the fixture with the default heartbeat; a
    # job may meet several dying workers, so it gets retries to spare.
    cluster.scheduler.stop()
    cluster.scheduler_args = ["--job-retries=10"]
    cluster.start_scheduler()
    pid = cluster.scheduler.popen.pid
    rng = random.Random(7)

    async with capnp.kj_loop():
        connection, submission = await connect_and_restore(
            read_cap_file(cluster.cap("submission")), schema.build.Submission
        )
        description = simple_description("FROM busybox\nRUN true\n")

        async def one_job() -> tuple[str, str]:
            ticket = (await submission.submit("linux", description, False)).ticket
            job = (await ticket.job()).job
            outcome = (await job.result()).outcome
            status = (await ticket.status()).status
            return str(status.id), f"{outcome.which()}/{status.state}"

        # Warm up with the same load through a synthetic worker: the baseline
        # then includes the scheduler's high-water mark for 1,000 jobs in
        # flight and a full set of kept finished jobs.
        warm = SyntheticWorker(read_cap_file(cluster.cap("pool-linux")), "warm", 8)
        warm_task = asyncio.ensure_future(warm.run())
        await asyncio.gather(*(one_job() for _ in range(JOBS)))
        warm_task.cancel()
        await asyncio.gather(warm_task, return_exceptions=True)
        for i in range(WORKERS):
            await asyncio.to_thread(cluster.start_worker, f"w{i}", capacity=2)
        await asyncio.sleep(1)
        rss_before, fds_before = rss_kib(pid), open_fds(pid)

        done = asyncio.Event()
        kill_task = asyncio.ensure_future(killer(cluster, rng, done))
        started = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(*(one_job() for _ in range(JOBS))), DEADLINE_SECONDS
        )
        done.set()
        kills = await kill_task
        elapsed = time.monotonic() - started
        connection.close()

    ids = [job_id for job_id, _ in results]
    assert len(set(ids)) == JOBS  # none lost, none merged
    assert Counter(state for _, state in results) == {"success/succeeded": JOBS}
    assert kills >= 1
    _, metrics = cluster.http_get("/metrics")
    assert f'build_scheduler_jobs_finished_total{{pool="linux",result="succeeded"}} ' \
        f"{2 * JOBS}.0" in metrics  # fmt: skip

    await asyncio.sleep(1)  # let closed connections be reaped
    rss_after, fds_after = rss_kib(pid), open_fds(pid)
    print(
        f"soak: {JOBS} jobs in {elapsed:.1f} s, {kills} kills, RSS {rss_before} -> "
        f"{rss_after} KiB, fds {fds_before} -> {fds_after}"
    )
    assert fds_after <= fds_before + 4
    assert rss_after - rss_before < 10 * 1024
