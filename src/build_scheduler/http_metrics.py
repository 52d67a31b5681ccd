"""Prometheus endpoints: the scheduler's metrics, and each worker's through it.

Workers accept no connections, so Prometheus cannot scrape them directly.
The scheduler serves their metrics on their behalf, asking each worker over
its own Cap'n Proto connection when Prometheus asks. A worker that fails or
is slow to answer costs only its own request: every request runs in its own
task, with a deadline.

These endpoints have no authentication: bind them to an address only
Prometheus can reach.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import capnp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from build_api.rpc import remote_message
from build_scheduler.scheduler import Scheduler

logger = logging.getLogger(__name__)

DEFAULT_WORKER_TIMEOUT_SECONDS = 10.0
# A worker's content type goes into our reply's headers: printable ASCII only.
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{1,200}")


def make_app(
    scheduler: Scheduler, *, worker_timeout: float = DEFAULT_WORKER_TIMEOUT_SECONDS
) -> web.Application:
    async def own_metrics(request: web.Request) -> web.Response:
        body = generate_latest(scheduler.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def worker_metrics(request: web.Request) -> web.Response:
        return await _from_worker(request, "agent")

    async def host_metrics(request: web.Request) -> web.Response:
        return await _from_worker(request, "host")

    async def _from_worker(request: web.Request, source: str) -> web.Response:
        pool, name = request.match_info["pool"], request.match_info["worker"]
        try:
            worker: Any = scheduler.worker_capability(pool, name)
        except LookupError as exc:
            return web.Response(status=404, text=f"{exc}\n")
        try:
            reply = await asyncio.wait_for(worker.metrics(source), worker_timeout)
        except TimeoutError:
            logger.warning("Worker %s of pool %s did not send its %s metrics in %.0f s",
                           name, pool, source, worker_timeout)  # fmt: skip
            return web.Response(
                status=504,
                text=f"worker {name} did not answer in {worker_timeout:.0f} s\n",
            )
        except capnp.KjException as exc:
            message = remote_message(exc)
            logger.warning("Worker %s of pool %s could not send its %s metrics: %s",
                           name, pool, source, message)  # fmt: skip
            return web.Response(status=502, text=f"worker {name}: {message}\n")
        content_type = str(reply.contentType)
        if not _HEADER_VALUE.fullmatch(content_type):
            logger.warning(
                "Worker %s of pool %s sent a malformed content type", name, pool
            )
            return web.Response(
                status=502, text=f"worker {name}: malformed content type\n"
            )
        return web.Response(
            body=str(reply.data).encode(), headers={"Content-Type": content_type}
        )

    app = web.Application()
    app.router.add_get("/metrics", own_metrics)
    app.router.add_get("/pool/{pool}/worker/{worker}/metrics", worker_metrics)
    app.router.add_get("/pool/{pool}/worker/{worker}/host-metrics", host_metrics)
    return app


async def start_metrics_server(
    scheduler: Scheduler, host: str, port: int, *, worker_timeout: float
) -> web.AppRunner:
    """Serve the endpoints; the caller cleans the returned runner up."""
    runner = web.AppRunner(make_app(scheduler, worker_timeout=worker_timeout),
                           access_log=None)  # fmt: skip
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    logger.info("Prometheus metrics on http://%s:%d/metrics", host or "0.0.0.0", port)
    return runner
