"""One build on this worker, and the Job capability the scheduler follows."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from build_api import schema
from build_api.errors import BuildError
from build_api.joblog import JobLog
from build_api.rpc import remote
from build_worker.builder import BuildCancelled, BuildSpec, DockerBuilder

logger = logging.getLogger(__name__)


class WorkerJob(schema.build.Job.Server):  # type: ignore[misc]
    """The log, result and cancel switch of one build.

    The worker makes one before asking for work and passes it with ``pop``;
    the scheduler keeps it until it has read the whole log and the result.
    """

    def __init__(self) -> None:
        self.log_buffer = JobLog()
        self.cancelled = asyncio.Event()
        self._outcome: asyncio.Future[tuple[str, str]] = (
            asyncio.get_running_loop().create_future()
        )

    def set_outcome(self, kind: str, detail: str = "") -> None:
        if not self._outcome.done():
            self._outcome.set_result((kind, detail))
        self.log_buffer.close()

    @remote
    async def log(self, start: int, **_: Any) -> tuple[bytes, int]:
        return await self.log_buffer.read(start)

    @remote
    async def result(self, _context: Any, **_: Any) -> None:
        kind, detail = await asyncio.shield(self._outcome)
        outcome = _context.results.init("outcome")
        if kind == "success":
            outcome.success = detail
        elif kind == "failure":
            outcome.failure = detail
        else:
            outcome.cancelled = None

    @remote
    async def cancel(self, **_: Any) -> None:
        self.cancelled.set()


def build_spec(description: Any) -> BuildSpec:
    """The docker build options of a job description."""
    build_args = {}
    for item in description.buildArgs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BuildError(f"build argument {item!r} is not KEY=VALUE")
        build_args[key] = value
    return BuildSpec(
        build_args=build_args,
        target=description.target,
        squash=description.squash,
        no_cache=description.noCache,
    )


async def run_job(
    job_id: str,
    description: Any,
    job: WorkerJob,
    *,
    worker_name: str,
    builder: DockerBuilder,
) -> None:
    """Build one job, writing its log into ``job`` and setting its outcome."""
    log = job.log_buffer
    log.write(f"Building on {worker_name}\n".encode())
    context = Path(tempfile.mkdtemp(prefix=f"build-{job_id}-"))
    try:
        spec = build_spec(description)
        if description.repository:
            raise BuildError(
                "building from a git repository is not supported yet by this worker"
            )
        (context / spec.dockerfile).write_text(description.dockerfile.contents)
        image_id = await builder.build(context, spec, log.write, job.cancelled)
    except asyncio.CancelledError:
        log.write(b"\nThe worker stopped during the build.\n")
        job.set_outcome("failure", "the worker stopped during the build")
        raise
    except BuildCancelled:
        logger.info("Job %s cancelled", job_id)
        log.write(b"\nJob cancelled.\n")
        job.set_outcome("cancelled")
    except BuildError as exc:
        logger.info("Job %s failed: %s", job_id, exc)
        log.write(f"\nBuild failed: {exc}\n".encode())
        job.set_outcome("failure", str(exc))
    except Exception as exc:
        logger.exception("Job %s failed unexpectedly", job_id)
        log.write(f"\nBuild failed: internal error in the worker: {exc}\n".encode())
        job.set_outcome("failure", f"internal error in the worker: {exc}")
    else:
        logger.info("Job %s built image %s", job_id, image_id)
        job.set_outcome("success", image_id)
    finally:
        shutil.rmtree(context, ignore_errors=True)
