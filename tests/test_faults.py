"""Lost, frozen and replaced workers, with real processes: no job is lost."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, running_commands, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]

FAST_HEARTBEAT = ["--heartbeat-interval=1", "--heartbeat-timeout=1"]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator:
    clusters: list[Cluster] = []

    def make(*scheduler_args: str) -> Cluster:
        cluster = Cluster(
            tmp_path / f"c{len(clusters)}", scheduler_args=list(scheduler_args)
        )
        clusters.append(cluster)
        cluster.start_scheduler()
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop_all()


def left_pool_after(cluster: Cluster, worker: str, since: float) -> float:
    """Seconds from ``since`` until the scheduler logged that the worker left."""
    wait_for(lambda: f'Worker "{worker}" left pool' in cluster.scheduler.log,
             f"the scheduler to notice that {worker} is gone", timeout=60)  # fmt: skip
    return time.monotonic() - since


def test_killed_worker_is_noticed_at_once_and_its_job_runs_elsewhere(
    make_cluster, dockerfile
) -> None:
    cluster = make_cluster()
    doomed = cluster.start_worker("w1")
    job = cluster.submit_in_background(
        dockerfile("FROM busybox\nRUN echo begin && sleep 4 && echo end-of-build\n")
    )
    wait_for(lambda: "sleep 4" in running_commands(), "the RUN step to start")
    cluster.start_worker("w2")
    killed_at = time.monotonic()
    doomed.stop(signal.SIGKILL)
    assert left_pool_after(cluster, "w1", killed_at) < 2
    out, err = job.communicate(timeout=120)
    assert job.returncode == 0, err
    assert (
        "worker w1 was lost: its connection closed; trying again on the next free "
        in out
    )
    assert "(attempt 2 of 2)" in out
    assert "Building on w2" in out
    assert re.findall(r"^end-of-build$", out, re.M) == ["end-of-build"]
    assert out.strip().splitlines()[-1].startswith("sha256:")


def test_job_fails_clearly_once_its_retries_are_used(make_cluster, dockerfile) -> None:
    cluster = make_cluster("--job-retries=0")
    worker = cluster.start_worker("w1")
    job = cluster.submit_in_background(
        dockerfile("FROM busybox\nRUN echo doomed && sleep 600\n")
    )
    wait_for(lambda: "sleep 600" in running_commands(), "the RUN step to start")
    worker.stop(signal.SIGKILL)
    out, err = job.communicate(timeout=60)
    assert job.returncode == 1
    reason = "worker w1 was lost: its connection closed; the job was lost with it"
    assert f"{reason} after 1 attempt" in err
    assert reason in out  # the log says it too
    wait_for(lambda: "sleep 600" not in running_commands(), "the build container to go")


def test_frozen_worker_is_dropped_by_the_heartbeat_and_its_late_result_ignored(
    make_cluster, dockerfile
) -> None:
    cluster = make_cluster(*FAST_HEARTBEAT)
    frozen = cluster.start_worker("w1")
    job = cluster.submit_in_background(
        dockerfile("FROM busybox\nRUN echo begin && sleep 3 && echo end-of-build\n")
    )
    wait_for(lambda: "sleep 3" in running_commands(), "the RUN step to start")
    cluster.start_worker("w2")
    frozen_at = time.monotonic()
    frozen.popen.send_signal(signal.SIGSTOP)
    try:
        assert left_pool_after(cluster, "w1", frozen_at) < 5
        out, err = job.communicate(timeout=120)
    finally:
        frozen.popen.send_signal(signal.SIGCONT)
    assert job.returncode == 0, err
    assert (
        "did not answer a ping within 1 s; trying again on the next free worker" in out
    )
    assert "Building on w2" in out
    # Woken up, w1 finds its session gone and comes back as a new one; the
    # build it had finished meanwhile is never reported as the job's result.
    wait_for(lambda: cluster.scheduler.log.count('Registered new worker "w1"') == 2,
             "w1 to register again")  # fmt: skip
    job_id = re.search(r"Job (\w+) queued", err).group(1)  # type: ignore[union-attr]
    assert f"Job {job_id} on w1" not in cluster.scheduler.log
    assert f"Job {job_id} on w2: succeeded" in cluster.scheduler.log


def test_restarted_worker_takes_over_its_stale_session(
    make_cluster, dockerfile
) -> None:
    cluster = make_cluster()
    old = cluster.start_worker("w1")
    old.popen.send_signal(signal.SIGSTOP)  # alive on paper, answering nothing
    try:
        cluster.start_worker("w1")  # the same machine, restarted
        assert "a new worker registered under its name" in cluster.scheduler.log
    finally:
        old.popen.send_signal(signal.SIGKILL)
        old.popen.send_signal(signal.SIGCONT)
    ok = cluster.submit(dockerfile("FROM busybox\nRUN echo new-session-works\n"))
    assert ok.returncode == 0, ok.stderr


def test_client_reports_a_lost_scheduler_and_exits_2(make_cluster, dockerfile) -> None:
    cluster = make_cluster()
    cluster.start_worker("w1")
    job = cluster.submit_in_background(
        dockerfile("FROM busybox\nRUN echo waiting && sleep 600\n")
    )
    wait_for(lambda: "sleep 600" in running_commands(), "the RUN step to start")
    cluster.scheduler.stop(signal.SIGKILL)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: lost the scheduler: the connection was lost; ")
    # the job is kept in the state directory: the client says how to follow it
    assert f"build-client attach {cluster.cap('submission')} " in last
    # The worker, cut off from its scheduler, stops the build.
    wait_for(lambda: "sleep 600" not in running_commands(), "the build to stop")
