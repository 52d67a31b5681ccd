"""Many workers: 1,000 connected synthetic workers, memory and dispatch rate.

The same measurement as dispatch.py, with 1,000 synthetic workers, each on
its own connection, spread over 4 processes. Run from the repository root:

    .venv/bin/python bench/many_workers.py [--jobs N]
"""

from __future__ import annotations

import argparse

from common import table
from dispatch import rows, run

WORKERS = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    jobs = parser.parse_args().jobs
    figures = run(jobs, WORKERS, processes=4)
    table(
        f"many workers: {WORKERS} connected, {figures['jobs']:.0f} jobs",
        [
            *rows(figures),
            ("scheduler memory, MiB", f"{figures['rss_mib']:.0f}"),
            ("memory per worker, KiB", f"{figures['kib_per_worker']:.1f}"),
        ],
    )


if __name__ == "__main__":
    main()
