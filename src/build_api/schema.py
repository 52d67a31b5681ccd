"""The Cap'n Proto schema, loaded once.

The schema file ships inside the package (``build_api/schema/``); in a
source checkout installed in editable mode it is read from the top-level
``schema/`` directory instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import capnp

SCHEMA_NAME = "build.capnp"

capnp.remove_import_hook()


def _schema_path() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "schema", here.parent.parent / "schema"):
        if (candidate / SCHEMA_NAME).is_file():
            return candidate / SCHEMA_NAME
    raise FileNotFoundError(
        f"{SCHEMA_NAME} is neither in {here} nor in the source tree"
    )


build: Any = capnp.load(str(_schema_path()))


def write_outcome(outcome: Any, kind: str, detail: str = "") -> None:
    """Fill an ``Outcome`` builder: ``kind`` is success, failure or cancelled."""
    if kind == "success":
        outcome.success = detail
    elif kind == "failure":
        outcome.failure = detail
    else:
        outcome.cancelled = None


def interface_id(interface: Any) -> int:
    """The 64-bit id of a schema interface, as sent in ``Restorer.restore``."""
    return int(interface.schema.node.id)
