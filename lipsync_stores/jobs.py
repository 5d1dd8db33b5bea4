"""Async jobs: what a job is, the small interface its two stores share.

A job is a `POST /api/generate` request run later by any worker of any replica. Its life:
queued → running → done | error, or cancelled (by `DELETE`). A worker `claim`s a job with a lease
and renews it while it works; a job whose lease runs out (its worker or replica died) is claimed
again by another worker, with a new `owner` token. Every change a worker makes (`renew`, `finish`,
`fail`) names its token and is refused once the token is stale: however many workers ran a job,
exactly one result is kept and the client sees `done` once.

Stores: `jobs_sqlite.SqliteJobs` (one machine: a directory plus SQLite, the default) and
`jobs_redis.RedisJobs` (`REDIS_URL`: every replica). A store keeps a job's request as named byte strings it never
reads (the server's `payload.to_parts`).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from wav2lip_core.errors import JobNotFound

STATUSES = ("queued", "running", "done", "error", "cancelled")
FINAL = ("done", "error", "cancelled")
JOB_ID = re.compile(r"[0-9a-f]{32}")  # what new_job makes: uuid4().hex


@dataclass
class Job:
    """A job's public state; times are Unix seconds."""

    id: str
    status: str = "queued"
    progress: float = 0.0
    created_at: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None
    error: dict[str, str] | None = None
    attempts: int = 0  # claims so far: > 1 when a worker died and another took the job over
    webhook_url: str | None = None
    base_url: str = ""  # where the client reached us (PUBLIC_URL, else the request's host): the links' base

    def describe(self) -> dict[str, Any]:
        """The `GET /api/jobs/{id}` answer (and the webhook's body)."""
        base_url = self.base_url
        return {
            "id": self.id, "status": self.status, "progress": round(self.progress, 3),
            "created_at": iso(self.created_at), "started_at": iso(self.started_at), "completed_at": iso(self.completed_at),
            "error": self.error, "attempts": self.attempts,
            "status_url": f"{base_url}/api/jobs/{self.id}", "result_url": f"{base_url}/api/jobs/{self.id}/video",
        }  # fmt: skip


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a running job: `owner` is the token every later change must name."""

    job_id: str
    owner: str


class JobStore(Protocol):
    """Job state, inputs and results; both stores keep them for `ttl_s` after a job ends."""

    def submit(self, job: Job, parts: dict[str, bytes], limit: int) -> None:
        """Queue a new job with its inputs; `Busy` (code queue_full) when `limit` jobs already wait."""

    def get(self, job_id: str) -> Job:
        """The job; `JobNotFound` if unknown, expired or deleted."""

    def claim(self, owner: str, wait_s: float) -> Claim | None:
        """The oldest queued job (or one whose lease ran out), now running under `owner`; None after `wait_s`."""

    def inputs(self, claim: Claim) -> dict[str, bytes]:
        """The claimed job's request parts."""

    def renew(self, claim: Claim, progress: float) -> bool:
        """Extend the lease and record progress; False when the job is no longer this claim's (cancelled or taken over)."""

    def finish(self, claim: Claim, mp4: bytes) -> bool:
        """Store the result and mark the job done, if the claim still holds; False if it does not (the result is dropped)."""

    def fail(self, claim: Claim, error: dict[str, str]) -> bool:
        """Mark the job failed with `error` ({"code", "message"}), if the claim still holds."""

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (its inputs go): the job, now cancelled; a finished job is removed with its result: None."""

    def video(self, job_id: str) -> bytes | Path:
        """A done job's MP4 (bytes, or the file holding it); `JobNotFound` / `JobNotDone` otherwise."""

    def waiting(self) -> int:
        """Jobs queued now."""


def new_job(webhook_url: str | None, base_url: str, now: float) -> Job:
    return Job(id=uuid.uuid4().hex, created_at=now, webhook_url=webhook_url, base_url=base_url)


def iso(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_id_checked(job_id: str) -> str:
    """Ids are what `new_job` makes (32 hex digits); anything else is refused before it reaches a store."""
    if not JOB_ID.fullmatch(job_id):
        raise JobNotFound(f"no job with id {job_id[:80]!r} (job ids are 32 hex digits)")
    return job_id
