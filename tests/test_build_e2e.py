"""Real builds: scheduler, workers and client processes on a real engine."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time

import capnp
import pytest

from build_api import schema
from build_api.rpc import connect_and_restore, remote_message
from build_api.sturdy import read_cap_file
from tests.cluster import Cluster, running_commands, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_engine")]


def test_seed_example_builds_and_streams_its_log(cluster: Cluster, dockerfile) -> None:
    cluster.start_worker("w1")
    result = cluster.submit(dockerfile("FROM busybox\nRUN date -u +built-at-%Y\n"))
    assert result.returncode == 0, result.stderr
    assert "built-at-20" in result.stdout
    assert re.search(r"queued in pool linux", result.stderr)
    assert "building on worker w1" in result.stderr
    image_id = result.stdout.strip().splitlines()[-1]
    assert image_id.startswith("sha256:")
    inspect = subprocess.run(
        ["docker", "image", "inspect", image_id], capture_output=True
    )
    assert inspect.returncode == 0


def test_failing_run_step_exits_1_and_worker_goes_on(
    cluster: Cluster, dockerfile
) -> None:
    cluster.start_worker("w1")
    failed = cluster.submit(dockerfile("FROM busybox\nRUN exit 3\n", "Dockerfile.fail"))
    assert failed.returncode == 1
    assert "returned a non-zero code: 3" in failed.stdout + failed.stderr
    ok = cluster.submit(dockerfile("FROM busybox\nRUN echo after-failure\n"))
    assert ok.returncode == 0, ok.stderr
    assert "after-failure" in ok.stdout


def test_dockerfile_syntax_error_is_a_clear_failure(
    cluster: Cluster, dockerfile
) -> None:
    cluster.start_worker("w1")
    result = cluster.submit(dockerfile("FROM busybox\nNOTACOMMAND foo\n"))
    assert result.returncode == 1
    assert "unknown instruction: NOTACOMMAND" in result.stderr


def test_unknown_pool_names_the_known_ones_and_queues_nothing(
    cluster: Cluster, dockerfile
) -> None:
    result = cluster.submit(dockerfile("FROM busybox\n"), pool="nope")
    assert result.returncode == 2
    assert result.stderr.strip() == "Error: unknown pool 'nope' (known pools: linux)"
    assert "0 queued" in cluster.show("linux")


def run_stamps(output: str) -> dict[str, tuple[float, float]]:
    """The start and end times that the jobs below print, by job name."""
    stamps: dict[str, dict[str, float]] = {}
    for kind, name, value in re.findall(
        r"^(start|end) (\w+) (\d+\.\d+)$", output, re.M
    ):
        stamps.setdefault(name, {})[kind] = float(value)
    return {name: (s["start"], s["end"]) for name, s in stamps.items()}


def timed_job(name: str) -> str:
    # busybox date has no sub-second format: read the kernel's clock instead.
    return (
        "FROM busybox\n"
        f"RUN echo start {name} $(cut -d' ' -f1 /proc/uptime) && sleep 2 && "
        f"echo end {name} $(cut -d' ' -f1 /proc/uptime)\n"
    )


def submit_both(cluster: Cluster, dockerfile) -> dict[str, tuple[float, float]]:
    procs = []
    for name in ("one", "two"):
        path = dockerfile(timed_job(name), f"Dockerfile.{name}")
        procs.append(cluster.submit_in_background(path, "--no-cache"))
    output = ""
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        output += out
    return run_stamps(output)


def test_capacity_one_runs_jobs_one_after_the_other(
    cluster: Cluster, dockerfile
) -> None:
    cluster.start_worker("w1", capacity=1)
    stamps = submit_both(cluster, dockerfile)
    (s1, e1), (s2, e2) = sorted(stamps.values())
    assert s2 >= e1


def test_capacity_two_overlaps_jobs(cluster: Cluster, dockerfile) -> None:
    cluster.start_worker("w1", capacity=2)
    stamps = submit_both(cluster, dockerfile)
    (s1, e1), (s2, e2) = sorted(stamps.values())
    assert s2 < e1


def test_two_workers_in_a_pool_both_take_jobs(cluster: Cluster, dockerfile) -> None:
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    procs = [
        cluster.submit_in_background(dockerfile(timed_job(f"j{i}"), f"Dockerfile.{i}"))
        for i in range(2)
    ]
    workers = set()
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        workers.update(re.findall(r"building on worker (\w+)", err))
    assert workers == {"w1", "w2"}


def test_ctrl_c_on_a_queued_job_takes_it_off_the_queue(
    cluster: Cluster, dockerfile
) -> None:
    # No worker: the job stays queued.
    proc = cluster.submit_in_background(dockerfile("FROM busybox\n"))
    wait_for(lambda: "1 queued" in cluster.show("linux"), "the job to be queued")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Cancelled." in err
    assert "0 queued" in cluster.show("linux")


def test_ctrl_c_on_a_running_build_stops_it(cluster: Cluster, dockerfile) -> None:
    worker = cluster.start_worker("w1")
    sleeper = dockerfile("FROM busybox\nRUN echo sleeping && sleep 600\n")
    proc = cluster.submit_in_background(sleeper)
    wait_for(lambda: "sleep 600" in running_commands(), "the RUN step to start")
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    wait_for(
        lambda: "cancelled" in worker.log, "the worker to stop the build", timeout=60
    )
    assert time.monotonic() - started < 60
    wait_for(lambda: "sleep 600" not in running_commands(), "the build container to go")
    # The slot is free again: the next job runs.
    ok = cluster.submit(
        dockerfile("FROM busybox\nRUN echo next-one\n", "Dockerfile.next")
    )
    assert ok.returncode == 0, ok.stderr
    assert "next-one" in ok.stdout


async def test_failing_requests_answer_only_their_caller(
    cluster: Cluster, dockerfile
) -> None:
    cluster.start_worker("w1")
    ref = read_cap_file(cluster.cap("submission"))
    async with capnp.kj_loop():
        connection, submission = await connect_and_restore(ref, schema.build.Submission)
        description = schema.build.JobDescription.new_message()
        description.dockerfile.contents = "FROM busybox\n"
        calls = [
            submission.submit(f"missing-{i}", description, False) for i in range(100)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        connection.close()
    assert all(isinstance(r, capnp.KjException) for r in results)
    assert all("unknown pool 'missing-" in remote_message(r) for r in results)
    ok = cluster.submit(dockerfile("FROM busybox\nRUN echo still-serving\n"))
    assert ok.returncode == 0, ok.stderr
    assert "still-serving" in ok.stdout


def test_workers_survive_a_scheduler_restart(cluster: Cluster, dockerfile) -> None:
    worker = cluster.start_worker("w1")
    cluster.scheduler.stop()
    cluster.start_scheduler()
    wait_for(
        lambda: 'Registered new worker "w1"' in cluster.scheduler.log,
        "the worker to come back by itself",
    )
    ok = cluster.submit(dockerfile("FROM busybox\nRUN echo after-restart\n"))
    assert ok.returncode == 0, ok.stderr
    assert "after-restart" in ok.stdout
    # A worker restarted by hand against the same .cap file works too.
    worker.stop()
    cluster.start_worker("w1")
    again = cluster.submit(dockerfile("FROM busybox\nRUN echo restarted-worker\n"))
    assert again.returncode == 0, again.stderr


def test_killed_client_cancels_its_running_build(cluster: Cluster, dockerfile) -> None:
    worker = cluster.start_worker("w1")
    proc = cluster.submit_in_background(
        dockerfile("FROM busybox\nRUN echo orphan && sleep 600\n")
    )
    wait_for(lambda: "sleep 600" in running_commands(), "the RUN step to start")
    proc.kill()  # no chance to cancel: the scheduler sees the connection drop
    proc.communicate()
    wait_for(lambda: "cancelled" in worker.log, "the worker to stop the build")
    wait_for(lambda: "sleep 600" not in running_commands(), "the build container to go")
    assert "let go of job" in cluster.scheduler.log


def image_file(image_id: str, path: str) -> str:
    run = subprocess.run(["docker", "run", "--rm", image_id, "cat", path],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return run.stdout


def test_build_args_split_on_the_first_equals_sign(
    cluster: Cluster, dockerfile
) -> None:
    cluster.start_worker("w1")
    path = dockerfile(
        "FROM busybox\nARG FIRST\nARG SECOND\n"
        'RUN printf "%s|%s" "$FIRST" "$SECOND" > /args\n'
    )
    result = cluster.submit(
        path, "--build-arg", "FIRST=a=b c", "--build-arg", "SECOND="
    )
    assert result.returncode == 0, result.stderr
    image_id = result.stdout.strip().splitlines()[-1]
    assert image_file(image_id, "/args") == "a=b c|"


def test_target_builds_only_up_to_that_stage(cluster: Cluster, dockerfile) -> None:
    cluster.start_worker("w1")
    path = dockerfile(
        "FROM busybox AS first\nRUN echo first > /stage\n"
        "FROM busybox AS second\nRUN echo second > /stage\n"
    )
    result = cluster.submit(path, "--target", "first")
    assert result.returncode == 0, result.stderr
    assert image_file(result.stdout.strip().splitlines()[-1], "/stage") == "first\n"


def test_no_cache_runs_every_step_again(cluster: Cluster, dockerfile) -> None:
    cluster.start_worker("w1")
    path = dockerfile("FROM busybox\nRUN echo cached-step\n", cached=True)
    assert cluster.submit(path).returncode == 0
    again = cluster.submit(path)
    assert "Using cache" in again.stdout
    fresh = cluster.submit(path, "--no-cache")
    assert fresh.returncode == 0, fresh.stderr
    assert "Using cache" not in fresh.stdout
    assert "cached-step" in fresh.stdout


def test_squash_works_or_says_why_not(cluster: Cluster, dockerfile) -> None:
    cluster.start_worker("w1")
    result = cluster.submit(dockerfile("FROM busybox\nRUN echo squashed\n"), "--squash")
    experimental = subprocess.run(
        ["docker", "info", "--format", "{{.ExperimentalBuild}}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if experimental == "true":
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 1
        assert "experimental" in result.stderr


def test_second_worker_with_a_live_name_is_refused(
    cluster: Cluster, dockerfile
) -> None:
    first = cluster.start_worker("w1")
    second = cluster.start_worker("w1", wait=False)
    assert second.popen.wait(60) == 2
    assert "a worker named 'w1' is already connected to pool linux" in second.log
    assert first.popen.poll() is None
    ok = cluster.submit(dockerfile("FROM busybox\nRUN echo first-still-works\n"))
    assert ok.returncode == 0, ok.stderr


def test_worker_with_the_wrong_capability_exits_instead_of_retrying(
    cluster: Cluster,
) -> None:
    worker = cluster.start_worker("w1", wait=False, cap=cluster.cap("submission"))
    assert worker.popen.wait(60) == 2
    assert "it cannot be used for registering workers" in worker.log
