"""What the benchmarks share: processes, synthetic workers, figures.

Every benchmark reports its figures next to a baseline measured in the same
run on the same machine, so a busy machine moves both and the ratio holds.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import capnp  # noqa: E402
from tests.cluster import Cluster, free_port, wait_for  # noqa: E402

from build_api.keys import SecretKey  # noqa: E402
from build_api.rpc import connect, serve  # noqa: E402
from build_api.sturdy import SturdyRef  # noqa: E402

ECHO = capnp.load(str(Path(__file__).with_name("echo.capnp")))


@contextmanager
def scheduler(*args: str) -> Iterator[Cluster]:
    """A real scheduler process in a temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), scheduler_args=list(args))
        cluster.start_scheduler()
        try:
            yield cluster
        finally:
            cluster.stop_all()


@contextmanager
def synthetic_worker_processes(
    cluster: Cluster,
    *,
    processes: int,
    workers_each: int,
    capacity: int = 1,
    extra: tuple[str, ...] = (),
) -> Iterator[None]:
    """Processes each running ``workers_each`` synthetic workers."""
    popens = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "synthetic_workers.py"),
             str(cluster.cap("pool-linux")), f"--prefix=p{i}-",
             f"--count={workers_each}", f"--capacity={capacity}", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for i in range(processes)
    ]  # fmt: skip
    total = processes * workers_each
    try:

        def registered() -> bool:
            if any(popen.poll() is not None for popen in popens):
                raise RuntimeError("a synthetic worker process exited")
            return cluster.scheduler.log.count("Registered new worker") >= total

        wait_for(registered, f"{total} workers to register", timeout=300)
        yield
    finally:
        for popen in popens:
            popen.terminate()
        for popen in popens:
            popen.wait(30)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def gather_limited(
    count: int, limit: int, make: Callable[[int], Awaitable[Any]]
) -> list[Any]:
    """Run ``make(i)`` for each i, at most ``limit`` at a time."""
    semaphore = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with semaphore:
            return await make(i)

    return await asyncio.gather(*(one(i) for i in range(count)))


class EchoServer(ECHO.Echo.Server):  # type: ignore[misc,name-defined]
    async def echo(self, data: bytes, **_: Any) -> bytes:
        return data


async def echo_rate(calls: int, concurrency: int, payload: bytes = b"x") -> float:
    """Calls a second to an Echo server over TLS on loopback (this process)."""
    with tempfile.TemporaryDirectory() as tmp:
        key = SecretKey.load_or_generate(Path(tmp) / "key.pem")
    port = free_port()
    server = await serve("127.0.0.1", port, key.server_ssl_context(),
                         lambda peer: EchoServer())  # fmt: skip
    try:
        ref = SturdyRef(key.fingerprint, "127.0.0.1", port, b"unused")
        connection = await connect(ref)
        echo = connection._client.bootstrap().cast_as(ECHO.Echo)
        started = time.perf_counter()
        await gather_limited(calls, concurrency, lambda i: echo.echo(payload))
        elapsed = time.perf_counter() - started
        connection.close()
    finally:
        server.close()
    return calls / elapsed


def raw_tls_rate(total_bytes: int, chunk: int = 64 * 1024) -> float:
    """MB/s through a TLS socket on loopback, between two processes."""
    script = (
        "import socket,ssl,sys\n"
        "s=socket.create_connection(('127.0.0.1',int(sys.argv[1])))\n"
        "c=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT);c.check_hostname=False;"
        "c.verify_mode=ssl.CERT_NONE\n"
        "t=c.wrap_socket(s)\nn=0\n"
        "while True:\n d=t.recv(1<<20)\n if not d: break\n n+=len(d)\n"
        "print(n)\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        key = SecretKey.load_or_generate(Path(tmp) / "key.pem")
        context = key.server_ssl_context()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    reader = subprocess.Popen([sys.executable, "-c", script, str(port)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    conn, _ = listener.accept()
    tls = context.wrap_socket(conn, server_side=True)
    data = os.urandom(chunk)
    started = time.perf_counter()
    sent = 0
    while sent < total_bytes:
        tls.sendall(data)
        sent += chunk
    tls.close()
    received = int(reader.communicate()[0])
    elapsed = time.perf_counter() - started
    listener.close()
    assert received == sent
    return sent / elapsed / 1e6


def table(title: str, rows: list[tuple[str, str]]) -> None:
    print(title)
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        print(f"  {name:<{width}}{value:>14}")
    print()


def median(values: list[float]) -> float:
    return statistics.median(values)
