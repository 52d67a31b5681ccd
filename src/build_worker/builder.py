"""Run ``docker build`` through the Docker Engine API.

docker-py is blocking, so each build runs in a thread with its own API
client. Output goes to the job's log as it arrives. Cancelling shuts the
HTTP connection down, which makes the engine abort the build and remove
the build's container.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from build_api.errors import BuildError
from build_worker.engine_stream import decode_json_stream, engine_error

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildSpec:
    dockerfile: str = "Dockerfile"  # relative to the context directory
    build_args: dict[str, str] = field(default_factory=dict)
    target: str = ""
    squash: bool = False
    no_cache: bool = False


class BuildCancelled(Exception):
    """The build was stopped on request; not an error."""


class _StreamCapturingClient(docker.APIClient):
    """An API client that remembers the response it is streaming from."""

    response: requests.Response | None = None

    def _stream_helper(
        self, response: requests.Response, decode: bool = False
    ) -> Iterator[Any]:
        self.response = response
        stream = super()._stream_helper(response, decode)  # type: ignore[misc]
        return stream  # type: ignore[no-any-return]

    def abort_stream(self) -> None:
        response = self.response
        raw_socket = getattr(
            getattr(getattr(response, "raw", None), "_fp", None), "fp", None
        )
        sock = getattr(getattr(raw_socket, "raw", None), "_sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.close()


class DockerBuilder:
    def __init__(
        self, *, docker_host: str | None = None, network_mode: str | None = None
    ):
        self._docker_host = docker_host
        self._network_mode = network_mode
        # Learnt once by check_engine, so that builds skip the version query.
        self._api_version = "auto"

    def api_client(self) -> _StreamCapturingClient:
        kwargs: dict[str, Any] = {"version": self._api_version}
        if self._docker_host:
            kwargs["base_url"] = self._docker_host
        try:
            return _StreamCapturingClient(**kwargs)
        except docker.errors.DockerException as exc:
            raise BuildError(f"cannot reach the Docker engine: {exc}") from None

    def check_engine(self) -> str:
        """The engine's version; raises :class:`BuildError` if it does not answer."""
        client = self.api_client()
        try:
            version = client.version()
            self._api_version = str(version["ApiVersion"])
            return str(version["Version"])
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise BuildError(f"the Docker engine does not answer: {exc}") from None
        finally:
            client.close()

    async def build(
        self,
        context_dir: Path,
        spec: BuildSpec,
        write_log: Callable[[bytes], None],
        cancelled: asyncio.Event,
    ) -> str:
        """Build ``context_dir``; returns the image id.

        Raises :class:`BuildError` if the build fails and
        :class:`BuildCancelled` if ``cancelled`` is set before it ends.
        """
        loop = asyncio.get_running_loop()
        client = self.api_client()

        def log_from_thread(data: bytes) -> None:
            loop.call_soon_threadsafe(write_log, data)

        build = asyncio.ensure_future(
            asyncio.to_thread(
                self._build_blocking, client, context_dir, spec, log_from_thread
            )
        )
        stop = asyncio.ensure_future(cancelled.wait())
        try:
            await asyncio.wait({build, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not build.done():
                client.abort_stream()
                with contextlib.suppress(Exception):
                    await build
                raise BuildCancelled()
            return build.result()
        except asyncio.CancelledError:
            client.abort_stream()
            # The thread ends with an error once its stream is cut: collect it.
            build.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise
        finally:
            stop.cancel()
            client.close()

    def _build_blocking(
        self,
        client: _StreamCapturingClient,
        context_dir: Path,
        spec: BuildSpec,
        write_log: Callable[[bytes], None],
    ) -> str:
        try:
            stream = client.build(
                path=str(context_dir),
                dockerfile=spec.dockerfile,
                buildargs=spec.build_args or None,
                target=spec.target or None,
                squash=spec.squash or None,
                nocache=spec.no_cache,
                network_mode=self._network_mode,
                rm=True,
                forcerm=True,
                decode=False,
            )
            return _follow_build_output(decode_json_stream(stream), write_log)
        except docker.errors.APIError as exc:
            raise BuildError(
                f"the Docker engine refused the build: {exc.explanation}"
            ) from None
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise BuildError(
                f"lost the Docker engine during the build: {exc}"
            ) from None


def _follow_build_output(
    messages: Iterator[dict[str, Any]], write_log: Callable[[bytes], None]
) -> str:
    image_id = ""
    for message in messages:
        if "stream" in message:
            write_log(str(message["stream"]).encode())
        elif (error := engine_error(message)) is not None:
            raise BuildError(error)
        elif "status" in message:
            progress = f" {message['progress']}" if message.get("progress") else ""
            write_log(f"{message['status']}{progress}\n".encode())
        aux = message.get("aux")
        if isinstance(aux, dict) and aux.get("ID"):
            image_id = str(aux["ID"])
    if not image_id:
        raise BuildError("the engine ended the build without reporting an image id")
    return image_id
