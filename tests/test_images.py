"""The container images: build them, then run a build through containers.

A scheduler container and a worker container (driving this machine's engine
through its socket) serve a build submitted by this machine's client. The
base image is made by scripts/make-debian-base-image, so nothing is pulled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster import free_port, wait_for

pytestmark = [pytest.mark.images, pytest.mark.docker, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parent.parent
SCHEDULER_IMAGE = "build-scheduler:test"
WORKER_IMAGE = "build-worker:test"
IMAGE_UID = 10001  # the user both images run as
DOCKER_SOCKET = Path("/var/run/docker.sock")
# CAs this machine trusts besides Debian's, for pip inside the builds (a
# TLS-intercepting proxy's, for one); none on an ordinary machine.
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout
    )


def run_logged(args: list[str], log: Path, timeout: float) -> None:
    """Run a slow command with its output in a file; fail with the file's tail."""
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_BUILDKIT"}
    started = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout
        )
    text = log.read_text(errors="replace")
    print(f"{' '.join(args[:4])}...: {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, f"{args} failed:\n{text[-4000:]}"


def build_image(tag: str, dockerfile: str, log_dir: Path) -> None:
    extra_cas = "\n".join(
        path.read_text().strip() for path in sorted(EXTRA_CA_DIR.glob("*.crt"))
    )
    run_logged(
        [
            "docker", "build", "--network=host", "--tag", tag,
            "--file", str(ROOT / dockerfile),
            "--build-arg", f"EXTRA_CA_CERTS={extra_cas}",
            str(ROOT),
        ],
        log_dir / f"{dockerfile}.log",
        timeout=1200,
    )  # fmt: skip


@pytest.fixture(scope="module")
def images(
    docker_engine: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    logs = tmp_path_factory.mktemp("image-builds")
    run_logged(
        [str(ROOT / "scripts/make-debian-base-image")],
        logs / "base.log",
        timeout=900,
    )
    try:
        build_image(SCHEDULER_IMAGE, "Dockerfile", logs)
        build_image(WORKER_IMAGE, "Dockerfile.worker", logs)
        yield
    finally:
        # Only the tags and the last layers go: their parents stay as the
        # build cache of the next run.
        docker("rmi", "--no-prune", SCHEDULER_IMAGE, WORKER_IMAGE)


def builder_stage(dockerfile: str) -> str:
    text = (ROOT / dockerfile).read_text()
    start = text.index("ARG BASE_IMAGE=")
    return text[start : text.index("\nFROM ${BASE_IMAGE}\n", start)].strip()


def test_builder_stages_match() -> None:
    """Both images share one builder stage, hence its pins and its layers."""
    assert builder_stage("Dockerfile") == builder_stage("Dockerfile.worker")


@pytest.mark.parametrize(
    ("image", "program"),
    [(SCHEDULER_IMAGE, "build-scheduler"), (WORKER_IMAGE, "build-worker")],
)
def test_version(images: None, image: str, program: str) -> None:
    result = docker("run", "--rm", image, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{program}, version "), result.stdout


def container_logs(name: str) -> str:
    result = docker("logs", name)
    return result.stdout + result.stderr


def running(name: str) -> bool:
    result = docker("inspect", "-f", "{{.State.Running}}", name)
    return result.stdout.strip() == "true"


def assert_lean_and_unprivileged(container: str) -> None:
    """The container's process is not root; no compiler, no pip."""
    result = docker(
        "exec", container, "sh", "-c",
        "id -u; command -v gcc cc c++ pip pip3 || true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    uid, *found = result.stdout.split()
    assert uid == str(IMAGE_UID), result.stdout
    assert not found, result.stdout


def test_build_through_containers(
    images: None, tmp_path: Path, dockerfile: Callable[..., Path]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    scheduler = f"test-images-scheduler-{suffix}"
    worker = f"test-images-worker-{suffix}"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    # The scheduler runs as the image's user: it writes its key and .cap files
    # here (mode 0600, so only root and that user read them on this side).
    os.chown(secrets, IMAGE_UID, IMAGE_UID)
    port, metrics_port = free_port(), free_port()

    # The image's default arguments, listening on this machine's loopback
    # instead of 0.0.0.0:9000 and 0.0.0.0:9090 (--network=host, so the
    # address in the .cap files, 127.0.0.1:PORT, works from here).
    inspect = docker("image", "inspect", SCHEDULER_IMAGE)
    config = json.loads(inspect.stdout)[0]["Config"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert set(config["ExposedPorts"]) == {"9000/tcp", "9090/tcp"}
    replaced = ("--capnp-listen-address=", "--listen-prometheus=")
    args = [a for a in config["Cmd"] if not a.startswith(replaced)] + [
        f"--capnp-listen-address=tcp:127.0.0.1:{port}",
        f"--listen-prometheus=127.0.0.1:{metrics_port}",
    ]
    built: str | None = None
    try:
        result = docker(
            "run", "--detach", "--name", scheduler, "--network=host",
            "--volume", f"{secrets}:/etc/build-scheduler/secrets",
            SCHEDULER_IMAGE, *args,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        pool_cap = secrets / "pool-linux.cap"
        wait_for(
            lambda: pool_cap.exists() or not running(scheduler),
            "the scheduler container to write its .cap files",
            timeout=60,
        )
        assert running(scheduler), container_logs(scheduler)
        assert {p.name for p in secrets.iterdir()} >= {
            "key.pem", "submission.cap", "admin.cap", "pool-linux.cap"
        }  # fmt: skip
        assert_lean_and_unprivileged(scheduler)

        result = docker(
            "run", "--detach", "--name", worker, "--network=host",
            "--group-add", str(DOCKER_SOCKET.stat().st_gid),
            "--volume", f"{DOCKER_SOCKET}:/var/run/docker.sock",
            "--volume", f"{pool_cap}:/etc/build-worker/pool.cap:ro",
            WORKER_IMAGE, "/etc/build-worker/pool.cap",
            "--name=container-worker", "--state-dir=/var/lib/build-worker",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        wait_for(
            lambda: (
                'Registered new worker "container-worker"' in container_logs(scheduler)
                or not running(worker)
            ),
            "the worker container to register",
            timeout=60,
        )
        assert running(worker), container_logs(worker)
        assert_lean_and_unprivileged(worker)

        path = dockerfile("FROM busybox\nRUN echo built-by-container-worker\n")
        submit = subprocess.run(
            [
                sys.executable, "-m", "build_client", "submit",
                str(secrets / "submission.cap"), "--pool=linux", str(path),
            ],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        context = (
            f"stdout:\n{submit.stdout}\nstderr:\n{submit.stderr}\n"
            f"scheduler:\n{container_logs(scheduler)}\n"
            f"worker:\n{container_logs(worker)}"
        )
        assert submit.returncode == 0, context
        assert "Building on container-worker" in submit.stdout, context
        assert "\nbuilt-by-container-worker\n" in submit.stdout, context
        built = submit.stdout.strip().splitlines()[-1]
        assert built.startswith("sha256:"), context
        assert docker("image", "inspect", built).returncode == 0, context

        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            metrics = response.read().decode()
        assert (
            'build_scheduler_jobs_finished_total{pool="linux",result="succeeded"} 1.0'
            in metrics
        )

        # Both programs run as PID 1 and stop on the engine's SIGTERM, well
        # before it would resort to SIGKILL.
        for name in (worker, scheduler):
            started = time.monotonic()
            assert docker("stop", "--time=30", name).returncode == 0
            assert time.monotonic() - started < 20, name
            code = docker("inspect", "-f", "{{.State.ExitCode}}", name)
            assert code.stdout.strip() == "0", (name, container_logs(name))
    finally:
        docker("rm", "--force", "--volumes", worker, scheduler)
        if built:
            docker("rmi", built)
