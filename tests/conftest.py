from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A Docker engine with a local busybox image, as scripts/ set them up."""
    info = subprocess.run(
        ["docker", "image", "inspect", "busybox:latest"], capture_output=True, text=True
    )
    if info.returncode != 0:
        pytest.fail(
            "no Docker engine with a busybox image: run scripts/ensure-docker "
            "and scripts/make-busybox-image first (the test command does)"
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    cluster.start_scheduler()
    try:
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture
def dockerfile(tmp_path: Path) -> Callable[..., Path]:
    """Write a Dockerfile with the given text; returns its path.

    A unique label goes after the first line so that the engine's build cache
    cannot answer for the steps after it: each test sees its RUN steps run.
    """

    def write(text: str, name: str = "Dockerfile", *, cached: bool = False) -> Path:
        if not cached:
            first, _, rest = text.partition("\n")
            text = f"{first}\nLABEL test.nonce={uuid.uuid4().hex}\n{rest}"
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
