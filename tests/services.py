"""Real services on loopback for the tests: a git server and a registry."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster import free_port, wait_for

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@localhost",
}


@dataclass
class GitRepo:
    """A repository in a directory, with helpers to commit to it."""

    path: Path

    def git(self, *args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(self.path), *args],
            capture_output=True, text=True, check=True,
            env={**os.environ, **GIT_ENV},
        )  # fmt: skip
        return result.stdout.strip()

    def commit(self, message: str, files: dict[str, str]) -> str:
        for name, text in files.items():
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            (self.path / name).write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")


@dataclass
class GitServer:
    """``git daemon`` serving a directory of repositories on a loopback port."""

    root: Path
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1",
             f"--port={self.port}", f"--base-path={self.root}", str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(self._answers, "git daemon to listen")

    def _answers(self) -> bool:
        probe = subprocess.run(
            ["git", "ls-remote", f"git://127.0.0.1:{self.port}/none"],
            capture_output=True, text=True,
        )  # fmt: skip
        return "Connection refused" not in probe.stderr

    def new_repo(self, name: str) -> GitRepo:
        path = self.root / name
        path.mkdir()
        repo = GitRepo(path)
        repo.git("init", "-q", "-b", "main")
        return repo

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@dataclass
class Registry:
    """Debian's docker-registry on a loopback port, demanding a password."""

    root: Path
    user: str = "pusher"
    password: str = "s3cret-Pa55-word-71f2"
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        htpasswd = self.root / "htpasswd"
        subprocess.run(
            ["htpasswd", "-Bbc", str(htpasswd), self.user, self.password],
            check=True, capture_output=True,
        )  # fmt: skip
        config = self.root / "config.yml"
        config.write_text(
            json.dumps(
                {
                    "version": 0.1,
                    "log": {"level": "warn"},
                    "storage": {
                        "filesystem": {"rootdirectory": str(self.root / "data")}
                    },
                    "http": {"addr": f"127.0.0.1:{self.port}"},
                    "auth": {"htpasswd": {"realm": "test", "path": str(htpasswd)}},
                }
            )
        )
        self.log_path = self.root / "registry.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                ["docker-registry", "serve", str(config)], stdout=log, stderr=log
            )
        wait_for(self._answers, "the registry to listen")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1)
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        except OSError:
            return False
        return True

    def manifest_exists(self, repository: str, reference: str) -> bool:
        """Ask the registry itself, with the password, for a manifest."""
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request = urllib.request.Request(
            f"http://{self.address}/v2/{repository}/manifests/{reference}",
            method="HEAD",
            headers={
                "Authorization": f"Basic {token}",
                "Accept": "application/vnd.docker.distribution.manifest.v2+json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@dataclass
class NodeExporter:
    """Debian's prometheus-node-exporter on a loopback port."""

    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.process = subprocess.Popen(
            ["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: _http_ok(self.url), "the node exporter to listen")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@dataclass
class Prometheus:
    """Debian's Prometheus server scraping one target every second."""

    root: Path
    target: str
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {"job_name": "build-scheduler",
                         "static_configs": [{"targets": [self.target]}]}
                    ],
                }
            )
        )  # fmt: skip
        with (self.root / "prometheus.log").open("wb") as log:
            self.process = subprocess.Popen(
                ["prometheus", f"--config.file={config}",
                 f"--storage.tsdb.path={self.root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=log,
            )  # fmt: skip
        wait_for(lambda: _http_ok(f"http://127.0.0.1:{self.port}/-/ready"),
                 "Prometheus to be ready", timeout=60)  # fmt: skip

    def query(self, expression: str) -> list[dict[str, object]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expression}
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
