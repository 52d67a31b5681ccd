"""Parse the ``tcp:HOST:PORT`` addresses used on the command line."""

from __future__ import annotations

from dataclasses import dataclass

from build_api.errors import ConfigError


@dataclass(frozen=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_tcp_address(text: str) -> TcpAddress:
    """Parse ``tcp:HOST:PORT`` (an IPv6 host goes in brackets)."""
    scheme, sep, rest = text.partition(":")
    if scheme != "tcp" or not sep:
        raise ConfigError(f"address {text!r} must look like tcp:HOST:PORT")
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"address {text!r} has no host (tcp:HOST:PORT)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"address {text!r} has a bad port {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"address {text!r} has a port out of range")
    return TcpAddress(host, port)
