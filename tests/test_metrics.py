"""Prometheus endpoints, scraped after real builds, and a real Prometheus."""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, wait_for
from tests.services import NodeExporter, Prometheus

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

HANGING_WORKER = [
    sys.executable,
    str(Path(__file__).parent / "hanging_metrics_worker.py"),
]


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text; 0 if it is absent."""
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


@pytest.fixture
def node_exporter() -> Iterator[NodeExporter]:
    exporter = NodeExporter()
    yield exporter
    exporter.stop()


def run_mixed_jobs(cluster: Cluster, dockerfile) -> None:
    """Two builds that succeed and one that fails."""
    for i in range(2):
        ok = cluster.submit(dockerfile(f"FROM busybox\nRUN echo ok {i}\n", f"D{i}"))
        assert ok.returncode == 0, ok.stderr
    failed = cluster.submit(dockerfile("FROM busybox\nRUN exit 1\n", "Dfail"))
    assert failed.returncode == 1


def test_scheduler_and_worker_figures_follow_the_builds(
    cluster: Cluster, dockerfile
) -> None:
    cluster.start_worker("w1")
    run_mixed_jobs(cluster, dockerfile)

    status, text = cluster.http_get("/metrics")
    assert status == 200
    assert sample(text, "build_scheduler_jobs_submitted_total", pool="linux") == 3
    assert sample(text, "build_scheduler_jobs_accepted_total", pool="linux") == 3
    finished = "build_scheduler_jobs_finished_total"
    assert sample(text, finished, pool="linux", result="succeeded") == 2
    assert sample(text, finished, pool="linux", result="failed") == 1
    assert sample(text, "build_scheduler_queue_wait_seconds_count", pool="linux") == 3
    duration = "build_scheduler_job_duration_seconds_count"
    assert sample(text, duration, pool="linux", result="succeeded") == 2
    assert sample(text, "build_scheduler_workers", pool="linux", state="idle") == 1
    assert sample(text, "build_scheduler_capacity", pool="linux") == 1
    assert (
        sample(text, "build_scheduler_queue_length", pool="linux", priority="normal")
        == 0
    )

    status, text = cluster.http_get("/pool/linux/worker/w1/metrics")
    assert status == 200
    assert sample(text, "build_worker_jobs_accepted_total") == 3
    assert sample(text, "build_worker_jobs_running") == 0
    build = "build_worker_build_duration_seconds_count"
    assert sample(text, build, result="succeeded") == 2
    assert sample(text, build, result="failed") == 1


def test_queue_and_cancel_figures(cluster: Cluster, dockerfile) -> None:
    # No worker: both jobs wait, one urgent; then one is cancelled.
    urgent = cluster.submit_in_background(
        dockerfile("FROM busybox\n", "Du"), "--urgent"
    )
    normal = cluster.submit_in_background(dockerfile("FROM busybox\n", "Dn"))
    wait_for(lambda: "2 queued" in cluster.show("linux"), "both jobs to queue")
    _, text = cluster.http_get("/metrics")
    queue = "build_scheduler_queue_length"
    assert sample(text, queue, pool="linux", priority="urgent") == 1
    assert sample(text, queue, pool="linux", priority="normal") == 1
    urgent.send_signal(2)
    urgent.communicate(timeout=60)
    _, text = cluster.http_get("/metrics")
    finished = "build_scheduler_jobs_finished_total"
    assert sample(text, finished, pool="linux", result="cancelled") == 1
    assert sample(text, queue, pool="linux", priority="urgent") == 0
    normal.kill()
    normal.communicate()


def test_host_metrics_come_from_the_node_exporter(
    cluster: Cluster, node_exporter: NodeExporter
) -> None:
    cluster.start_worker("w1", extra=[f"--node-exporter-url={node_exporter.url}"])
    status, text = cluster.http_get("/pool/linux/worker/w1/host-metrics")
    assert status == 200
    assert "node_cpu_seconds_total" in text
    assert "node_memory_MemTotal_bytes" in text


def test_unknown_pool_or_worker_is_404(cluster: Cluster) -> None:
    assert cluster.http_get("/pool/nope/worker/w1/metrics") == (
        404, "unknown pool 'nope'\n",
    )  # fmt: skip
    assert cluster.http_get("/pool/linux/worker/ghost/host-metrics") == (
        404, "worker 'ghost' is not connected to pool linux\n",
    )  # fmt: skip


def test_unreachable_node_exporter_is_502(cluster: Cluster) -> None:
    cluster.start_worker("w1", extra=["--node-exporter-url=http://127.0.0.1:1/metrics"])
    status, text = cluster.http_get("/pool/linux/worker/w1/host-metrics")
    assert status == 502
    assert "cannot read the node exporter at http://127.0.0.1:1/metrics" in text


def test_hanging_worker_times_out_and_blocks_nothing_else(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, scheduler_args=["--worker-metrics-timeout=2"])
    cluster.start_scheduler()
    try:
        cluster.start_worker("hang", program=HANGING_WORKER)
        hung: list[tuple[int, str]] = []
        started = time.monotonic()
        thread = threading.Thread(
            target=lambda: hung.append(
                cluster.http_get("/pool/linux/worker/hang/metrics")
            )
        )
        thread.start()
        time.sleep(0.5)
        status, _ = cluster.http_get("/metrics", timeout=1)
        assert status == 200 and thread.is_alive()  # answered during the hang
        thread.join(30)
        assert hung == [(504, "worker hang did not answer in 2 s\n")]
        assert 1.5 < time.monotonic() - started < 10
    finally:
        cluster.stop_all()


def test_a_real_prometheus_scrapes_the_scheduler(
    cluster: Cluster, dockerfile, tmp_path: Path
) -> None:
    cluster.start_worker("w1")
    for i in range(2):
        ok = cluster.submit(dockerfile(f"FROM busybox\nRUN echo p{i}\n", f"P{i}"))
        assert ok.returncode == 0, ok.stderr
    prometheus = Prometheus(
        tmp_path / "prometheus", f"127.0.0.1:{cluster.metrics_port}"
    )
    try:
        query = 'build_scheduler_jobs_finished_total{pool="linux",result="succeeded"}'
        wait_for(
            lambda: bool(prometheus.query(query)), "Prometheus to scrape", timeout=60
        )
        [series] = prometheus.query(query)
        assert float(series["value"][1]) == 2  # type: ignore[index]
        [up] = prometheus.query('up{job="build-scheduler"}')
        assert up["value"][1] == "1"  # type: ignore[index]
    finally:
        prometheus.stop()
