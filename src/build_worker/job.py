"""One build on this worker, and the Job capability the scheduler follows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from prometheus_client import Histogram

from build_api import schema
from build_api.errors import BuildError
from build_api.joblog import JobLog
from build_api.rpc import remote
from build_worker.builder import BuildCancelled, BuildSpec, DockerBuilder
from build_worker.git_context import GitMirrors
from build_worker.metrics import WorkerMetrics
from build_worker.push import (
    PushTarget,
    check_push_allowed,
    parse_push_target,
    push_image,
)

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
    async def log(self, start: int, _context: Any, **_: Any) -> None:
        data, next_offset, ended = await self.log_buffer.read(start)
        results = _context.results
        results.data = data
        results.next = next_offset
        results.ended = ended
        if ended and self._outcome.done():
            schema.write_outcome(results.init("outcome"), *self._outcome.result())

    @remote
    async def result(self, _context: Any, **_: Any) -> None:
        kind, detail = await asyncio.shield(self._outcome)
        schema.write_outcome(_context.results.init("outcome"), kind, detail)

    @remote
    async def cancel(self, **_: Any) -> None:
        self.cancelled.set()


@dataclass(frozen=True)
class JobSpec:
    """A job description from the wire, in this worker's terms."""

    build: BuildSpec
    dockerfile_contents: str | None
    repository: str
    commits: list[str]
    push: PushTarget | None


# The client's Dockerfile, when it builds a repository, goes into the context
# under a name no repository is likely to use.
CLIENT_DOCKERFILE = ".build-worker.Dockerfile"


def job_spec(description: Any) -> JobSpec:
    """Translate a ``JobDescription``, refusing what cannot be built."""
    build_args = {}
    for item in description.buildArgs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BuildError(f"build argument {item!r} is not KEY=VALUE")
        build_args[key] = value
    repository = description.repository
    if description.dockerfile.which() == "contents":
        contents: str | None = description.dockerfile.contents
        dockerfile = CLIENT_DOCKERFILE if repository else "Dockerfile"
    else:
        contents = None
        dockerfile = _safe_relative_path(description.dockerfile.path)
    push = None
    if description._has("push") and description.push.target:
        push = parse_push_target(
            description.push.target,
            user=description.push.user,
            password=description.push.password,
        )
    return JobSpec(
        build=BuildSpec(
            dockerfile=dockerfile,
            build_args=build_args,
            target=description.target,
            squash=description.squash,
            no_cache=description.noCache,
        ),
        dockerfile_contents=contents,
        repository=repository,
        commits=list(description.commits),
        push=push,
    )


def _safe_relative_path(path: str) -> str:
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or ".." in parts:
        raise BuildError(
            f"Dockerfile path {path!r} must be relative and inside the repository"
        )
    return str(PurePosixPath(*parts))


@dataclass(frozen=True)
class JobEnvironment:
    """What every job on this worker shares."""

    worker_name: str
    builder: DockerBuilder
    mirrors: GitMirrors
    allowed_pushes: frozenset[str]
    metrics: WorkerMetrics


async def run_job(
    job_id: str, description: Any, job: WorkerJob, env: JobEnvironment
) -> None:
    """Build one job, writing its log into ``job`` and setting its outcome."""
    log = job.log_buffer
    log.write(f"Building on {env.worker_name}\n".encode())
    env.metrics.running.inc()
    context = Path(tempfile.mkdtemp(prefix=f"build-{job_id}-"))
    try:
        spec = job_spec(description)
        if spec.push is not None:
            check_push_allowed(spec.push, env.allowed_pushes)
        output = await _build_and_push(spec, context / "src", job, env)
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
        logger.info("Job %s built %s", job_id, output)
        job.set_outcome("success", output)
    finally:
        env.metrics.running.dec()
        # A repository's context can be large: remove it off the event loop.
        await asyncio.to_thread(shutil.rmtree, context, ignore_errors=True)


async def _build_and_push(
    spec: JobSpec, context: Path, job: WorkerJob, env: JobEnvironment
) -> str:
    log = job.log_buffer
    if spec.repository:
        checkout = env.mirrors.checkout(
            spec.repository, spec.commits, context, log.write
        )
        await _unless_cancelled(checkout, job.cancelled)
    else:
        context.mkdir()
    dockerfile = context / spec.build.dockerfile
    if spec.dockerfile_contents is not None:
        _write_new_file(dockerfile, spec.dockerfile_contents.encode())
    elif not dockerfile.is_file():
        raise BuildError(
            f"there is no Dockerfile at {spec.build.dockerfile} in the repository"
        )
    with _timed(env.metrics.build_duration):
        image_id = await env.builder.build(
            context, spec.build, log.write, job.cancelled
        )
    if spec.push is None:
        return image_id
    with _timed(env.metrics.push_duration):
        return await push_image(env.builder, image_id, spec.push, log.write)


async def _unless_cancelled(work: Awaitable[None], cancelled: asyncio.Event) -> None:
    """Await ``work``, stopping it if the job is cancelled first."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(cancelled.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, BuildError):
            await task
        raise BuildCancelled()
    task.result()


def _write_new_file(path: Path, data: bytes) -> None:
    """Write ``path`` afresh, never through a link the repository planted."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


@contextlib.contextmanager
def _timed(histogram: Histogram) -> Iterator[None]:
    """Observe the time the block took, labelled by how it ended."""
    started = time.monotonic()
    result = "failed"
    try:
        yield
        result = "succeeded"
    except BuildCancelled:
        result = "cancelled"
        raise
    finally:
        histogram.labels(result).observe(time.monotonic() - started)
