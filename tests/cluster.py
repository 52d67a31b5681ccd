"""Run real scheduler, worker and client processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], bool], what: str, timeout: float = STARTUP_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Process:
    """A program under test, its output captured to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@dataclass
class Cluster:
    """A scheduler in a temporary directory, and the workers started against it."""

    root: Path
    pools: list[str] = field(default_factory=lambda: ["linux"])
    port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)
    build_network: str | None = None
    metrics_port: int = field(default_factory=free_port)
    scheduler_args: list[str] = field(default_factory=list)

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    def cap(self, name: str) -> Path:
        return self.secrets / f"{name}.cap"

    def _spawn(self, name: str, args: list[str]) -> Process:
        log_path = self.root / f"{name}.log"
        log = log_path.open("ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        popen = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        process = Process(name, popen, log_path)
        self.processes.append(process)
        return process

    def start_scheduler(self) -> Process:
        self.root.mkdir(parents=True, exist_ok=True)
        for pool in self.pools:
            self.cap(f"pool-{pool}").unlink(missing_ok=True)
        process = self._spawn(
            "scheduler",
            [
                sys.executable, "-m", "build_scheduler",
                f"--capnp-secret-key-file={self.secrets / 'key.pem'}",
                f"--capnp-listen-address=tcp:127.0.0.1:{self.port}",
                f"--state-dir={self.root / 'state'}",
                f"--pools={','.join(self.pools)}",
                f"--listen-prometheus=127.0.0.1:{self.metrics_port}",
                *self.scheduler_args,
            ],
        )  # fmt: skip
        last_cap = self.cap(f"pool-{self.pools[-1]}")
        wait_for(
            lambda: last_cap.exists() or process.popen.poll() is not None,
            "the scheduler to write its .cap files",
        )
        assert process.popen.poll() is None, process.log
        self.scheduler = process
        return process

    def start_worker(
        self,
        name: str,
        *,
        capacity: int = 1,
        pool: str | None = None,
        wait: bool = True,
        extra: list[str] | None = None,
        cap: Path | None = None,
        program: list[str] | None = None,
    ) -> Process:
        pool = pool or self.pools[0]
        args = [
            *(program or [sys.executable, "-m", "build_worker"]),
            str(cap or self.cap(f"pool-{pool}")),
            f"--name={name}", f"--capacity={capacity}",
            f"--state-dir={self.worker_state(name)}", *(extra or []),
        ]  # fmt: skip
        if self.build_network:
            args.append(f"--build-network={self.build_network}")
        registered = f'Registered new worker "{name}"'
        before = self.scheduler.log.count(registered)
        process = self._spawn(f"worker-{name}", args)
        if wait:
            wait_for(
                lambda: self.scheduler.log.count(registered) > before,
                f"worker {name} to register",
            )
            wait_for(
                lambda: process.log.count("Requesting a new job") >= capacity,
                f"worker {name} to ask for work",
            )
        return process

    def client_args(self, *args: str | Path) -> list[str]:
        return [sys.executable, "-m", "build_client", *map(str, args)]

    def client(
        self,
        *args: str | Path,
        timeout: float = 300,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.client_args(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def submit(
        self,
        dockerfile: Path,
        *extra: str | Path,
        pool: str | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        return self.client(
            "submit",
            self.cap("submission"),
            f"--pool={pool or self.pools[0]}",
            dockerfile,
            *extra,
            timeout=timeout,
        )

    def worker_state(self, name: str) -> Path:
        return self.root / f"worker-{name}-state"

    def submit_repo(
        self, *args: str | Path, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Submit with only the arguments given after the pool."""
        return self.client(
            "submit", self.cap("submission"), f"--pool={self.pools[0]}", *args,
            timeout=timeout,
        )  # fmt: skip

    def submit_repo_in_background(self, *args: str | Path) -> subprocess.Popen[str]:
        args_ = self.client_args(
            "submit", self.cap("submission"), f"--pool={self.pools[0]}", *args
        )
        return subprocess.Popen(
            args_, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def submit_in_background(
        self, dockerfile: Path, *extra: str | Path, pool: str | None = None
    ) -> subprocess.Popen[str]:
        args = self.client_args(
            "submit", self.cap("submission"), f"--pool={pool or self.pools[0]}",
            dockerfile, *extra,
        )  # fmt: skip
        return subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def show(self, pool: str | None = None) -> str:
        args: list[str | Path] = ["show", self.cap("admin")]
        if pool:
            args.append(pool)
        result = self.client(*args, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def http_get(self, path: str, timeout: float = 30) -> tuple[int, str]:
        """GET a path of the scheduler's metrics server: status and body."""
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def running_commands() -> str:
    """The commands of the engine's running containers, one a line."""
    ps = subprocess.run(
        ["docker", "ps", "--no-trunc", "--format", "{{.Command}}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return ps.stdout
