"""The embedded job store: one SQLite file plus a folder of inputs and results (`JOB_DIR`).

Shared by every gunicorn worker of one machine and kept across restarts. SQLite serialises the
writers (WAL, `BEGIN IMMEDIATE`), so a claim is one transaction: the oldest queued job, or a
running one whose lease has run out, becomes this owner's. Results are written under a name of
their own claim first and become the job's only if the claim still holds when it is committed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wav2lip_core.errors import Busy, JobNotDone, JobNotFound

from .jobs import Claim, Job

POLL_S = 0.25  # an idle worker looks for new jobs this often
SWEEP_S = 60.0  # an idle worker removes expired jobs this often (and every submit does)
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, progress REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, started_at REAL, completed_at REAL, error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, webhook_url TEXT, base_url TEXT NOT NULL DEFAULT '',
    owner TEXT, lease_until REAL, result TEXT, expires_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
"""
COLUMNS = "id, status, progress, created_at, started_at, completed_at, error, attempts, webhook_url, base_url"


class SqliteJobs:
    """Jobs of one machine: rows in `root/jobs.sqlite3`, inputs in `root/inputs/<id>/`, results in `root/results/`."""

    def __init__(self, root: Path, lease_s: float, ttl_s: float):
        # absolute once: a relative JOB_DIR (the default) means the folder the server started in, and Flask's
        # send_file would read a relative path against the app's package instead
        self.root, self.lease_s, self.ttl_s = root.absolute(), lease_s, ttl_s
        self._local = threading.local()  # a connection per thread: sqlite3 connections are not shared
        self._swept = 0.0

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE): no two claims read the same queue."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.rollback()
            raise
        db.commit()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            (self.root / "results").mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.root / "jobs.sqlite3", timeout=30, isolation_level=None)
            _setup(db)
            self._local.db = db
        return db

    def submit(self, job: Job, parts: dict[str, bytes], limit: int) -> None:
        folder = self.root / "inputs" / job.id
        folder.mkdir(parents=True)
        for name, data in parts.items():
            (folder / name).write_bytes(data)
        try:
            with self._tx() as db:
                self._expire(db)
                (queued,) = db.execute("SELECT count(*) FROM jobs WHERE status = 'queued'").fetchone()
                if queued >= limit:
                    raise Busy(f"{queued} jobs are queued, the limit (JOB_QUEUE_MAX); retry later", code="queue_full", retry_after=5)
                db.execute(
                    "INSERT INTO jobs (id, status, created_at, webhook_url, base_url) VALUES (?, 'queued', ?, ?, ?)",
                    (job.id, job.created_at, job.webhook_url, job.base_url),
                )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def get(self, job_id: str) -> Job:
        row = (
            self._db()
            .execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ? AND NOT coalesce(expires_at < ?, 0)", (job_id, time.time()))
            .fetchone()
        )
        if row is None:
            raise JobNotFound(f"no job with id {job_id!r} (finished jobs are kept for JOB_TTL_S = {self.ttl_s:g} s)")
        return _job(row)

    def claim(self, owner: str, wait_s: float) -> Claim | None:
        end = time.monotonic() + wait_s
        while True:
            now = time.time()
            with self._tx() as db:
                row = db.execute(
                    "SELECT id FROM jobs WHERE status = 'queued' OR (status = 'running' AND lease_until < ?) ORDER BY created_at LIMIT 1",
                    (now,),
                ).fetchone()
                if row is not None:
                    db.execute(
                        "UPDATE jobs SET status = 'running', owner = ?, attempts = attempts + 1, lease_until = ?,"
                        " started_at = coalesce(started_at, ?) WHERE id = ?",
                        (owner, now + self.lease_s, now, row[0]),
                    )
                    return Claim(row[0], owner)
                if time.monotonic() - self._swept > SWEEP_S:
                    self._swept = time.monotonic()
                    self._expire(db)
            if time.monotonic() >= end:
                return None
            time.sleep(POLL_S)

    def inputs(self, claim: Claim) -> dict[str, bytes]:
        folder = self.root / "inputs" / claim.job_id
        try:
            return {p.name: p.read_bytes() for p in folder.iterdir()}
        except FileNotFoundError as e:  # cancelled (or expired) since it was claimed
            raise JobNotFound(f"job {claim.job_id} has no inputs any more: it was cancelled") from e

    def renew(self, claim: Claim, progress: float) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET lease_until = ?, progress = ? WHERE id = ? AND owner = ? AND status = 'running'",
                (time.time() + self.lease_s, progress, claim.job_id, claim.owner),
            )
            return cur.rowcount == 1

    def finish(self, claim: Claim, mp4: bytes) -> bool:
        name = f"{claim.job_id}-{uuid.uuid4().hex}.mp4"  # this claim's own file: a stale claim never overwrites the kept one
        path = self.root / "results" / name
        path.write_bytes(mp4)
        if self._end(claim, "done", None, name):
            return True
        path.unlink()
        return False

    def fail(self, claim: Claim, error: dict[str, str]) -> bool:
        return self._end(claim, "error", error, None)

    def _end(self, claim: Claim, status: str, error: dict[str, str] | None, result: str | None) -> bool:
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status = ?, error = ?, result = ?, progress = CASE WHEN ? = 'done' THEN 1 ELSE progress END,"
                " completed_at = ?, expires_at = ?, owner = NULL WHERE id = ? AND owner = ? AND status = 'running'",
                (status, json.dumps(error) if error else None, result, status, now, now + self.ttl_s, claim.job_id, claim.owner),
            )
            ended = cur.rowcount == 1
        if ended:
            shutil.rmtree(self.root / "inputs" / claim.job_id, ignore_errors=True)
        return ended

    def cancel(self, job_id: str) -> Job | None:
        self.get(job_id)  # JobNotFound when unknown or expired
        now, cancelled = time.time(), json.dumps({"code": "cancelled", "message": "cancelled by DELETE"})
        with self._tx() as db:  # decided on the state inside the transaction: a worker may finish it meanwhile
            cur = db.execute(
                "UPDATE jobs SET status = 'cancelled', owner = NULL, completed_at = ?, expires_at = ?, error = ?"
                " WHERE id = ? AND status IN ('queued', 'running')",
                (now, now + self.ttl_s, cancelled, job_id),
            )
            removed = None if cur.rowcount else db.execute("DELETE FROM jobs WHERE id = ? RETURNING result", (job_id,)).fetchone()
        self._remove(job_id, removed[0] if removed else None)
        return None if removed else self.get(job_id)

    def video(self, job_id: str) -> Path:
        job = self.get(job_id)
        (result,) = self._db().execute("SELECT result FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if job.status != "done" or result is None:
            raise JobNotDone(f"job {job_id} is {job.status}: its video exists once it is done (poll GET /api/jobs/{job_id})")
        return self.root / "results" / result

    def waiting(self) -> int:
        return self._db().execute("SELECT count(*) FROM jobs WHERE status = 'queued'").fetchone()[0]

    def _expire(self, db: sqlite3.Connection) -> None:
        """Remove finished jobs past their time, with their files (inside a write transaction)."""
        for job_id, result in db.execute("DELETE FROM jobs WHERE expires_at < ? RETURNING id, result", (time.time(),)).fetchall():
            self._remove(job_id, result)

    def _remove(self, job_id: str, result: str | None) -> None:
        shutil.rmtree(self.root / "inputs" / job_id, ignore_errors=True)
        if result is not None:
            with contextlib.suppress(FileNotFoundError):  # removed by another worker meanwhile
                os.unlink(self.root / "results" / result)


def _setup(db: sqlite3.Connection, tries: int = 50) -> None:
    """WAL (readers never wait for the writer) and the schema. Switching to WAL takes a lock that does not wait for
    the busy timeout: workers opening the file at the same moment retry."""
    for attempt in range(tries):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == tries - 1:
                raise
            time.sleep(0.1)
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)


def _job(row: tuple) -> Job:
    values = dict(zip(COLUMNS.split(", "), row, strict=True))
    values["error"] = json.loads(values["error"]) if values["error"] else None
    return Job(**values)
