"""Latency on an idle pool: submit to start, and submit to result.

A real scheduler process and one synthetic worker (it finishes each job at
once with a one-line log). One client submits jobs one after another and
times when the job starts (``Ticket.job`` resolves) and when its result
arrives. The baseline is the round trip of one echo call over TLS. Run from
the repository root:

    .venv/bin/python bench/latency.py [--jobs N]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import capnp
from common import ECHO, percentile, scheduler, synthetic_worker_processes, table
from tests.cluster import free_port
from tests.synthetic import simple_description

from build_api import schema
from build_api.keys import SecretKey
from build_api.rpc import connect, connect_and_restore, serve
from build_api.sturdy import SturdyRef, read_cap_file


async def echo_round_trips(count: int) -> list[float]:
    import tempfile
    from pathlib import Path

    from common import EchoServer

    with tempfile.TemporaryDirectory() as tmp:
        key = SecretKey.load_or_generate(Path(tmp) / "key.pem")
    port = free_port()
    server = await serve("127.0.0.1", port, key.server_ssl_context(),
                         lambda peer: EchoServer())  # fmt: skip
    connection = await connect(SturdyRef(key.fingerprint, "127.0.0.1", port, b"x"))
    echo = connection._client.bootstrap().cast_as(ECHO.Echo)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await echo.echo(b"x")
        times.append(time.perf_counter() - started)
    connection.close()
    server.close()
    return times


async def measure(cap: str, jobs: int) -> tuple[list[float], list[float]]:
    from pathlib import Path

    connection, submission = await connect_and_restore(
        read_cap_file(Path(cap)), schema.build.Submission
    )
    description = simple_description()
    to_start, to_result = [], []
    for i in range(jobs + 20):
        started = time.perf_counter()
        ticket = (await submission.submit("linux", description, False)).ticket
        job = (await ticket.job()).job
        began = time.perf_counter()
        await job.result()
        ended = time.perf_counter()
        if i >= 20:  # the first ones warm the connection up
            to_start.append(began - started)
            to_result.append(ended - started)
    connection.close()
    return to_start, to_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    jobs = parser.parse_args().jobs
    echo = asyncio.run(capnp.run(echo_round_trips(jobs)))
    with (
        scheduler() as cluster,
        synthetic_worker_processes(cluster, processes=1, workers_each=1),
    ):
        to_start, to_result = asyncio.run(
            capnp.run(measure(str(cluster.cap("submission")), jobs))
        )
    ms = 1000.0
    table(
        f"latency on an idle pool, {jobs} jobs one after another (ms)",
        [
            ("submit to start, p50", f"{percentile(to_start, 0.5) * ms:.2f}"),
            ("submit to start, p99", f"{percentile(to_start, 0.99) * ms:.2f}"),
            ("submit to result, p50", f"{percentile(to_result, 0.5) * ms:.2f}"),
            ("submit to result, p99", f"{percentile(to_result, 0.99) * ms:.2f}"),
            ("echo round trip, p50", f"{percentile(echo, 0.5) * ms:.2f}"),
            ("submit to start / echo, p50",
             f"{percentile(to_start, 0.5) / percentile(echo, 0.5):.1f}"),
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
