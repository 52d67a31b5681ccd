"""Submit a build, stream its log, and report how it ended."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import capnp

from build_api import schema
from build_api.cli_support import EXIT_FAILED, EXIT_INTERRUPTED
from build_api.errors import ConnectError, ServiceError
from build_api.rpc import connect, connect_and_restore, detached, remote_message

logger = logging.getLogger(__name__)

# Longer than the scheduler waits for a worker to confirm (10 s).
CANCEL_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class SubmitRequest:
    cap_file: Path
    pool: str
    dockerfile: str = ""  # the Dockerfile's contents
    dockerfile_path: str = ""  # or its path inside the repository
    repository: str = ""
    commits: list[str] = field(default_factory=list)
    push_to: str = ""
    push_user: str = ""
    push_password: str = field(default="", repr=False)
    urgent: bool = False
    build_args: list[str] = field(default_factory=list)
    target: str = ""
    no_cache: bool = False
    squash: bool = False
    cache_hint: str = ""
    estimate: float = 0.0  # seconds; 0: unknown


def _description(request: SubmitRequest) -> Any:
    description = schema.build.JobDescription.new_message()
    if request.dockerfile_path:
        description.dockerfile.path = request.dockerfile_path
    else:
        description.dockerfile.contents = request.dockerfile
    description.repository = request.repository
    description.commits = request.commits
    if request.push_to:
        push = description.init("push")
        push.target = request.push_to
        push.user = request.push_user
        push.password = request.push_password
    description.buildArgs = request.build_args
    description.target = request.target
    description.noCache = request.no_cache
    description.squash = request.squash
    description.cacheHint = request.cache_hint
    description.estimatedSeconds = request.estimate
    return description


class Submitter:
    def __init__(self, out: BinaryIO, status: TextIO, cap_file: Path) -> None:
        self._out = out
        self._status = status
        self._cap_file = cap_file
        self._ticket: Any = None
        self._job_id = ""

    def say(self, message: str) -> None:
        print(message, file=self._status, flush=True)

    async def run(self, submission: Any, request: SubmitRequest) -> int:
        """Submit and follow the job; returns the exit code."""
        try:
            reply = await submission.submit(
                request.pool, _description(request), request.urgent
            )
        except capnp.KjException as exc:
            raise ServiceError(remote_message(exc)) from None
        return await self._guarded(self.follow(detached(reply.ticket), submitted=True))

    async def attach(self, submission: Any, job_id: str) -> int:
        """Follow a job submitted earlier; returns the exit code."""
        try:
            reply = await submission.ticket(job_id)
        except capnp.KjException as exc:
            raise ServiceError(remote_message(exc)) from None
        return await self._guarded(self.follow(detached(reply.ticket)))

    async def _guarded(self, following: Coroutine[Any, Any, int]) -> int:
        try:
            return await following
        except capnp.KjException as exc:
            message = f"lost the scheduler: {remote_message(exc)}"
            if self._job_id:
                message += (
                    f"; once it is back, follow the job again with: build-client "
                    f"attach {self._cap_file} {self._job_id}"
                )
            raise ConnectError(message) from None

    async def follow(self, ticket: Any, *, submitted: bool = False) -> int:
        """Print the job's log as it arrives, then its result."""
        self._ticket = ticket
        status = (await self._ticket.status()).status
        self._job_id = status.id
        state = str(status.state)
        where = f"Job {status.id} queued in pool {status.pool}"
        if state == "queued":
            self.say(f"{where} (position {status.queuePosition})")
        elif submitted:
            self.say(where)
        else:
            verb = {"running": "is", "cancelled": "was"}.get(state, "has")
            self.say(f"Job {status.id} in pool {status.pool} {verb} {state}")

        started = await self._ticket.job()
        if not started.worker:
            pass  # it ended before any worker took it
        elif state in ("queued", "running"):
            self.say(f"Job {self._job_id} is building on worker {started.worker}")
        else:
            self.say(f"Job {self._job_id} was built on worker {started.worker}")
        job = detached(started.job)
        offset = 0
        while True:
            chunk = await job.log(offset)
            self._out.write(chunk.data)
            self._out.flush()
            offset = chunk.next
            if chunk.ended or not chunk.data:
                break
        if chunk._has("outcome"):  # the end of the log brought it
            outcome = chunk.outcome
        else:
            outcome = (await job.result()).outcome
        kind = outcome.which()
        if kind == "success":
            # The result comes from a worker: print it, not what it may hide.
            self._out.write(f"{_printable(outcome.success)}\n".encode())
            self._out.flush()
            return 0
        if kind == "failure":
            self.say(f"Job {self._job_id} failed: {outcome.failure}")
        else:
            self.say(f"Job {self._job_id} was cancelled")
        return EXIT_FAILED

    async def cancel(self) -> None:
        if self._ticket is None:
            return
        self.say(f"Cancelling job {self._job_id or '(not yet numbered)'}...")
        try:
            await asyncio.wait_for(self._ticket.cancel(), CANCEL_TIMEOUT_SECONDS)
        except TimeoutError:
            self.say(f"The scheduler did not confirm in {CANCEL_TIMEOUT_SECONDS:.0f} s")
        except capnp.KjException as exc:
            self.say(f"Could not cancel the job: {remote_message(exc)}")
        else:
            self.say("Cancelled.")


async def submit(ref: Any, request: SubmitRequest) -> int:
    """Submit, follow, and cancel the job if interrupted (SIGINT or SIGTERM)."""
    connection, submission = await connect_and_restore(ref, schema.build.Submission)
    try:
        submitter = Submitter(sys.stdout.buffer, sys.stderr, request.cap_file)
        main = asyncio.ensure_future(submitter.run(submission, request))
        interrupted = asyncio.Event()

        def interrupt() -> None:
            interrupted.set()
            main.cancel()

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, interrupt)
        try:
            return await main
        except asyncio.CancelledError:
            if not interrupted.is_set():
                raise
            # Closing the connection alone would cancel the job too, but
            # waiting for the answer lets us say that it happened.
            await submitter.cancel()
            return EXIT_INTERRUPTED
    finally:
        connection.close()


async def cancel_job(ref: Any, job_id: str) -> str:
    """Cancel a job through a submission or the admin capability; returns
    the state it ended in."""
    connection = await connect(ref)
    try:
        try:
            submission = await connection.restore(ref, schema.build.Submission)
            ticket = submission.ticket(job_id).ticket
        except ServiceError as exc:
            if "for administration" not in str(exc):
                raise
            admin = await connection.restore(ref, schema.build.Admin)
            ticket = admin.job(job_id).ticket
        try:
            await ticket.cancel()
            return str((await ticket.status()).status.state)
        except capnp.KjException as exc:
            raise ServiceError(remote_message(exc)) from None
    finally:
        connection.close()


async def attach_job(ref: Any, cap_file: Path, job_id: str) -> int:
    """Follow a job submitted earlier; an interruption leaves the job alone."""
    connection, submission = await connect_and_restore(ref, schema.build.Submission)
    try:
        submitter = Submitter(sys.stdout.buffer, sys.stderr, cap_file)
        main = asyncio.ensure_future(submitter.attach(submission, job_id))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, main.cancel)
        try:
            return await main
        except asyncio.CancelledError:
            submitter.say(f"Stopped following job {job_id}; it goes on")
            return EXIT_INTERRUPTED
    finally:
        connection.close()


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)
