"""The worker's own metrics, and its host's, for the scheduler to pass on.

The worker accepts no connections, so the scheduler fetches both through
the worker's capability: the worker's registry rendered as text, and the
text of the host's prometheus-node-exporter, read from loopback.
"""

from __future__ import annotations

import aiohttp
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from build_api.buckets import BUILD_DURATION_BUCKETS
from build_api.errors import ServiceError

DEFAULT_NODE_EXPORTER_URL = "http://127.0.0.1:9100/metrics"
NODE_EXPORTER_TIMEOUT_SECONDS = 5.0
FAST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.accepted = Counter(
            "build_worker_jobs_accepted", "Jobs this worker took from its pool.",
            registry=self.registry,
        )  # fmt: skip
        self.running = Gauge(
            "build_worker_jobs_running", "Jobs running on this worker now.",
            registry=self.registry,
        )  # fmt: skip
        self.build_duration = Histogram(
            "build_worker_build_duration_seconds",
            "Time spent in docker build, by result: succeeded, failed or cancelled.",
            ["result"], buckets=BUILD_DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.push_duration = Histogram(
            "build_worker_push_duration_seconds",
            "Time spent pushing images, retries included, by result.",
            ["result"], buckets=FAST_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.git_fetch_duration = Histogram(
            "build_worker_git_fetch_duration_seconds",
            "Time spent fetching repositories into the local mirrors.",
            buckets=FAST_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def render(self) -> tuple[str, str]:
        return CONTENT_TYPE_LATEST, generate_latest(self.registry).decode()


async def fetch_host_metrics(url: str) -> tuple[str, str]:
    """The node exporter's content type and text; ServiceError if unreachable."""
    timeout = aiohttp.ClientTimeout(total=NODE_EXPORTER_TIMEOUT_SECONDS)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(url) as response:
                if response.status != 200:
                    raise ServiceError(
                        f"the node exporter at {url} answered {response.status}"
                    )
                content_type = response.headers.get("Content-Type", "text/plain")
                return content_type, await response.text()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise ServiceError(f"cannot read the node exporter at {url}: {exc}") from None
