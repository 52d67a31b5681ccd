"""End to end: a small real build through the cluster against plain `docker build`.

Starts a scheduler and one worker on loopback, then alternates the two ways
of building the same Dockerfile (cache off for both) and prints the median
wall time of each and their ratio. Run from the repository root:

    .venv/bin/python bench/end_to_end.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster import Cluster  # noqa: E402

DOCKERFILE = "FROM busybox\nRUN echo step one\nRUN date\n"


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        context = root / "context"
        context.mkdir()
        (context / "Dockerfile").write_text(DOCKERFILE)
        cluster = Cluster(root)
        cluster.start_scheduler()
        try:
            cluster.start_worker("bench")
            submit = cluster.client_args(
                "submit", cluster.cap("submission"), "--pool=linux", "--no-cache",
                context / "Dockerfile",
            )  # fmt: skip
            direct = ["docker", "build", "--no-cache", "-q", str(context)]
            timed(submit), timed(direct)  # warm up both paths
            cluster_times, direct_times = [], []
            for _ in range(runs):
                cluster_times.append(timed(submit))
                direct_times.append(timed(direct))
        finally:
            cluster.stop_all()

    cluster_median = statistics.median(cluster_times)
    direct_median = statistics.median(direct_times)
    print(f"end to end, {runs} runs each, median wall time")
    print(f"{'path':<32}{'seconds':>10}")
    print(f"{'docker build (direct)':<32}{direct_median:>10.3f}")
    print(f"{'build-client submit (cluster)':<32}{cluster_median:>10.3f}")
    print(f"{'ratio cluster / direct':<32}{cluster_median / direct_median:>10.2f}")


if __name__ == "__main__":
    main()
