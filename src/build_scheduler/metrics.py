"""The scheduler's own Prometheus metrics.

Counters and histograms are updated as jobs move; the state of each pool
(queue lengths, workers) is read when Prometheus scrapes, by a collector,
so it can never drift from the pools themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from build_api.buckets import BUILD_DURATION_BUCKETS
from build_scheduler.pool import Pool

# Queue waits take milliseconds to hours.
WAIT_BUCKETS = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, float("inf"),
)  # fmt: skip


class SchedulerMetrics:
    def __init__(self, pools: Callable[[], Mapping[str, Pool]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.submitted = Counter(
            "build_scheduler_jobs_submitted",
            "Jobs accepted into a pool's queue.",
            ["pool"],
            registry=self.registry,
        )
        self.accepted = Counter(
            "build_scheduler_jobs_accepted",
            "Jobs handed to a worker.",
            ["pool"],
            registry=self.registry,
        )
        self.requeued = Counter(
            "build_scheduler_jobs_requeued",
            "Jobs put back in the queue because their worker was lost.",
            ["pool"],
            registry=self.registry,
        )
        self.finished = Counter(
            "build_scheduler_jobs_finished",
            "Jobs that ended, by result: succeeded, failed or cancelled.",
            ["pool", "result"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "build_scheduler_queue_wait_seconds",
            "Time from submission to a worker taking the job.",
            ["pool"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.job_duration = Histogram(
            "build_scheduler_job_duration_seconds",
            "Time from a worker taking the job to its end, by result.",
            ["pool", "result"],
            buckets=BUILD_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(PoolStateCollector(pools))


class PoolStateCollector(Collector):
    """Reads each pool's queue and workers at scrape time."""

    def __init__(self, pools: Callable[[], Mapping[str, Pool]]) -> None:
        self._pools = pools

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queued = GaugeMetricFamily(
            "build_scheduler_queue_length", "Jobs waiting, by priority.",
            labels=["pool", "priority"],
        )  # fmt: skip
        workers = GaugeMetricFamily(
            "build_scheduler_workers",
            "Connected workers, by state: idle, busy, paused.",
            labels=["pool", "state"],
        )
        capacity = GaugeMetricFamily(
            "build_scheduler_capacity", "Builds the connected workers can run at once.",
            labels=["pool"],
        )  # fmt: skip
        for name, pool in self._pools().items():
            urgent, normal = pool.queue_lengths()
            queued.add_metric([name, "urgent"], urgent)
            queued.add_metric([name, "normal"], normal)
            counts = {"idle": 0, "busy": 0, "paused": 0}
            for worker in pool.workers:
                if not worker.active:
                    counts["paused"] += 1
                elif worker.running:
                    counts["busy"] += 1
                else:
                    counts["idle"] += 1
            for state, count in counts.items():
                workers.add_metric([name, state], count)
            capacity.add_metric([name], sum(w.capacity for w in pool.workers))
        yield queued
        yield workers
        yield capacity
