"""The job log: byte-exact chunks, long-polling, negative offsets."""

from __future__ import annotations

import asyncio
import os

import pytest

from build_api.joblog import JobLog


async def read_all(log: JobLog, *, limit: int) -> bytes:
    out, offset = b"", 0
    while True:
        chunk, offset, _ = await log.read(offset, limit=limit)
        if not chunk:
            return out
        out += chunk


async def test_multibyte_text_survives_every_chunk_boundary() -> None:
    text = "héllo → wörld 🎉\n".encode()
    log = JobLog()
    log.write(text)
    log.close()
    for limit in range(1, len(text) + 1):
        assert await read_all(log, limit=limit) == text


async def test_reader_waits_for_more_then_sees_the_end() -> None:
    log = JobLog()
    reader = asyncio.create_task(read_all(log, limit=4))
    await asyncio.sleep(0)
    log.write(b"abc")
    await asyncio.sleep(0)
    log.write(b"defgh")
    assert not reader.done()
    log.close()
    assert await reader == b"abcdefgh"


async def test_negative_start_counts_from_the_end() -> None:
    log = JobLog()
    log.write(b"0123456789")
    assert await log.read(-3) == (b"789", 10, False)
    assert await log.read(-100) == (b"0123456789", 10, False)


async def test_last_chunk_of_a_finished_log_says_it_ended() -> None:
    log = JobLog()
    log.write(b"abcdef")
    assert await log.read(0, limit=4) == (b"abcd", 4, False)
    log.close()
    assert await log.read(4) == (b"ef", 6, True)


async def test_read_past_end_of_closed_log_is_empty() -> None:
    log = JobLog()
    log.write(b"abc")
    log.close()
    assert await log.read(3) == (b"", 3, True)
    assert await log.read(50) == (b"", 3, True)


async def test_small_log_stays_in_memory(tmp_path) -> None:
    path = tmp_path / "job.log"
    log = JobLog(path=path)
    log.write(b"short\n")
    log.close()
    assert not path.exists()
    assert await read_all(log, limit=3) == b"short\n"


async def test_large_log_moves_to_its_file_and_reads_the_same(tmp_path) -> None:
    path = tmp_path / "job.log"
    log = JobLog(path=path)
    text = "ünïcödé ✓\n".encode() * 3000
    for i in range(0, len(text), 999):
        log.write(text[i : i + 999])
    log.close()
    assert path.read_bytes() == text
    assert await read_all(log, limit=7) == text
    log.discard()
    assert not path.exists()


async def test_log_stops_at_its_limit_and_says_so() -> None:
    log = JobLog(max_bytes=10)
    log.write(b"0123456")
    log.write(b"789abcdef")
    log.write(b"more")
    log.close()
    assert log.contents() == (
        b"0123456789\n[log truncated: it passed the limit of 10 bytes]\n"
    )


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("size", [100, 100_000])
async def test_kept_logs_come_back_holding_no_file_open(tmp_path, size: int) -> None:
    text = b"x" * (size - 1) + b"\n"
    for i in range(50):
        log = JobLog(path=tmp_path / f"{i}.log")
        log.write(text)
        log.persist()  # as the scheduler does when it stops
    before = open_files()
    logs = [JobLog.reopen(tmp_path / f"{i}.log") for i in range(50)]
    assert open_files() == before
    assert [log.contents() for log in logs] == [text] * 50
    logs[0].write(b"and more\n")
    assert logs[0].contents() == text + b"and more\n"
    for log in logs:
        log.discard()
    assert open_files() <= before
    assert list(tmp_path.iterdir()) == []
