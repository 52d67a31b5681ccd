"""The client refuses malformed requests itself, before dialling anyone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def client(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "build_client", *map(str, args)],
        capture_output=True, text=True, timeout=60, input="FROM busybox\n",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-", "git://h/r", "main"], "'main' is not a commit hash"),
        (["-", "git://h/r"], "give at least one COMMIT of git://h/r"),
        (["--dockerfile-path=Dockerfile"], "--dockerfile-path needs a REPOSITORY"),
        (["-", "--push-to=127.0.0.1:5000/app"], "is not REPOSITORY:TAG"),
        (["-", "--push-user=u"], "--push-user and --push-password need --push-to"),
        (["-", "--push-to=r/app:v1", "--push-user=u"], "go together"),
        (["-", "--push-to=r/app:v1", "--push-password=/dev/null"], "go together"),
        (["-", "--build-arg=NOEQUALS"], "'NOEQUALS' is not KEY=VALUE"),
    ],
)
def test_malformed_submit_is_refused_with_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    # The .cap file does not exist: these mistakes are caught before it is read.
    result = client("submit", tmp_path / "none.cap", "--pool=linux", *args)
    assert result.returncode == 2
    assert message in result.stderr
