"""Garbage on the wire and oversized input: only the offender is dropped."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import ssl
import struct
from pathlib import Path

import pytest

from tests.cluster import Cluster, wait_for

CONNECTIONS_PER_KIND = 30


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tls_socket(port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw)


def dropped(sock: socket.socket, timeout: float = 10) -> bool:
    """Whether the peer closes the connection within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    return True


def send_expecting_drop(sock: socket.socket, data: bytes) -> None:
    """Send ``data``; the scheduler must drop the connection, during or after."""
    try:
        sock.sendall(data)
    except TimeoutError:
        raise  # not dropped: it stopped reading
    except OSError:  # dropped before it had read everything: as good
        return
    assert dropped(sock)


def random_bytes_connections(port: int, rng: random.Random) -> None:
    for _ in range(CONNECTIONS_PER_KIND):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            send_expecting_drop(sock, rng.randbytes(rng.randint(1, 20000)))


def garbage_handshakes(port: int, rng: random.Random) -> None:
    for _ in range(CONNECTIONS_PER_KIND):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            # A TLS handshake record header, then nonsense.
            send_expecting_drop(sock, b"\x16\x03\x01\x02\x00" + rng.randbytes(512))


def garbage_inside_tls(port: int, rng: random.Random) -> None:
    for _ in range(CONNECTIONS_PER_KIND):
        with tls_socket(port) as sock:
            send_expecting_drop(sock, rng.randbytes(rng.randint(8, 20000)))


def oversized_message(port: int) -> None:
    with tls_socket(port) as sock:
        # One segment of 2^28 words (2 GiB): far over the 64 MiB limit.
        send_expecting_drop(sock, struct.pack("<II", 0, 1 << 28) + b"\0" * 65536)


def test_garbage_drops_only_its_own_connection(cluster: Cluster, dockerfile) -> None:
    pid = cluster.scheduler.popen.pid
    assert cluster.show() == "linux\n"  # settle the scheduler's own sockets
    baseline = open_fds(pid)
    rng = random.Random(42)

    random_bytes_connections(cluster.port, rng)
    garbage_handshakes(cluster.port, rng)
    garbage_inside_tls(cluster.port, rng)
    oversized_message(cluster.port)

    assert cluster.scheduler.popen.poll() is None
    assert cluster.show() == "linux\n"  # other clients are served
    wait_for(lambda: open_fds(pid) <= baseline + 2, "the scheduler to close them")
    assert "Traceback" not in cluster.scheduler.log


def test_oversized_dockerfile_is_refused_clearly(
    cluster: Cluster, tmp_path: Path
) -> None:
    big = tmp_path / "Dockerfile.big"
    big.write_text("FROM busybox\n" + "# padding\n" * 120_000)
    result = cluster.submit(big)
    assert result.returncode == 2
    size = big.stat().st_size
    assert result.stderr.strip() == (
        f"Error: the Dockerfile is {size} bytes; the limit is 1048576"
    )
    assert "0 queued" in cluster.show("linux")


@pytest.mark.docker
@pytest.mark.usefixtures("docker_engine")
def test_megabyte_lines_and_split_characters_arrive_byte_exact(
    cluster: Cluster, dockerfile
) -> None:
    cluster.start_worker("w1")
    # Lines of multi-byte characters (the engine echoes each in its step
    # line), cut wherever the log is cut as it streams through two hops;
    # test_joblog checks every possible cut of such text.
    notes = [f"{i:02d}" + "é✓🎉" * (4000 + i) for i in range(8)]
    args = "".join(f"ARG NOTE{i}={note}\n" for i, note in enumerate(notes))
    long_line = "x" * (4 * 1024 * 1024)
    result = cluster.submit(
        dockerfile(
            f"FROM busybox\n{args}"
            f"RUN head -c {len(long_line)} /dev/zero | tr '\\000' x && echo\n"
        )
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for i, note in enumerate(notes):
        assert f"Step {i + 3}/11 : ARG NOTE{i}={note}" in lines
    assert long_line in lines
    digest = hashlib.sha256(long_line.encode()).hexdigest()
    assert hashlib.sha256(lines[lines.index(long_line)].encode()).hexdigest() == digest


@pytest.mark.parametrize("ending", ["tcp_fin", "tls_close_notify"])
def test_a_peer_that_stops_in_the_middle_of_a_message_harms_nobody(
    cluster: Cluster, ending: str
) -> None:
    for _ in range(5):
        sock: socket.socket = tls_socket(cluster.port)
        # A segment table that promises 16 words of message, then the end.
        sock.sendall(struct.pack("<II", 0, 16))
        if ending == "tcp_fin":
            sock.shutdown(socket.SHUT_WR)
        else:
            sock = sock.unwrap()  # type: ignore[attr-defined]
        assert dropped(sock)
        sock.close()
    assert cluster.scheduler.popen.poll() is None, "the scheduler died"
    assert cluster.show() == "linux\n"  # other clients are served
