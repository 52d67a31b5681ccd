"""Dispatch rate: jobs a second from submit to result, against raw echo.

A real scheduler process; 100 synthetic workers (written against the public
schema, each finishing a job at once with a one-line log) in 4 processes;
2 client processes submitting 20,000 jobs in all and waiting for each
result, in two ways: with ``Ticket.result`` (a client that wants only the
outcome), and with ``Ticket.job`` then ``Job.result`` (how a client that
follows the log gets there). The baseline is the rate of concurrent Cap'n
Proto echo calls over TLS, measured before and after the jobs; their mean
is the figure, so a machine that gets busier halfway moves both. Run from
the repository root:

    .venv/bin/python bench/dispatch.py [--jobs N] [--workers N]
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
ECHO_CALLS = 20_000
STYLES = ("result", "job")


async def client(cap: str, jobs: int, style: str) -> None:
    """Submit ``jobs`` jobs and wait for every result (one client process)."""
    connection, submission = await connect_and_restore(
        read_cap_file(Path(cap)), schema.build.Submission
    )
    description = simple_description()

    async def one(_: int) -> None:
        reply = await submission.submit("linux", description, False)
        ticket = detached(reply.ticket)
        if style == "result":
            outcome = (await ticket.result()).outcome
        else:
            outcome = (await ticket.job().job.result()).outcome
        assert outcome.which() == "success"

    await gather_limited(jobs, CONCURRENCY, one)
    connection.close()


def measure_echo() -> float:
    return asyncio.run(capnp.run(echo_rate(ECHO_CALLS, CONCURRENCY)))


def run(jobs: int, workers: int, processes: int) -> dict[str, float]:
    """Dispatch ``jobs`` of each style through ``workers`` synthetic workers."""
    figures: dict[str, float] = {}
    echoes = [measure_echo()]
    with scheduler() as cluster:
        pid = cluster.scheduler.popen.pid
        idle_rss = rss_kib(pid)
        with synthetic_worker_processes(
            cluster, processes=processes, workers_each=workers // processes
        ):
            time.sleep(1)
            connected_rss = rss_kib(pid)
            per_client = jobs // CLIENTS
            for style in STYLES:
                started = time.perf_counter()
                clients = [
                    subprocess.Popen([sys.executable, __file__, "--client",
                                      str(cluster.cap("submission")),
                                      str(per_client), style])
                    for _ in range(CLIENTS)
                ]  # fmt: skip
                for popen in clients:
                    assert popen.wait() == 0
                figures[style] = per_client * CLIENTS / (time.perf_counter() - started)
    echoes.append(measure_echo())
    figures.update(
        jobs=per_client * CLIENTS,
        echo=sum(echoes) / len(echoes),
        echo_low=min(echoes),
        echo_high=max(echoes),
        kib_per_worker=(connected_rss - idle_rss) / workers,
        rss_mib=connected_rss / 1024,
    )
    return figures


def rows(figures: dict[str, float]) -> list[tuple[str, str]]:
    """The lines every dispatch table shares."""
    echo = figures["echo"]
    return [
        ("jobs/s, Ticket.result", f"{figures['result']:,.0f}"),
        ("jobs/s, Ticket.job + Job.result", f"{figures['job']:,.0f}"),
        ("echo calls/s over TLS (mean)", f"{echo:,.0f}"),
        ("echo before / after, lower", f"{figures['echo_low']:,.0f}"),
        ("echo before / after, higher", f"{figures['echo_high']:,.0f}"),
        ("ratio Ticket.result / echo", f"{figures['result'] / echo:.3f}"),
        ("ratio Ticket.job + Job.result / echo", f"{figures['job'] / echo:.3f}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument(
        "--client", nargs=3, metavar=("CAP", "JOBS", "STYLE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.client:
        cap, jobs, style = args.client
        asyncio.run(capnp.run(client(cap, int(jobs), style)))
        return
    figures = run(args.jobs, args.workers, processes=4)
    table(
        f"dispatch: {figures['jobs']:.0f} jobs of each style, "
        f"{args.workers} synthetic workers",
        rows(figures),
    )


if __name__ == "__main__":
    main()
