"""Decoding the engine's JSON build stream, however it is chunked."""

from __future__ import annotations

import json

import pytest

from build_worker.engine_stream import decode_json_stream

MESSAGES = [
    {"stream": "Step 1/2 : FROM busybox\n"},
    {"stream": "naïve café ✓ 🎉\n"},
    {"aux": {"ID": "sha256:abc"}},
]
RAW = "".join(json.dumps(m, ensure_ascii=False) + "\r\n" for m in MESSAGES).encode()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, len(RAW)])
def test_any_chunking_gives_the_same_messages(size: int) -> None:
    chunks = [RAW[i : i + size] for i in range(0, len(RAW), size)]
    assert list(decode_json_stream(chunks)) == MESSAGES


def test_truncated_stream_is_an_error() -> None:
    with pytest.raises(ValueError, match="ended inside a message"):
        list(decode_json_stream([RAW[:-5]]))
