"""Start the scheduler: key, capability files, listener, until a signal."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from build_api import schema
from build_api.address import TcpAddress
from build_api.errors import ConfigError
from build_api.keys import SecretKey
from build_api.restorer import Restorer, Service, ServiceTable
from build_api.rpc import serve
from build_api.sturdy import SturdyRef, write_cap_file
from build_scheduler.clients import DEFAULT_CLIENT, ClientRegistry
from build_scheduler.http_metrics import (
    DEFAULT_WORKER_TIMEOUT_SECONDS,
    start_metrics_server,
)
from build_scheduler.scheduler import DEFAULT_MAX_ATTEMPTS, Scheduler
from build_scheduler.services import AdminServer, RegistrationServer, SubmissionServer
from build_scheduler.sessions import Heartbeat
from build_scheduler.store import Store

logger = logging.getLogger(__name__)

GC_YOUNG_THRESHOLD = 10_000

# How often the cache records and costs are written to the store.
CACHE_SAVE_INTERVAL_SECONDS = 10.0


@dataclass(frozen=True)
class SchedulerConfig:
    secret_key_file: Path
    listen: TcpAddress
    public: TcpAddress
    state_dir: Path
    pools: list[str]
    prometheus: TcpAddress | None = None
    worker_metrics_timeout: float = DEFAULT_WORKER_TIMEOUT_SECONDS
    heartbeat: Heartbeat = Heartbeat()
    job_retries: int = DEFAULT_MAX_ATTEMPTS - 1


def build_services(
    scheduler: Scheduler, key: SecretKey, clients: ClientRegistry
) -> dict[str, tuple[bytes, Service]]:
    """The fixed services, by the file name of their `.cap` file."""
    services: dict[str, tuple[bytes, Service]] = {
        "submission": (
            key.derive_secret("submission"),
            Service(
                "submitting jobs",
                schema.build.Submission,
                lambda peer: SubmissionServer(
                    scheduler, DEFAULT_CLIENT, clients.allowed
                ),
            ),
        ),
        "admin": (
            key.derive_secret("admin"),
            Service(
                "administration",
                schema.build.Admin,
                lambda peer: AdminServer(scheduler, clients),
            ),
        ),
    }
    for pool in scheduler.pools:
        services[f"pool-{pool}"] = (
            key.derive_secret(f"pool-{pool}"),
            Service(
                f"registering workers in pool {pool}",
                schema.build.Registration,
                functools.partial(RegistrationServer, scheduler, pool),
            ),
        )
    return services


async def run_scheduler(config: SchedulerConfig) -> None:
    """Run until SIGINT or SIGTERM."""
    key = SecretKey.load_or_generate(config.secret_key_file)
    logger.info("Server key hash: sha-256:%s", key.fingerprint)
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_dir = config.state_dir / "logs"
    log_dir.mkdir(exist_ok=True, mode=0o700)
    store = Store(config.state_dir / "state.db")
    unfinished = {job.id for job in store.unfinished_jobs()}
    for stale in log_dir.glob("*.log"):  # logs of jobs that ended earlier
        if stale.stem not in unfinished:
            stale.unlink()

    scheduler = Scheduler(
        config.pools,
        log_dir=log_dir,
        heartbeat=config.heartbeat,
        max_attempts=config.job_retries + 1,
        store=store,
    )
    table = ServiceTable()
    clients = ClientRegistry(
        scheduler, table, store,
        make_server=lambda name: SubmissionServer(scheduler, name, clients.allowed),
    )  # fmt: skip
    clients.load()
    services = build_services(scheduler, key, clients)
    for service_id, service in services.values():
        table.add(service_id, service)
    scheduler.client_allowed = clients.allowed
    # Before the jobs of the last run come back: they must stay collectable.
    _tune_garbage_collector()
    scheduler.load_state()

    try:
        server = await serve(
            config.listen.host,
            config.listen.port,
            key.server_ssl_context(),
            lambda peer: Restorer(table, peer),
        )
    except OSError as exc:
        reason = _os_reason(exc)
        raise ConfigError(f"cannot listen on {config.listen}: {reason}") from None
    port = server.sockets[0].getsockname()[1]
    logger.info("Listening on %s", TcpAddress(config.listen.host, port))

    public_port = config.public.port or port
    clients.make_ref = functools.partial(
        SturdyRef, key.fingerprint, config.public.host, public_port
    )
    cap_dir = config.secret_key_file.parent
    for file_stem, (service_id, _) in services.items():
        ref = SturdyRef(key.fingerprint, config.public.host, public_port, service_id)
        path = cap_dir / f"{file_stem}.cap"
        write_cap_file(path, ref)
        logger.info('Wrote capability reference to "%s"', path)

    metrics_runner = None
    if config.prometheus is not None:
        try:
            metrics_runner = await start_metrics_server(
                scheduler,
                config.prometheus.host,
                config.prometheus.port,
                worker_timeout=config.worker_metrics_timeout,
            )
        except OSError as exc:
            server.close()
            reason = _os_reason(exc)
            raise ConfigError(
                f"cannot serve metrics on {config.prometheus}: {reason}"
            ) from None

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    saver = asyncio.create_task(_save_cache_now_and_then(scheduler))
    await stop.wait()
    logger.info("Shutting down")
    saver.cancel()
    scheduler.stop()
    server.close()
    if metrics_runner is not None:
        await metrics_runner.cleanup()


async def _save_cache_now_and_then(scheduler: Scheduler) -> None:
    while True:
        await asyncio.sleep(CACHE_SAVE_INTERVAL_SECONDS)
        scheduler.save_cache()


def _tune_garbage_collector() -> None:
    """Collect garbage less often than Python does by default.

    Every RPC message makes short-lived Python objects (coroutines, tasks,
    readers), and the default threshold of 700 allocations ran a collection
    about once per message: a tenth of the scheduler's time under load.
    What exists once the scheduler is set up (modules, services, clients)
    lives as long as it does, so it is moved out of the collector's sight;
    nothing made per job may exist yet, or it would never be collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD)


def _os_reason(exc: OSError) -> str:
    """The short reason of a socket error (asyncio wraps bind errors in prose)."""
    if isinstance(exc, socket.gaierror):
        return str(exc.strerror)
    return os.strerror(exc.errno) if exc.errno else str(exc)
