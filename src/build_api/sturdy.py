"""Sturdy references: the text form of a capability, and `.cap` files.

A sturdy reference is one line::

    capnp://sha-256:FINGERPRINT@HOST:PORT/SERVICE_ID

FINGERPRINT is the base64url SHA-256 of the scheduler's public key and
SERVICE_ID the base64url secret that the scheduler's restorer maps to a
capability. Whoever holds the line holds the capability, so files holding
one are written readable by their owner only.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from build_api.errors import CapFileError
from build_api.keys import b64url, b64url_decode, write_private_file

SCHEME = "capnp://"
_PORT = re.compile(r"[0-9]{1,5}")
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
HASH_PREFIX = "sha-256:"


@dataclass(frozen=True)
class SturdyRef:
    fingerprint: str
    host: str
    port: int
    service_id: bytes

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (
            f"{SCHEME}{HASH_PREFIX}{self.fingerprint}@{host}:{self.port}"
            f"/{b64url(self.service_id)}"
        )

    def __repr__(self) -> str:
        # The service id is a secret: keep it out of logs and tracebacks.
        return f"SturdyRef({self.host}:{self.port}, fingerprint={self.fingerprint})"


def parse_sturdy_ref(text: str) -> SturdyRef:
    """Parse the text of a sturdy reference; each malformed form has its own error."""
    text = text.strip()
    if not text:
        raise CapFileError("it is empty")
    if not text.startswith(SCHEME):
        raise CapFileError(f"it does not start with {SCHEME!r}")
    rest = text[len(SCHEME) :]
    auth, at, location = rest.partition("@")
    if not at:
        raise CapFileError(
            "it has no key fingerprint (capnp://sha-256:HASH@HOST:PORT/ID)"
        )
    if not auth.startswith(HASH_PREFIX):
        raise CapFileError(f"its fingerprint does not start with {HASH_PREFIX!r}")
    fingerprint = auth[len(HASH_PREFIX) :]
    try:
        if len(b64url_decode(fingerprint)) != 32:
            raise ValueError
    except ValueError:
        raise CapFileError("its fingerprint is not a base64url SHA-256") from None
    hostport, slash, service = location.partition("/")
    host, port = _parse_host_port(hostport)
    if not slash or not service:
        raise CapFileError("it has no service id after the address")
    try:
        service_id = b64url_decode(service)
    except ValueError:
        raise CapFileError("its service id is not valid base64url") from None
    return SturdyRef(fingerprint, host, port, service_id)


def _parse_host_port(hostport: str) -> tuple[str, int]:
    if hostport.startswith("["):
        host, bracket, port_part = hostport[1:].partition("]")
        colon, port_text = port_part[:1], port_part[1:]
        if not bracket or colon != ":":
            raise CapFileError("its IPv6 address is malformed")
    else:
        host, colon, port_text = hostport.rpartition(":")
        if not colon:
            host, port_text = hostport, ""
    if not host:
        raise CapFileError("it has no host")
    if not _is_valid_host(host):
        raise CapFileError(f"its host {host!r} is not a valid host name or address")
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) <= 65535:
        raise CapFileError("it has no valid port after the host")
    return host, int(port_text)


def _is_valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        # What the resolver will be asked: IDNA rules catch empty or long labels.
        host.encode("idna")
    except UnicodeError:
        return False
    return all(_LABEL.fullmatch(label) for label in host.rstrip(".").split("."))


def read_cap_file(path: Path) -> SturdyRef:
    """Read a `.cap` file, saying in one line what is wrong with it if anything."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CapFileError(f"capability file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CapFileError(f"capability file {path} cannot be read: {exc}") from None
    try:
        return parse_sturdy_ref(text)
    except CapFileError as exc:
        raise CapFileError(f"capability file {path} is malformed: {exc}") from None


def write_cap_file(path: Path, ref: SturdyRef) -> None:
    """Write ``ref`` to ``path`` (mode 0600), replacing any older file."""
    write_private_file(path, f"{ref}\n".encode())
