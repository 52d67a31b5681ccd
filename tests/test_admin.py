"""Administration through admin.cap, with a real scheduler, workers and builds:
clients and their capabilities, rates, pausing and draining, forgetting,
cache-aware placement, and what a restart of the scheduler keeps."""

from __future__ import annotations

import asyncio
import re
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import capnp
import pytest

from build_api import schema
from build_api.rpc import connect_and_restore, remote_message
from build_api.sturdy import read_cap_file
from tests.cluster import Cluster, wait_for
from tests.synthetic import (
    SyntheticJob,
    SyntheticWorkerServer,
    finish_at_once,
    simple_description,
)

pytestmark = pytest.mark.usefixtures("docker_engine")

QUICK = "FROM busybox\nRUN echo built by $(hostname)\n"
SLOW = "FROM busybox\nRUN sleep 4 && echo slept\n"


def admin(cluster: Cluster, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return cluster.client(*args[:1], cluster.cap("admin"), *args[1:], timeout=120)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def job_id(stderr_or_out: str) -> str:
    match = re.search(r"Job ([0-9a-f]{12})", stderr_or_out)
    assert match, stderr_or_out
    return match.group(1)


def submit_as(
    cluster: Cluster, cap: Path, dockerfile: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return cluster.client("submit", cap, "--pool=linux", dockerfile, *extra)


def submit_as_in_background(
    cluster: Cluster, cap: Path, dockerfile: Path, *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cluster.client_args("submit", cap, "--pool=linux", dockerfile, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_shown(cluster: Cluster, text: str) -> str:
    shown = ""

    def present() -> bool:
        nonlocal shown
        shown = cluster.show("linux")
        return text in shown

    wait_for(present, f"show to say {text!r}", timeout=60)
    return shown


# Clients


def test_a_new_client_gets_its_own_capability_and_can_build(
    cluster: Cluster, tmp_path: Path, dockerfile: Callable[..., Path]
) -> None:
    cluster.start_worker("w1")
    cap = tmp_path / "alice.cap"
    out = ok(admin(cluster, "add-client", "alice", "--output", cap))
    assert f"client alice to {cap}" in out
    assert stat.S_IMODE(cap.stat().st_mode) == 0o600
    assert read_cap_file(cap) != read_cap_file(cluster.cap("submission"))

    built = submit_as(cluster, cap, dockerfile(QUICK))
    assert built.returncode == 0, built.stderr
    assert ok(admin(cluster, "list-clients")).split() == ["alice", "default"]
    again = admin(cluster, "add-client", "alice", "--output", tmp_path / "2.cap")
    assert again.returncode == 2
    assert "client 'alice' already exists" in again.stderr


async def test_removing_a_client_revokes_it_at_once_even_while_connected(
    cluster: Cluster, tmp_path: Path, dockerfile: Callable[..., Path]
) -> None:
    cap = tmp_path / "mallory.cap"
    ok(admin(cluster, "add-client", "mallory", "--output", cap))
    ok(admin(cluster, "pause", "linux", "w1"))  # so that a job stays queued
    cluster.start_worker("w1")
    queued = submit_as_in_background(cluster, cap, dockerfile(QUICK))
    await asyncio.to_thread(wait_until_shown, cluster, "from mallory")

    async with capnp.kj_loop():
        connection, submission = await connect_and_restore(
            read_cap_file(cap), schema.build.Submission
        )
        try:
            removed = await asyncio.to_thread(
                admin, cluster, "remove-client", "mallory"
            )
            assert removed.returncode == 0, removed.stderr
            with pytest.raises(capnp.KjException) as refused_now:
                await submission.submit("linux", simple_description(), False)
        finally:
            connection.close()
    assert remote_message(refused_now.value) == "client 'mallory' has been removed"
    _, stderr = queued.communicate(timeout=60)
    assert queued.returncode == 1, stderr
    assert "cancelled" in stderr
    refused = submit_as(cluster, cap, dockerfile(QUICK))
    assert refused.returncode == 2
    assert "unknown capability" in refused.stderr
    assert ok(admin(cluster, "list-clients")).split() == ["default"]
    assert "from mallory" not in cluster.show("linux")


def test_the_default_client_cannot_be_removed_and_unknown_ones_are_named(
    cluster: Cluster,
) -> None:
    default = admin(cluster, "remove-client", "default")
    assert default.returncode == 2
    assert "derived from the key" in default.stderr
    unknown = admin(cluster, "remove-client", "nobody")
    assert unknown.returncode == 2
    assert "no client 'nobody'" in unknown.stderr
    rate = admin(cluster, "set-rate", "linux", "nobody", "2")
    assert rate.returncode == 2
    assert "no client 'nobody'" in rate.stderr
    bad = admin(cluster, "set-rate", "linux", "default", "0")
    assert bad.returncode == 2


def test_a_bad_client_name_or_output_issues_no_capability(
    cluster: Cluster, tmp_path: Path
) -> None:
    bad = admin(cluster, "add-client", "a/b", "--output", tmp_path / "ab.cap")
    assert bad.returncode == 2
    assert "'a/b' is not a valid client name" in bad.stderr
    assert not (tmp_path / "ab.cap").exists()
    unwritable = admin(cluster, "add-client", "ok", "-o", tmp_path / "no" / "x.cap")
    assert unwritable.returncode == 2
    assert "cannot write" in unwritable.stderr
    assert ok(admin(cluster, "list-clients")).split() == ["default"]


def test_cancel_ends_a_job_by_id_with_either_capability(
    cluster: Cluster, tmp_path: Path, dockerfile: Callable[..., Path]
) -> None:
    ok(admin(cluster, "pause", "linux", "w1"))
    cluster.start_worker("w1")
    cap = tmp_path / "alice.cap"
    ok(admin(cluster, "add-client", "alice", "--output", cap))
    mine = submit_as_in_background(cluster, cap, dockerfile(QUICK))
    shown = wait_until_shown(cluster, "from alice")
    job = re.search(r"queued (\w+) from alice", shown)
    assert job
    # another client cannot reach it
    other = cluster.client("cancel", cluster.cap("submission"), job.group(1))
    assert other.returncode == 2
    assert f"no job '{job.group(1)}' of client default" in other.stderr
    assert ok(admin(cluster, "cancel", job.group(1))) == (
        f"Job {job.group(1)} is cancelled\n"
    )
    _, stderr = mine.communicate(timeout=60)
    assert mine.returncode == 1
    assert "was cancelled" in stderr
    assert "0 queued" in cluster.show("linux")


# Pausing, draining, forgetting


def test_a_paused_worker_gets_nothing_until_unpaused(
    cluster: Cluster, dockerfile: Callable[..., Path]
) -> None:
    cluster.start_worker("w1")
    assert "Paused worker w1" in ok(admin(cluster, "pause", "linux", "w1"))
    waiting = cluster.submit_in_background(dockerfile(QUICK))
    shown = wait_until_shown(cluster, "queued")
    assert "worker w1 (paused)" in shown
    time.sleep(1)
    assert waiting.poll() is None
    ok(admin(cluster, "unpause", "linux", "w1"))
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert "building on worker w1" in err


def test_pause_wait_drains_the_running_build_with_progress(
    cluster: Cluster, dockerfile: Callable[..., Path]
) -> None:
    cluster.start_worker("w1")
    building = cluster.submit_in_background(dockerfile(SLOW))
    wait_for(lambda: "running 1" in cluster.show("linux"), "the build to start")
    drained = admin(cluster, "pause", "--wait", "linux", "w1")
    out = ok(drained)
    assert out.splitlines() == [
        "Worker w1 is paused; 1 job still running",
        "Worker w1 is paused and runs no jobs",
    ]
    # the drain returned only once the build was over
    out, err = building.communicate(timeout=5)
    assert building.returncode == 0, err
    assert "slept" in out


def test_a_pause_holds_for_a_worker_that_connects_later_until_forgotten(
    cluster: Cluster, dockerfile: Callable[..., Path]
) -> None:
    paused = ok(admin(cluster, "pause", "linux", "w2"))
    assert paused == (
        "Paused worker w2 of pool linux"
        " (not connected: it gets no jobs when it connects)\n"
    )
    assert "worker w2 (paused): not connected" in cluster.show("linux")
    worker = cluster.start_worker("w2")
    waiting = cluster.submit_in_background(dockerfile(QUICK))
    wait_until_shown(cluster, "queued")
    refused = admin(cluster, "forget", "linux", "w2")
    assert refused.returncode == 2
    assert "is connected" in refused.stderr
    worker.stop()
    wait_for(lambda: "capacity" not in cluster.show("linux"), "w2 to leave")
    ok(admin(cluster, "forget", "linux", "w2"))
    assert "w2" not in cluster.show("linux")
    # forgotten, it is a new worker: not paused
    cluster.start_worker("w2")
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err


def test_unpause_and_forget_refuse_a_worker_the_pool_does_not_know(
    cluster: Cluster,
) -> None:
    cluster.start_worker("w1")
    for command in ("unpause", "forget"):
        refused = admin(cluster, command, "linux", "w9")
        assert refused.returncode == 2
        assert refused.stderr == (
            "Error: worker 'w9' is not known in pool linux (workers: w1)\n"
        )
    # unpausing a connected worker that is not paused changes nothing
    assert "takes jobs again" in ok(admin(cluster, "unpause", "linux", "w1"))


# Placement


def test_a_hinted_job_goes_back_to_the_worker_that_built_the_hint(
    cluster: Cluster, dockerfile: Callable[..., Path]
) -> None:
    cluster.start_worker("w1")
    cluster.start_worker("w2")

    def built_on(name: str, *extra: str) -> str:
        result = cluster.submit(dockerfile(QUICK, name=name), *extra)
        assert result.returncode == 0, result.stderr
        match = re.search(r"building on worker (w\d)", result.stderr)
        assert match, result.stderr
        return match.group(1)

    # Without a hint, a job goes to the slot that has waited longest.
    assert built_on("D1", "--cache-hint=app") == "w1"
    assert built_on("D2") == "w2"
    assert built_on("D3") == "w1"
    # Now w2 has waited longest, but w1 built the hint.
    assert built_on("D4", "--cache-hint=app") == "w1"
    assert "hints app" in cluster.show("linux")


# Restarts


def test_a_restart_keeps_clients_rates_pauses_and_queued_jobs(
    cluster: Cluster, tmp_path: Path, dockerfile: Callable[..., Path]
) -> None:
    cap = tmp_path / "alice.cap"
    ok(admin(cluster, "add-client", "alice", "--output", cap))
    ok(admin(cluster, "set-rate", "linux", "alice", "3"))
    ok(admin(cluster, "pause", "linux", "w1"))
    cluster.start_worker("w1")
    submitter = submit_as_in_background(cluster, cap, dockerfile(QUICK))
    wait_until_shown(cluster, "from alice")

    cluster.scheduler.stop()
    _, stderr = submitter.communicate(timeout=60)
    assert submitter.returncode == 2
    job = job_id(stderr)
    assert f"build-client attach {cap} {job}" in stderr

    cluster.start_scheduler()
    shown = wait_until_shown(cluster, "worker w1 (paused): capacity 1")
    assert f"queued {job} from alice" in shown
    assert "client alice: rate 3" in shown
    assert ok(admin(cluster, "list-clients")).split() == ["alice", "default"]
    ok(admin(cluster, "unpause", "linux", "w1"))
    attached = cluster.client("attach", cap, job, timeout=120)
    assert attached.returncode == 0, attached.stderr
    assert "the scheduler restarted; the job is queued again" in attached.stdout
    assert "built by" in attached.stdout
    assert attached.stdout.rstrip().splitlines()[-1].startswith("sha256:")


def test_attach_follows_a_job_from_another_terminal_and_leaves_it_running(
    cluster: Cluster, dockerfile: Callable[..., Path]
) -> None:
    cluster.start_worker("w1")
    submitter = cluster.submit_in_background(dockerfile(SLOW))
    wait_for(lambda: "running 1" in cluster.show("linux"), "the build to start")
    job = re.search(r"running 1 \((\w+)\)", cluster.show("linux"))
    assert job
    follower = subprocess.Popen(
        cluster.client_args("attach", cluster.cap("submission"), job.group(1)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    follower.send_signal(signal.SIGINT)
    _, stderr = follower.communicate(timeout=30)
    assert follower.returncode == 130
    assert "it goes on" in stderr
    out, err = submitter.communicate(timeout=120)
    assert submitter.returncode == 0, err
    assert "slept" in out
    again = cluster.client("attach", cluster.cap("submission"), job.group(1))
    assert again.returncode == 0
    assert again.stdout == out
    unknown = cluster.client("attach", cluster.cap("submission"), "0123456789ab")
    assert unknown.returncode == 2
    assert "no job '0123456789ab' of client default" in unknown.stderr


async def test_a_worker_that_pruned_its_cache_loses_its_hints_synthetic_worker(
    cluster: Cluster, dockerfile: Callable[..., Path]
) -> None:
    """Through the schema, as a worker that prunes its engine's cache would."""
    async with capnp.kj_loop():
        connection, registration = await connect_and_restore(
            read_cap_file(cluster.cap("pool-linux")), schema.build.Registration
        )
        try:
            reply = await registration.register("s1", SyntheticWorkerServer(), 1)
            queue = reply.queue
            job = SyntheticJob()
            popped = queue.pop(job)
            submitter = cluster.submit_in_background(
                dockerfile(QUICK), "--cache-hint=app"
            )
            await finish_at_once((await popped).id, None, job)
            out, err = await asyncio.to_thread(submitter.communicate, timeout=60)
            assert submitter.returncode == 0, err
            shown = await asyncio.to_thread(cluster.show, "linux")
            assert "worker s1: capacity 1, running 0, idle slots 0, hints app" in shown
            await queue.cachePruned()
            shown = await asyncio.to_thread(cluster.show, "linux")
            assert "hints" not in shown
        finally:
            connection.close()
