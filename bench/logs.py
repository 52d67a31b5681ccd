"""Log throughput: a worker's output to a following client, through the scheduler.

One synthetic worker (its own process) writes 60 MB of build-like output as
fast as its log takes it; a client follows the job through the scheduler
and counts the bytes. The baseline is a raw TLS socket between two
processes on this machine, in the same run. Run from the repository root:

    .venv/bin/python bench/logs.py [--megabytes N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import capnp
from common import raw_tls_rate, scheduler, synthetic_worker_processes, table
from tests.synthetic import simple_description

from build_api import schema
from build_api.rpc import connect_and_restore
from build_api.sturdy import read_cap_file


async def follow(cap: Path) -> tuple[int, float]:
    connection, submission = await connect_and_restore(
        read_cap_file(cap), schema.build.Submission
    )
    ticket = (await submission.submit("linux", simple_description(), False)).ticket
    job = (await ticket.job()).job
    received, offset = 0, 0
    started = time.perf_counter()
    while True:
        chunk = await job.log(offset)
        received += len(chunk.data)
        offset = chunk.next
        if chunk.ended or not chunk.data:
            break
    elapsed = time.perf_counter() - started
    connection.close()
    return received, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=60)
    size = parser.parse_args().megabytes * 1_000_000
    raw = raw_tls_rate(size)
    with (
        scheduler() as cluster,
        synthetic_worker_processes(
            cluster, processes=1, workers_each=1, extra=(f"--log-bytes={size}",)
        ),
    ):
        received, elapsed = asyncio.run(capnp.run(follow(cluster.cap("submission"))))
    rate = received / elapsed / 1e6
    table(
        f"logs: {received / 1e6:.0f} MB from a worker to a client via the scheduler",
        [
            ("through the scheduler, MB/s", f"{rate:.1f}"),
            ("raw TLS socket, MB/s", f"{raw:.1f}"),
            ("ratio", f"{rate / raw:.3f}"),
        ],
    )


if __name__ == "__main__":
    main()
