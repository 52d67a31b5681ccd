"""Dispatch rate: jobs a second from submit to result, against raw echo.

A real scheduler process; 100 synthetic workers (written against the public
schema, each finishing a job at once with a one-line log) in 4 processes;
2 client processes submitting 20,000 jobs in all and waiting for each
result. The baseline is the rate of concurrent Cap'n Proto echo calls over
TLS in this run. Run from the repository root:

    .venv/bin/python bench/dispatch.py [--jobs N]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import capnp
from common import (
    echo_rate,
    gather_limited,
    rss_kib,
    scheduler,
    synthetic_worker_processes,
    table,
)
from tests.synthetic import simple_description

from build_api import schema
from build_api.rpc import connect_and_restore, detached
from build_api.sturdy import read_cap_file

CLIENTS = 2
CONCURRENCY = 400


async def client(cap: str, jobs: int) -> None:
    """Submit ``jobs`` jobs and wait for every result (one client process)."""
    connection, submission = await connect_and_restore(
        read_cap_file(Path(cap)), schema.build.Submission
    )
    description = simple_description()

    async def one(_: int) -> None:
        ticket = detached((await submission.submit("linux", description, False)).ticket)
        outcome = (await ticket.job().job.result()).outcome
        assert outcome.which() == "success"

    await gather_limited(jobs, CONCURRENCY, one)
    connection.close()


def run(jobs: int, workers: int, processes: int) -> dict[str, float]:
    """Dispatch ``jobs`` through ``workers`` synthetic workers; the figures."""
    echo = asyncio.run(capnp.run(echo_rate(20_000, CONCURRENCY)))
    with scheduler() as cluster:
        pid = cluster.scheduler.popen.pid
        idle_rss = rss_kib(pid)
        with synthetic_worker_processes(
            cluster, processes=processes, workers_each=workers // processes
        ):
            time.sleep(1)
            connected_rss = rss_kib(pid)
            per_client = jobs // CLIENTS
            started = time.perf_counter()
            clients = [
                subprocess.Popen([sys.executable, __file__, "--client",
                                  str(cluster.cap("submission")), str(per_client)])
                for _ in range(CLIENTS)
            ]  # fmt: skip
            for popen in clients:
                assert popen.wait() == 0
            elapsed = time.perf_counter() - started
    return {
        "jobs": per_client * CLIENTS,
        "rate": per_client * CLIENTS / elapsed,
        "echo": echo,
        "kib_per_worker": (connected_rss - idle_rss) / workers,
        "rss_mib": connected_rss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument(
        "--client", nargs=2, metavar=("CAP", "JOBS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.client:
        asyncio.run(capnp.run(client(args.client[0], int(args.client[1]))))
        return
    figures = run(args.jobs, args.workers, processes=4)
    table(
        f"dispatch: {figures['jobs']:.0f} jobs, {args.workers} synthetic workers",
        [
            ("jobs/s, submit to result", f"{figures['rate']:,.0f}"),
            ("echo calls/s over TLS", f"{figures['echo']:,.0f}"),
            ("ratio dispatch / echo", f"{figures['rate'] / figures['echo']:.3f}"),
        ],
    )


if __name__ == "__main__":
    main()
