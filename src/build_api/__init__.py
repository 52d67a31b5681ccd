"""Parts shared by the scheduler, the worker and the client.

The schema, sturdy references and `.cap` files, keys and TLS, and the code
that listens for and dials Cap'n Proto connections.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("build-scheduler")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"
