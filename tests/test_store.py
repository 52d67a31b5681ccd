"""The state database: job rows written per loop turn, failures contained."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from build_scheduler.store import Store, StoredJob


def job(job_id: str) -> StoredJob:
    return StoredJob(job_id, "linux", "default", False, 0.0, b"packed")


def stored_ids(path: Path) -> list[str]:
    store = Store(path)
    try:
        return [stored.id for stored in store.unfinished_jobs()]
    finally:
        store.close()


async def test_jobs_are_written_at_the_end_of_the_loop_turn_in_order(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "state.db")
    for job_id in ("a", "b", "c"):
        store.add_job(job(job_id))
    assert stored_ids(tmp_path / "state.db") == []  # not yet
    await asyncio.sleep(0)
    assert stored_ids(tmp_path / "state.db") == ["a", "b", "c"]
    store.remove_job("b")
    await asyncio.sleep(0)
    assert stored_ids(tmp_path / "state.db") == ["a", "c"]
    store.close()


async def test_a_job_that_ends_in_the_turn_it_came_is_never_written(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "state.db")
    store.add_job(job("brief"))
    store.remove_job("brief")
    assert store._jobs_to_add == {} and store._jobs_to_remove == []
    await asyncio.sleep(0)
    assert stored_ids(tmp_path / "state.db") == []
    store.close()


async def test_a_failed_job_write_is_logged_and_blocks_no_later_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "state.db")
    store._db.execute("DROP TABLE jobs")  # every job write now fails
    store.add_job(job("lost"))
    with caplog.at_level(logging.ERROR):
        await asyncio.sleep(0)
    assert "Could not store 1 new and 0 ended jobs" in caplog.text
    store.set_rate("linux", "default", 2.0)
    store.close()
    reopened = Store(tmp_path / "state.db")
    assert list(reopened.rates()) == [("linux", "default", 2.0)]
    reopened.close()
