"""Git contexts: the first build of a repository against the second.

A repository with some history (a few hundred commits, a few MB) served by
`git daemon` on loopback; a scheduler and one worker. The first build of a
commit fetches the repository into the worker's mirror; later builds of
the same commit find it there and fetch nothing. Each build runs with the
engine's cache off, so the difference is the git work alone. Prints the
wall time of the first build and the median of the next ones. Run from the
repository root:

    .venv/bin/python bench/git_mirror.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import table
from tests.cluster import Cluster
from tests.services import GitServer

COMMITS = 300
FILE_BYTES = 20_000


def make_repository(server: GitServer) -> tuple[str, str]:
    repo = server.new_repo("project.git")
    for number in range(COMMITS):
        files = {f"src/file{number % 50}.txt": os.urandom(FILE_BYTES // 2).hex()}
        if number == 0:
            files["Dockerfile"] = "FROM busybox\nCOPY src /src\nRUN du -s /src\n"
        head = repo.commit(f"change {number}", files)
    return server.url("project.git"), head


def build(cluster: Cluster, url: str, commit: str) -> float:
    started = time.perf_counter()
    result = cluster.submit_repo(
        "--dockerfile-path=Dockerfile", "--no-cache", url, commit, timeout=600
    )
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = GitServer(Path(tmp) / "git")
        cluster = Cluster(Path(tmp) / "cluster")
        try:
            url, head = make_repository(server)
            cluster.start_scheduler()
            cluster.start_worker("w1")
            first = build(cluster, url, head)
            again = [build(cluster, url, head) for _ in range(args.runs)]
        finally:
            cluster.stop_all()
            server.stop()
    second = statistics.median(again)
    table(
        f"Git context: {COMMITS} commits, first build against the next {args.runs}",
        [
            ("first build (fetches)", f"{first:.2f} s"),
            ("later builds, median", f"{second:.2f} s"),
            ("ratio", f"{second / first:.2f}"),
        ],
    )


if __name__ == "__main__":
    main()
