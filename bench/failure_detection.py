"""How long the scheduler takes to notice a killed and a frozen worker.

Starts a scheduler with the default heartbeat and an idle worker, kills or
freezes the worker, and times until the scheduler logs that it left.
Run from the repository root:

    .venv/bin/python bench/failure_detection.py [--runs N]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster import Cluster, wait_for  # noqa: E402


def detection_seconds(root: Path, sig: int) -> float:
    cluster = Cluster(root)
    cluster.start_scheduler()
    try:
        worker = cluster.start_worker("w1")
        started = time.monotonic()
        worker.popen.send_signal(sig)
        wait_for(lambda: 'Worker "w1" left pool' in cluster.scheduler.log,
                 "the worker to be noticed", timeout=120)  # fmt: skip
        return time.monotonic() - started
    finally:
        if sig == signal.SIGSTOP:
            worker.popen.send_signal(signal.SIGKILL)
            worker.popen.send_signal(signal.SIGCONT)
        cluster.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    print(f"failure detection, default heartbeat, {runs} runs each")
    print(f"{'worker':<22}{'median s':>10}{'max s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, sig in (("killed (SIGKILL)", signal.SIGKILL),
                           ("frozen (SIGSTOP)", signal.SIGSTOP)):  # fmt: skip
            times = [
                detection_seconds(Path(tmp) / f"{sig}-{i}", sig) for i in range(runs)
            ]
            print(f"{label:<22}{statistics.median(times):>10.3f}{max(times):>10.3f}")


if __name__ == "__main__":
    main()
