"""Decode the Docker engine's build output: a stream of JSON objects.

docker-py's own decoder turns each HTTP chunk into text separately, which
replaces a multi-byte character that a chunk boundary cuts in two. Here the
bytes go through one incremental UTF-8 decoder first, so a character is
decoded whole whatever the chunking.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Generator, Iterable, Iterator
from typing import Any


def decode_json_stream(chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """Yield each JSON object in a byte stream of concatenated objects."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    parser = json.JSONDecoder()
    buffer = ""
    for chunk in chunks:
        buffer += decoder.decode(chunk)
        buffer = yield from _parse_complete(parser, buffer)
    buffer += decoder.decode(b"", final=True)
    rest = yield from _parse_complete(parser, buffer)
    if rest.strip():
        raise ValueError(f"the engine's output ended inside a message: {rest[:200]!r}")


def _parse_complete(
    parser: json.JSONDecoder, buffer: str
) -> Generator[dict[str, Any], None, str]:
    # Returns (through StopIteration) whatever incomplete text is left over.
    position = 0
    while True:
        while position < len(buffer) and buffer[position].isspace():
            position += 1
        if position == len(buffer):
            return ""
        try:
            item, position = parser.raw_decode(buffer, position)
        except json.JSONDecodeError:
            return buffer[position:]
        if isinstance(item, dict):
            yield item


def engine_error(message: dict[str, Any]) -> str | None:
    """The error a stream message reports, if it reports one.

    The engine reports a failed build or push inside its stream, after an
    HTTP status that said all was well.
    """
    if "errorDetail" not in message and "error" not in message:
        return None
    detail = message.get("errorDetail") or {}
    return str(detail.get("message") or message.get("error") or "unknown error")
