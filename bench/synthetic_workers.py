"""Run many synthetic workers in one process (a helper of the benchmarks).

Each registers over its own connection, like a separate machine would, and
finishes every job at once with a one-line log.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import capnp  # noqa: E402
from tests.synthetic import (  # noqa: E402
    SyntheticJob,
    SyntheticWorker,
    finish_at_once,
)

LINE = b"0123456789abcdef" * 7 + b"build output line\n"


async def write_output(
    size: int, job_id: str, description: object, job: SyntheticJob
) -> None:
    """Write ``size`` bytes of build-like output as fast as the log takes it."""
    block = LINE * (64 * 1024 // len(LINE))
    for _ in range(size // len(block)):
        job.log_buffer.write(block)
        await asyncio.sleep(0)
    job.finish("success", f"sha256:{job_id}")


from build_api.sturdy import read_cap_file  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cap", type=Path)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--capacity", type=int, default=1)
    parser.add_argument("--prefix", default="w")
    parser.add_argument(
        "--log-bytes", type=int, default=0,
        help="write this much output per job instead of one line",
    )  # fmt: skip
    args = parser.parse_args()
    ref = read_cap_file(args.cap)
    handler = finish_at_once
    if args.log_bytes:
        handler = functools.partial(write_output, args.log_bytes)
    workers = [
        SyntheticWorker(ref, f"{args.prefix}{i}", args.capacity, handler)
        for i in range(args.count)
    ]
    await asyncio.gather(*(w.run() for w in workers))


if __name__ == "__main__":
    asyncio.run(capnp.run(main()))
