"""Queue scale: the cost per job with 1,000 and with 100,000 jobs waiting.

For each depth, a fresh scheduler process with no worker is given DEPTH
waiting jobs (the client keeps their tickets, as a real one would), which
measures the cost of queueing at that depth and the scheduler's memory per
waiting job. Then 5,000 urgent jobs are queued ahead of them, synthetic
workers connect, and the time until all 5,000 have their result gives the
cost of dispatch with the deep queue behind. Run from the repository root:

    .venv/bin/python bench/queue_scale.py [--depths 1000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import capnp
from common import gather_limited, rss_kib, scheduler, synthetic_worker_processes, table
from tests.cluster import Cluster
from tests.synthetic import simple_description

from build_api import schema
from build_api.rpc import connect_and_restore, detached
from build_api.sturdy import read_cap_file

MEASURED = 5000
CONCURRENCY = 400


async def fill(
    cluster: Cluster, depth: int
) -> tuple[float, float, list[object], object]:
    """Queue ``depth`` jobs; returns seconds per job, KiB per job, and holders."""
    connection, submission = await connect_and_restore(
        read_cap_file(cluster.cap("submission")), schema.build.Submission
    )
    description = simple_description()
    pid = cluster.scheduler.popen.pid
    rss_before = rss_kib(pid)
    tickets: list[object] = []

    async def submit(_: int) -> None:
        reply = await submission.submit("linux", description, False)
        tickets.append(detached(reply.ticket))

    started = time.perf_counter()
    await gather_limited(depth, CONCURRENCY, submit)
    per_job = (time.perf_counter() - started) / depth
    await asyncio.sleep(0.5)
    kib_per_job = (rss_kib(pid) - rss_before) / depth
    return per_job, kib_per_job, tickets, (connection, submission)


async def run_depth(cluster: Cluster, depth: int) -> tuple[float, float, float]:
    per_submit, kib, tickets, (connection, submission) = await fill(cluster, depth)
    description = simple_description()
    urgent = await gather_limited(
        MEASURED, CONCURRENCY,
        lambda i: submission.submit("linux", description, True),
    )  # fmt: skip
    jobs = [reply.ticket.job().job for reply in urgent]
    with synthetic_worker_processes(cluster, processes=2, workers_each=10, capacity=4):
        started = time.perf_counter()
        await gather_limited(MEASURED, CONCURRENCY, lambda i: jobs[i].result())
        per_dispatch = (time.perf_counter() - started) / MEASURED
    del tickets
    connection.close()  # type: ignore[attr-defined]
    return per_submit, per_dispatch, kib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="1000,100000")
    depths = [int(d) for d in parser.parse_args().depths.split(",")]
    rows = []
    results = {}
    for depth in depths:
        with scheduler() as cluster:
            results[depth] = asyncio.run(capnp.run(run_depth(cluster, depth)))
        per_submit, per_dispatch, kib = results[depth]
        rows += [
            (f"{depth:>7,} waiting: queueing, us/job", f"{per_submit * 1e6:.0f}"),
            (f"{depth:>7,} waiting: dispatch, us/job", f"{per_dispatch * 1e6:.0f}"),
            (f"{depth:>7,} waiting: memory, KiB/job", f"{kib:.2f}"),
        ]
    if len(depths) == 2:
        small, large = (results[d] for d in depths)
        rows += [
            ("queueing cost, deep / shallow", f"{large[0] / small[0]:.2f}"),
            ("dispatch cost, deep / shallow", f"{large[1] / small[1]:.2f}"),
        ]
    table("queue scale (a real scheduler, synthetic workers)", rows)


if __name__ == "__main__":
    main()
