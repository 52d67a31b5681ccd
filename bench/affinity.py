"""Placement: bounded cache affinity against first come, first served.

Simulates one pool of 4 workers (capacity 1 each) with the real, pure Pool
and a fake clock: a build takes 2 s on a worker that built the same hint
before and 10 s otherwise. Three policies run the same workloads:

* ours: cache affinity with bounded load (the scheduler's policy);
* first come, first served: hints ignored;
* unbounded affinity: always wait for the worker that built the hint.

Workloads: one hint submitted 100 times after one worker has built it, and
100 jobs over 10 hints, interleaved. Prints each policy's jobs per worker,
builds without cache, mean wait and total time. Run from the repository
root:

    .venv/bin/python bench/affinity.py
"""

from __future__ import annotations

from collections.abc import Callable

from common import table
from tests.pool_simulation import (
    FirstComeFirstServedPool,
    Simulation,
    UnboundedAffinityPool,
)

from build_scheduler.pool import Pool

WORKERS = {f"w{number}": 1 for number in range(1, 5)}
POLICIES: dict[str, Callable[[Callable[[], float]], Pool]] = {
    "bounded affinity (ours)": lambda clock: Pool("p", clock),
    "first come, first served": lambda clock: FirstComeFirstServedPool("p", clock),
    "unbounded affinity": lambda clock: UnboundedAffinityPool("p", clock),
}
WORKLOADS = {
    "one hint, 1 job then 100": [(0.0, "app")] + [(1.0, "app")] * 100,
    "10 hints, 100 jobs": [(0.0, f"app-{n % 10}") for n in range(100)],
}


def main() -> None:
    for workload, jobs in WORKLOADS.items():
        rows = []
        for policy, make_pool in POLICIES.items():
            outcome = Simulation(make_pool, WORKERS).run(jobs)
            spread = "/".join(str(n) for n in outcome.jobs_per_worker.values())
            rows.append(
                (
                    policy,
                    f"{outcome.makespan:5.0f} s total, "
                    f"{outcome.mean_wait:4.1f} s mean wait, "
                    f"{outcome.uncached_builds:3d} uncached, jobs per worker {spread}",
                )
            )
        table(f"Placement, {workload}, 4 workers (simulated 2 s / 10 s builds)", rows)


if __name__ == "__main__":
    main()
