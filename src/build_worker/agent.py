"""The worker agent: register with the scheduler and run jobs until stopped.

The agent dials the scheduler named in the pool's `.cap` file, registers,
and runs one loop per unit of capacity; each loop asks for a job, builds
it, and asks again. If the connection is lost, the running builds are
stopped and the agent dials again, waiting longer after each failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import capnp

from build_api import schema
from build_api.errors import ConnectError, PeerKeyMismatchError, ServiceError
from build_api.rpc import (
    connect_and_restore,
    detached,
    is_disconnect,
    remote,
    remote_message,
)
from build_api.sturdy import SturdyRef, read_cap_file
from build_worker.builder import DockerBuilder
from build_worker.git_context import GitMirrors
from build_worker.job import JobEnvironment, WorkerJob, run_job
from build_worker.metrics import (
    DEFAULT_NODE_EXPORTER_URL,
    WorkerMetrics,
    fetch_host_metrics,
)

logger = logging.getLogger(__name__)

RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0


@dataclass(frozen=True)
class WorkerConfig:
    cap_file: Path
    name: str
    capacity: int
    state_dir: Path = Path("var/build-worker")
    docker_host: str | None = None
    build_network: str | None = None
    allowed_pushes: frozenset[str] = frozenset()
    node_exporter_url: str = DEFAULT_NODE_EXPORTER_URL


class WorkerServer(schema.build.Worker.Server):  # type: ignore[misc]
    """What the scheduler may ask of this worker besides jobs."""

    def __init__(self, metrics: WorkerMetrics, node_exporter_url: str) -> None:
        self._metrics = metrics
        self._node_exporter_url = node_exporter_url

    @remote
    async def metrics(self, source: Any, **_: Any) -> tuple[str, str]:
        if source == "agent":
            return self._metrics.render()
        return await fetch_host_metrics(self._node_exporter_url)

    @remote
    async def ping(self, **_: Any) -> None:
        return None


class Agent:
    """Serves the scheduler until a refusal that retrying cannot change.

    Losing the connection is retried, with a growing pause. A refusal (an
    unknown or revoked capability, a name already in use) and a scheduler
    with the wrong key end the agent with a :class:`ServiceError` or a
    :class:`PeerKeyMismatchError`.
    """

    def __init__(self, config: WorkerConfig, ref: SturdyRef) -> None:
        self._config = config
        self._ref = ref
        self._builder = DockerBuilder(
            docker_host=config.docker_host, network_mode=config.build_network
        )
        self._metrics = WorkerMetrics()
        self._env = JobEnvironment(
            worker_name=config.name,
            builder=self._builder,
            mirrors=GitMirrors(
                config.state_dir, fetch_duration=self._metrics.git_fetch_duration
            ),
            allowed_pushes=config.allowed_pushes,
            metrics=self._metrics,
        )

    async def run(self) -> None:
        """Serve the scheduler, reconnecting after each loss, until cancelled."""
        version = await asyncio.to_thread(self._builder.check_engine)
        logger.info("Docker engine %s answers", version)
        delay = RETRY_MIN_SECONDS
        while True:
            try:
                await self._serve_once()
                delay = RETRY_MIN_SECONDS
            except PeerKeyMismatchError:
                raise  # the .cap file names another scheduler: retrying cannot help
            except ConnectError as exc:
                logger.warning("Cannot reach the scheduler: %s", exc)
            # Jitter spreads out a fleet of workers that lost the scheduler together.
            wait = delay * random.uniform(0.5, 1.0)
            logger.info("Reconnecting in %.1f s", wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _serve_once(self) -> None:
        config = self._config
        connection, registration = await connect_and_restore(
            self._ref, schema.build.Registration
        )
        try:
            try:
                server = WorkerServer(self._metrics, config.node_exporter_url)
                reply = await registration.register(
                    config.name, server, config.capacity
                )
            except capnp.KjException as exc:
                if is_disconnect(exc):
                    raise ConnectError("the scheduler closed the connection") from None
                raise ServiceError(
                    f"registration refused: {remote_message(exc)}"
                ) from None
            queue = detached(reply.queue)
            logger.info(
                "Registered as %r with capacity %d", config.name, config.capacity
            )
            slots = [
                asyncio.create_task(self._slot_loop(queue), name=f"slot-{i}")
                for i in range(config.capacity)
            ]
            lost = asyncio.ensure_future(connection.disconnected())
            try:
                done, _ = await asyncio.wait(
                    [lost, *slots], return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    if task is not lost and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
            except capnp.KjException as exc:
                logger.warning("Lost the scheduler: %s", remote_message(exc))
            else:
                logger.warning("Lost the scheduler")
            finally:
                lost.cancel()
                for task in slots:
                    task.cancel()
                await asyncio.gather(*slots, return_exceptions=True)
        finally:
            connection.close()

    async def _slot_loop(self, queue: Any) -> None:
        while True:
            job = WorkerJob()
            logger.info("Requesting a new job...")
            reply = await queue.pop(job)
            logger.info("Got job %s", reply.id)
            self._metrics.accepted.inc()
            await run_job(reply.id, reply.description, job, self._env)


async def run_worker(config: WorkerConfig) -> None:
    """Run the agent until SIGINT or SIGTERM."""
    ref = read_cap_file(config.cap_file)
    agent = asyncio.ensure_future(Agent(config, ref).run())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, agent.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await agent
    logger.info("Worker stopped")
