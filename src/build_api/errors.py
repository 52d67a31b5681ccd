"""The exceptions of the project, in one tree.

    BuildSystemError
    ├── ConfigError         a flag, address or file given by a person is wrong
    │   └── CapFileError    a `.cap` file cannot be used
    ├── ConnectError        the scheduler cannot be reached or is not the one
    │   └── PeerKeyMismatchError   its key is not the one the `.cap` names
    ├── ServiceError        a request was refused; the message crosses the wire
    └── BuildError          a build failed on the worker

Library errors (capnp, docker, git) are translated into these at the point
where they are caught, with ``raise ... from exc``.
"""

from __future__ import annotations


class BuildSystemError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(BuildSystemError):
    """A setting, address or file given by a person cannot be used."""


class CapFileError(ConfigError):
    """A `.cap` file is missing or malformed."""


class ConnectError(BuildSystemError):
    """The scheduler could not be reached, or refused the capability."""


class PeerKeyMismatchError(ConnectError):
    """The peer's public key does not have the fingerprint we expected."""


class ServiceError(BuildSystemError):
    """A request was refused; the message is meant for the caller."""


class BuildError(BuildSystemError):
    """A build failed; the message says why, for the job's log."""
