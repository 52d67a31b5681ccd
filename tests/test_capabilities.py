"""Access by capability: `.cap` files, key pinning, and what each cap allows."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import capnp
import pytest

from build_api import schema
from build_api.errors import PeerKeyMismatchError, ServiceError
from build_api.keys import SecretKey, b64url
from build_api.restorer import UNKNOWN_CAPABILITY
from build_api.rpc import connect, connect_and_restore
from build_api.sturdy import SturdyRef, read_cap_file, write_cap_file
from tests.cluster import Cluster


class RecordingTlsServer:
    """A TLS server with a key of its own that records every byte it is sent."""

    def __init__(self, key_path: Path) -> None:
        self.received = bytearray()
        self.context = SecretKey.load_or_generate(key_path).server_ssl_context()
        self.handshakes = 0

    async def __aenter__(self) -> RecordingTlsServer:
        writers: list[asyncio.StreamWriter] = []

        async def handle(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            writers.append(writer)
            self.handshakes += 1
            while data := await reader.read(4096):
                self.received += data
            writer.close()

        self._writers = writers
        self.server = await asyncio.start_server(
            handle, "127.0.0.1", 0, ssl=self.context
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._writers:  # close what the peer left open
            writer.close()
        self.server.close()
        await self.server.wait_closed()


async def test_wrong_fingerprint_is_refused_before_any_rpc(tmp_path: Path) -> None:
    async with capnp.kj_loop(), RecordingTlsServer(tmp_path / "other.pem") as impostor:
        ref = SturdyRef(b64url(bytes(32)), "127.0.0.1", impostor.port, b"id")
        with pytest.raises(PeerKeyMismatchError, match="refusing to talk to it"):
            await connect_and_restore(ref, schema.build.Submission)
        await asyncio.sleep(0.2)
    assert impostor.handshakes == 1
    assert bytes(impostor.received) == b""


def test_client_refuses_wrong_fingerprint(cluster: Cluster, tmp_path: Path) -> None:
    ref = read_cap_file(cluster.cap("admin"))
    forged = tmp_path / "forged.cap"
    write_cap_file(
        forged, SturdyRef(b64url(bytes(32)), ref.host, ref.port, ref.service_id)
    )
    result = cluster.client("show", forged)
    assert result.returncode == 2
    assert "refusing to talk to it" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_wrong_secret_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    ref = read_cap_file(cluster.cap("admin"))
    forged = tmp_path / "guess.cap"
    write_cap_file(forged, SturdyRef(ref.fingerprint, ref.host, ref.port, b"guess" * 7))
    result = cluster.client("show", forged)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "Error: unknown capability (revoked, or not issued by this scheduler)"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is malformed: it is empty"),
        ("https://example/x", "is malformed: it does not start with 'capnp://'"),
        ("capnp://sha-256:{fp}@:9000/abc", "is malformed: it has no host"),
        ("capnp://sha-256:{fp}@127.0.0.1:9000", "is malformed: it has no service id"),
        (
            "capnp://sha-256:{fp}@127.0.0.1:9000/a%b",
            "service id is not valid base64url",
        ),
        (None, "does not exist"),
    ],
)
def test_malformed_cap_files_get_one_line_errors(
    cluster: Cluster, tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "bad.cap"
    if content is not None:
        path.write_text(content.format(fp=b64url(bytes(32))))
    for args in (["show", path], ["submit", path, "--pool=linux", "-"]):
        result = cluster.client(*args, input="FROM busybox\n")
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_pool_cap_cannot_submit(cluster: Cluster) -> None:
    result = cluster.client(
        "submit", cluster.cap("pool-linux"), "--pool=linux", "-", input="FROM busybox\n"
    )
    assert result.returncode == 2
    assert "it cannot be used for submitting jobs" in result.stderr
    assert "0 queued" in cluster.show("linux")


@pytest.mark.parametrize("cap", ["pool-linux", "submission"])
def test_only_admin_cap_reaches_admin(cluster: Cluster, cap: str) -> None:
    result = cluster.client("show", cluster.cap(cap))
    assert result.returncode == 2
    assert "it cannot be used for administration" in result.stderr


async def test_refusals_carry_no_server_detail(cluster: Cluster) -> None:
    ref = read_cap_file(cluster.cap("submission"))
    async with capnp.kj_loop():
        connection = await connect(ref)
        try:
            with pytest.raises(capnp.KjException) as info:
                await connection.bootstrap().restore(b"wrong", 0)
        finally:
            connection.close()
    description = info.value.description
    assert "Traceback" not in description and ".py" not in description
    assert description.endswith("Refused: " + UNKNOWN_CAPABILITY + "\n")


async def test_submission_cap_cannot_register(cluster: Cluster) -> None:
    ref = read_cap_file(cluster.cap("submission"))
    async with capnp.kj_loop():
        with pytest.raises(
            ServiceError, match="cannot be used for registering workers"
        ):
            await connect_and_restore(ref, schema.build.Registration)


def test_restart_with_same_key_writes_the_same_cap_files(cluster: Cluster) -> None:
    before = {p.name: p.read_text() for p in cluster.secrets.glob("*.cap")}
    assert set(before) == {"submission.cap", "admin.cap", "pool-linux.cap"}
    cluster.scheduler.stop()
    cluster.start_scheduler()
    after = {p.name: p.read_text() for p in cluster.secrets.glob("*.cap")}
    assert after == before
    assert cluster.show() == "linux\n"


def test_scheduler_logs_what_an_operator_needs(cluster: Cluster) -> None:
    log = cluster.scheduler.log
    assert "Generating new secret key to store in" in log
    assert "Server key hash: sha-256:" in log
    assert f"Listening on tcp:127.0.0.1:{cluster.port}" in log
    for name in ("submission", "admin", "pool-linux"):
        assert f'Wrote capability reference to "{cluster.cap(name)}"' in log


def test_sigterm_stops_the_scheduler_cleanly(cluster: Cluster) -> None:
    assert cluster.scheduler.stop() == 0
    assert "Shutting down" in cluster.scheduler.log


def test_port_in_use_is_a_one_line_error(cluster: Cluster, tmp_path: Path) -> None:
    other = Cluster(tmp_path / "second", port=cluster.port)
    other.secrets.mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "-m", "build_scheduler",
         f"--capnp-secret-key-file={other.secrets / 'key.pem'}",
         f"--capnp-listen-address=tcp:127.0.0.1:{cluster.port}",
         f"--state-dir={other.root / 'state'}", "--pools=linux"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    address = f"tcp:127.0.0.1:{cluster.port}"
    assert last == f"Error: cannot listen on {address}: Address already in use"
    assert "Traceback" not in result.stderr
