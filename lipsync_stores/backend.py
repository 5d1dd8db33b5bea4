"""Where shared state lives: on this machine (the default), or in Redis when `REDIS_URL` is set.

The one place that chooses; everything else sees the small interfaces (`store.Avatars`, `jobs.JobStore`).
Redis clients connect on first use: a Redis that is down when a worker starts only makes the requests
that need it answer `503 store_unavailable` until it is back.
"""

from __future__ import annotations

from wav2lip_core.config import Settings

from .jobs import JobStore
from .jobs_sqlite import SqliteJobs
from .store import Avatars, AvatarStore


def open_avatars(settings: Settings) -> Avatars:
    """Registered avatars: AVATAR_DIR (every worker of this machine), or Redis (every replica)."""
    budget = settings.avatar_store_mb * 1024 * 1024
    if settings.redis_url:
        from .redis_store import RedisAvatarStore, connect

        return RedisAvatarStore(connect(settings.redis_url), budget, settings.avatar_dir)  # AVATAR_DIR: this machine's frame files
    return AvatarStore(settings.avatar_dir, budget)


def open_jobs(settings: Settings) -> JobStore:
    """The job store: SQLite and files under JOB_DIR (every worker of this machine), or Redis (every replica)."""
    if settings.redis_url:
        from .jobs_redis import RedisJobs
        from .redis_store import connect

        return RedisJobs(connect(settings.redis_url), settings.job_lease_s, settings.job_ttl_s)
    return SqliteJobs(settings.job_dir, settings.job_lease_s, settings.job_ttl_s)
