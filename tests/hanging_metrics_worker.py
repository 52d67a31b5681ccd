"""A real build-worker whose metrics call never answers: a test double.

Runs the worker's own command line after swapping its Worker capability for
one whose ``metrics`` hangs, so tests can see how the scheduler copes with a
worker that is connected but does not answer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from build_worker import agent
from build_worker.cli import main


class HangingMetricsWorkerServer(agent.WorkerServer):
    async def metrics(self, source: Any, **_: Any) -> tuple[str, str]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


agent.WorkerServer = HangingMetricsWorkerServer  # type: ignore[misc]
main()
