"""The scheduler's persistent state: one SQLite database in the state dir.

What it keeps, so that a restart loses nothing that matters:

* clients: each name with the SHA-256 of its submission capability's id
  (never the id itself), and each client's rate in each pool;
* workers that were paused, connected or not;
* cache records (which worker built which hint, and when) and the measured
  costs of each pool;
* every job that has not ended, with its description, so it can be queued
  again after a restart. The description may hold a registry password: the
  database is made mode 0600, in a state directory that should be as
  private as the key.

Writes to jobs happen on the hot path (one insert per submission, one
delete per end). They run in an open transaction that is committed once
per turn of the event loop, so a burst of submissions costs one commit, and
the process's crash loses at most the writes of the current turn. Cache
records and costs change with every job but are only hints: they are
written as a whole every few seconds and at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    name TEXT PRIMARY KEY,
    id_hash BLOB NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rates (
    pool TEXT NOT NULL,
    client TEXT NOT NULL,
    rate REAL NOT NULL,
    PRIMARY KEY (pool, client)
);
CREATE TABLE IF NOT EXISTS paused_workers (
    pool TEXT NOT NULL,
    worker TEXT NOT NULL,
    PRIMARY KEY (pool, worker)
);
CREATE TABLE IF NOT EXISTS cache_hints (
    pool TEXT NOT NULL,
    worker TEXT NOT NULL,
    hint TEXT NOT NULL,
    last_used REAL NOT NULL,  -- wall-clock seconds
    PRIMARY KEY (pool, worker, hint)
);
CREATE TABLE IF NOT EXISTS costs (
    pool TEXT NOT NULL,
    hint TEXT NOT NULL,  -- '' for the whole pool
    cached INTEGER NOT NULL,
    mean REAL NOT NULL,
    samples INTEGER NOT NULL,
    PRIMARY KEY (pool, hint, cached)
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    pool TEXT NOT NULL,
    client TEXT NOT NULL,
    urgent INTEGER NOT NULL,
    submitted REAL NOT NULL,  -- wall-clock seconds
    description BLOB NOT NULL  -- packed Cap'n Proto JobDescription
);
"""


@dataclass(frozen=True)
class StoredJob:
    id: str
    pool: str
    client: str
    urgent: bool
    submitted: float
    description: bytes


@dataclass(frozen=True)
class CacheRecord:
    pool: str
    worker: str
    hint: str
    last_used: float


@dataclass(frozen=True)
class CostRecord:
    pool: str
    hint: str
    cached: bool
    mean: float
    samples: int


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL survives a crash of the process; a power cut may
        # lose the last commits, never corrupt the database.
        self._db.execute("PRAGMA synchronous=NORMAL")
        # A finished job's row (registry password included) is overwritten,
        # not just unlinked.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(SCHEMA)
        self._commit_pending = False
        self._closed = False
        # Job rows wait here for the commit at the end of the loop turn, so
        # that a turn's jobs go in one statement, and a job that starts and
        # ends within a turn is never written at all.
        self._jobs_to_add: dict[str, StoredJob] = {}
        self._jobs_to_remove: list[str] = []

    def close(self) -> None:
        self.commit()
        self._closed = True
        self._db.close()

    # Transactions

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        """Run a write in the open transaction, committed this loop turn."""
        if not self._db.in_transaction:
            self._db.execute("BEGIN")
        self._db.execute(sql, params)
        self._commit_soon()

    def _commit_soon(self) -> None:
        if not self._commit_pending:
            self._commit_pending = True
            try:
                asyncio.get_running_loop().call_soon(self.commit)
            except RuntimeError:  # no loop: commit at once
                self.commit()

    def commit(self) -> None:
        self._commit_pending = False
        if self._closed:
            return
        if self._db.in_transaction:
            self._db.execute("COMMIT")
        if self._jobs_to_add or self._jobs_to_remove:
            self._write_jobs()

    def _write_jobs(self) -> None:
        """Write the buffered job rows in a transaction of their own.

        The jobs were accepted already, so a failure (a full disk) is not
        theirs to report: it is logged, and they stay unstored, which only
        matters if the scheduler restarts before they end.
        """
        added = [
            (job.id, job.pool, job.client, int(job.urgent), job.submitted,
             job.description)
            for job in self._jobs_to_add.values()
        ]  # fmt: skip
        removed = [(job_id,) for job_id in self._jobs_to_remove]
        self._jobs_to_add.clear()
        self._jobs_to_remove.clear()
        try:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO jobs"
                " (id, pool, client, urgent, submitted, description)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                added,
            )
            self._db.executemany("DELETE FROM jobs WHERE id = ?", removed)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            logger.error(
                "Could not store %d new and %d ended jobs in the state database"
                " (%s): a restart now would not bring the new ones back, and"
                " would bring the ended ones back again",
                len(added), len(removed), exc,
            )  # fmt: skip

    # Clients

    def add_client(self, name: str, id_hash: bytes) -> None:
        self._write(
            "INSERT INTO clients (name, id_hash, created) VALUES (?, ?, ?)",
            (name, id_hash, time.time()),
        )
        self.commit()

    def remove_client(self, name: str) -> None:
        self._write("DELETE FROM clients WHERE name = ?", (name,))
        self._write("DELETE FROM rates WHERE client = ?", (name,))
        self.commit()

    def clients(self) -> dict[str, bytes]:
        rows = self._db.execute("SELECT name, id_hash FROM clients ORDER BY name")
        return {name: bytes(id_hash) for name, id_hash in rows}

    def set_rate(self, pool: str, client: str, rate: float) -> None:
        self._write(
            "INSERT OR REPLACE INTO rates (pool, client, rate) VALUES (?, ?, ?)",
            (pool, client, rate),
        )
        self.commit()

    def rates(self) -> Iterator[tuple[str, str, float]]:
        yield from self._db.execute("SELECT pool, client, rate FROM rates")

    # Workers

    def set_paused(self, pool: str, worker: str, paused: bool) -> None:
        if paused:
            sql = "INSERT OR IGNORE INTO paused_workers (pool, worker) VALUES (?, ?)"
        else:
            sql = "DELETE FROM paused_workers WHERE pool = ? AND worker = ?"
        self._write(sql, (pool, worker))
        self.commit()

    def paused_workers(self) -> Iterator[tuple[str, str]]:
        yield from self._db.execute("SELECT pool, worker FROM paused_workers")

    def forget_worker(self, pool: str, worker: str) -> None:
        for table in ("paused_workers", "cache_hints"):
            self._write(
                f"DELETE FROM {table} WHERE pool = ? AND worker = ?", (pool, worker)
            )
        self.commit()

    # Cache records and costs

    def save_cache(self, hints: list[CacheRecord], costs: list[CostRecord]) -> None:
        """Replace every cache record and cost with these."""
        self._write("DELETE FROM cache_hints", ())
        self._write("DELETE FROM costs", ())
        self._db.executemany(
            "INSERT INTO cache_hints VALUES (?, ?, ?, ?)",
            [(r.pool, r.worker, r.hint, r.last_used) for r in hints],
        )
        self._db.executemany(
            "INSERT INTO costs VALUES (?, ?, ?, ?, ?)",
            [(r.pool, r.hint, int(r.cached), r.mean, r.samples) for r in costs],
        )
        self.commit()

    def cache_records(self) -> list[CacheRecord]:
        rows = self._db.execute("SELECT pool, worker, hint, last_used FROM cache_hints")
        return [CacheRecord(*row) for row in rows]

    def cost_records(self) -> list[CostRecord]:
        rows = self._db.execute("SELECT pool, hint, cached, mean, samples FROM costs")
        return [CostRecord(p, h, bool(c), m, n) for p, h, c, m, n in rows]

    # Jobs

    def add_job(self, job: StoredJob) -> None:
        self._jobs_to_add[job.id] = job
        self._commit_soon()

    def remove_job(self, job_id: str) -> None:
        if self._jobs_to_add.pop(job_id, None) is None:  # it was written
            self._jobs_to_remove.append(job_id)
            self._commit_soon()

    def unfinished_jobs(self) -> list[StoredJob]:
        """Jobs that had not ended, in the order they were submitted."""
        self.commit()
        rows = self._db.execute(
            "SELECT id, pool, client, urgent, submitted, description FROM jobs"
            " ORDER BY seq"
        )
        return [StoredJob(i, p, c, bool(u), s, bytes(d)) for i, p, c, u, s, d in rows]
