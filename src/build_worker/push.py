"""Push a built image to a registry, with the job's own credentials.

The image is tagged, pushed, and the tag removed again, so the worker keeps
no trace of where images went. The engine reports most push failures inside
a successful HTTP reply, as an ``errorDetail`` message in its stream: those
are errors too. Failures that look transient (a registry that is down or
overloaded, a dropped connection) are retried a few times with a growing
pause; a refusal (bad credentials, no such repository) is not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import docker.errors
import requests

from build_api.errors import BuildError
from build_worker.builder import DockerBuilder
from build_worker.engine_stream import decode_json_stream, engine_error

logger = logging.getLogger(__name__)

PUSH_ATTEMPTS = 3
FIRST_RETRY_DELAY_SECONDS = 1.0
_TRANSIENT_MARKS = (
    "connection refused",
    "connection reset",
    "i/o timeout",
    "timeout",
    "eof",
    "502 bad gateway",
    "503 service unavailable",
    "504 gateway",
    "500 internal server error",
    "too many requests",
)


@dataclass(frozen=True)
class PushTarget:
    repository: str
    tag: str
    user: str = ""
    password: str = field(default="", repr=False)

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}"


def parse_push_target(text: str, *, user: str = "", password: str = "") -> PushTarget:
    """Split ``REPO:TAG`` (the tag is required; a registry port is not a tag)."""
    repository, colon, tag = text.rpartition(":")
    if not colon or not repository or not tag or "/" in tag:
        raise BuildError(f"push target {text!r} is not REPOSITORY:TAG")
    return PushTarget(repository, tag, user, password)


def check_push_allowed(target: PushTarget, allowed: frozenset[str]) -> None:
    """Refuse, before anything is built, a push this worker may not make."""
    if target.repository not in allowed:
        names = ", ".join(sorted(allowed)) or "none"
        raise BuildError(
            f"this worker may not push to {target.repository} "
            f"(allowed with --allow-push: {names})"
        )


def is_transient(message: str) -> bool:
    lowered = message.lower()
    return any(mark in lowered for mark in _TRANSIENT_MARKS)


async def push_image(
    builder: DockerBuilder,
    image_id: str,
    target: PushTarget,
    write_log: Callable[[bytes], None],
) -> str:
    """Push ``image_id`` to ``target``; returns ``REPOSITORY@sha256:...``."""
    loop = asyncio.get_running_loop()

    def log_from_thread(data: bytes) -> None:
        loop.call_soon_threadsafe(write_log, data)

    client = builder.api_client()
    try:
        await asyncio.to_thread(_engine_call, client.tag, image_id, target.repository,
                                target.tag)  # fmt: skip
        try:
            digest = await _push_with_retries(
                client, target, write_log, log_from_thread
            )
        finally:
            # Drop the tag only; parent layers stay for the build cache.
            await asyncio.to_thread(_engine_call, client.remove_image, str(target),
                                    noprune=True)  # fmt: skip
    finally:
        client.close()
    repo_id = f"{target.repository}@{digest}"
    write_log(f"Pushed {repo_id}\n".encode())
    return repo_id


async def _push_with_retries(
    client: Any,
    target: PushTarget,
    write_log: Callable[[bytes], None],
    log_from_thread: Callable[[bytes], None],
) -> str:
    delay = FIRST_RETRY_DELAY_SECONDS
    for attempt in range(1, PUSH_ATTEMPTS + 1):
        write_log(f"Pushing to {target}\n".encode())
        try:
            return await asyncio.to_thread(
                _push_blocking, client, target, log_from_thread
            )
        except BuildError as exc:
            if attempt == PUSH_ATTEMPTS or not is_transient(str(exc)):
                raise BuildError(f"push to {target} failed: {exc}") from None
            write_log(
                f"Push failed ({exc}); retrying in {delay:.0f} s "
                f"(attempt {attempt + 1} of {PUSH_ATTEMPTS})\n".encode()
            )
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _engine_call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return method(*args, **kwargs)
    except docker.errors.APIError as exc:
        raise BuildError(str(exc.explanation or exc)) from None
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise BuildError(f"lost the Docker engine during the push: {exc}") from None


def _push_blocking(
    client: Any, target: PushTarget, write_log: Callable[[bytes], None]
) -> str:
    auth = (
        {"username": target.user, "password": target.password} if target.user else None
    )
    stream = _engine_call(
        client.push, target.repository, tag=target.tag, auth_config=auth, stream=True
    )
    try:
        return _follow_push_output(decode_json_stream(stream), write_log)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise BuildError(f"lost the Docker engine during the push: {exc}") from None


def _follow_push_output(messages: Any, write_log: Callable[[bytes], None]) -> str:
    digest = ""
    for message in messages:
        if (error := engine_error(message)) is not None:
            raise BuildError(error)
        if message.get("status") and not message.get("progressDetail"):
            layer = f"{message['id']}: " if message.get("id") else ""
            write_log(f"{layer}{message['status']}\n".encode())
        aux = message.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            digest = str(aux["Digest"])
    if not digest:
        raise BuildError("the engine ended the push without reporting a digest")
    return digest
