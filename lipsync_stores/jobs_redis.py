"""The job store of several replicas: Redis (`REDIS_URL`), with a Redis Stream as the queue.

Why a stream and its consumer group (rather than RQ, Dramatiq or Celery): its failure semantics are
the lease this service needs, and nothing else. A delivered entry stays in the group's pending list,
owned by the consumer that read it, until it is acknowledged; `XAUTOCLAIM` hands an entry idle for
longer than the lease (JOB_LEASE_S) to another consumer. A running job's heartbeat re-claims its own
entry (`XCLAIM … JUSTID` resets the idle time), so only a job whose worker stopped beating — its
process or its machine died — is taken over, after one lease. RQ would run a job in a forked child
(OpenVINO is not fork-safe) and parks a dead worker's job as failed; Dramatiq requeues unacked
messages on a heartbeat of whole workers, checked at random; both bring a worker model of their own.
The same lease and the same owner tokens as the embedded store (jobs_sqlite.py): the two pass the
same tests.

Each change is one Lua script, atomic in Redis: a claim, a renewal, a result (stored only if the
claim's owner token still holds: exactly one result per job), a cancellation. Redis must keep its
data across restarts (`appendonly yes`) or queued jobs are lost with it.

Keys (prefix `lipsync:`): `job:<id>` a hash of the job's state, `job:<id>:in` its request parts,
`job:<id>:mp4` its video; `jobs` the stream (group `workers`), `jobs:queued` a sorted set of the
jobs waiting (the queue's length, bounded by JOB_QUEUE_MAX). Finished jobs expire by Redis TTL.
"""

from __future__ import annotations

import json
import time

import redis

from wav2lip_core.errors import Busy, JobNotDone, JobNotFound

from .jobs import Claim, Job
from .redis_store import unavailable

GROUP = "workers"
CANCELLED = json.dumps({"code": "cancelled", "message": "cancelled by DELETE"})

_SUBMIT = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], 'status', 'queued', 'progress', '0', 'created_at', ARGV[3], 'attempts', '0',
           'webhook_url', ARGV[4], 'base_url', ARGV[5])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[2], 'msg', redis.call('XADD', KEYS[3], '*', 'id', ARGV[2]))
return 1
"""
_CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then
  redis.call('XACK', KEYS[3], ARGV[5], ARGV[4]); redis.call('XDEL', KEYS[3], ARGV[4]); return 0
end
redis.call('HSET', KEYS[1], 'status', 'running', 'owner', ARGV[1], 'msg', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
return 1
"""
_RENEW = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[2])
redis.call('XCLAIM', KEYS[2], ARGV[4], ARGV[3], 0, redis.call('HGET', KEYS[1], 'msg'), 'JUSTID')
return 1
"""
_END = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
local ttl = tonumber(ARGV[4])
if ARGV[3] == 'done' then
  redis.call('SET', KEYS[2], ARGV[6], 'EX', ttl); redis.call('HSET', KEYS[1], 'progress', '1')
else
  redis.call('HSET', KEYS[1], 'error', ARGV[5])
end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'completed_at', ARGV[2])
redis.call('HDEL', KEYS[1], 'owner')
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('DEL', KEYS[3])
local msg = redis.call('HGET', KEYS[1], 'msg')
redis.call('XACK', KEYS[4], ARGV[7], msg); redis.call('XDEL', KEYS[4], msg)
return 1
"""
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'queued' or status == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'completed_at', ARGV[2], 'error', ARGV[4])
  redis.call('HDEL', KEYS[1], 'owner')
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  return 1
end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
return 0
"""


class RedisJobs:
    """Jobs shared by every replica on one Redis."""

    def __init__(self, client: redis.Redis, lease_s: float, ttl_s: float, prefix: str = "lipsync:"):
        self.r, self.lease_ms, self.ttl_s, self.p = client, int(lease_s * 1000), int(ttl_s), prefix
        self.stream, self.queued = f"{prefix}jobs", f"{prefix}jobs:queued"
        self._submit, self._claim, self._renew, self._end, self._cancel = (
            client.register_script(s) for s in (_SUBMIT, _CLAIM, _RENEW, _END, _CANCEL)
        )

    def _job(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}"

    def _keys(self, job_id: str) -> tuple[str, str, str]:
        """The job's state, its inputs and its video."""
        return self._job(job_id), f"{self._job(job_id)}:in", f"{self._job(job_id)}:mp4"

    def _group(self) -> None:
        """The consumer group, from the stream's start (after a Redis without its data, queued entries are not skipped)."""
        try:
            self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    @unavailable
    def submit(self, job: Job, parts: dict[str, bytes], limit: int) -> None:
        state, inputs, _ = self._keys(job.id)
        self.r.hset(inputs, mapping=parts)  # type: ignore[arg-type]
        self._group()
        args = [limit, job.id, job.created_at, job.webhook_url or "", job.base_url]
        if not self._submit(keys=[self.queued, state, self.stream], args=args):
            self.r.delete(inputs)
            raise Busy(f"{limit} jobs are queued, the limit (JOB_QUEUE_MAX); retry later", code="queue_full", retry_after=5)

    @unavailable
    def get(self, job_id: str) -> Job:
        raw = self.r.hgetall(self._job(job_id))
        if not raw:
            raise JobNotFound(f"no job with id {job_id!r} (finished jobs are kept for JOB_TTL_S = {self.ttl_s} s)")
        return _job(job_id, {k.decode(): v.decode() for k, v in raw.items()})

    @unavailable
    def claim(self, owner: str, wait_s: float) -> Claim | None:
        consumer = owner.rsplit("-", 1)[0]  # the worker thread; the last part of `owner` is this claim's own token
        self._group()
        deadline = time.monotonic() + wait_s
        while True:  # an entry of a cancelled or finished job is spent and skipped: on to the next
            entry = self._next_entry(consumer, max(0.001, deadline - time.monotonic()))
            if entry is None:
                return None
            msg_id, job_id = entry
            if self._claim(keys=[self._job(job_id), self.queued, self.stream], args=[owner, time.time(), job_id, msg_id, GROUP]):
                return Claim(job_id, owner)
            if time.monotonic() >= deadline:
                return None

    def _next_entry(self, consumer: str, wait_s: float) -> tuple[bytes, str] | None:
        """An entry idle beyond the lease (its worker died), else a new one (waiting up to `wait_s`): (entry id, job id)."""
        try:
            _, taken, _ = self.r.xautoclaim(self.stream, GROUP, consumer, self.lease_ms, "0-0", count=1)
            if not taken:
                got = self.r.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=1, block=max(1, int(wait_s * 1000)))
                taken = got[0][1] if got else []
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):  # Redis lost the group (a restart without its data): made again on the next call
                raise
            return None
        return (taken[0][0], taken[0][1][b"id"].decode()) if taken else None

    @unavailable
    def inputs(self, claim: Claim) -> dict[str, bytes]:
        parts = self.r.hgetall(self._keys(claim.job_id)[1])
        if not parts:
            raise JobNotFound(f"job {claim.job_id} has no inputs any more: it was cancelled")
        return {k.decode(): v for k, v in parts.items()}

    @unavailable
    def renew(self, claim: Claim, progress: float) -> bool:
        consumer = claim.owner.rsplit("-", 1)[0]
        return bool(self._renew(keys=[self._job(claim.job_id), self.stream], args=[claim.owner, progress, consumer, GROUP]))

    @unavailable
    def finish(self, claim: Claim, mp4: bytes) -> bool:
        return self._finish(claim, "done", "", mp4)

    @unavailable
    def fail(self, claim: Claim, error: dict[str, str]) -> bool:
        return self._finish(claim, "error", json.dumps(error), b"")

    def _finish(self, claim: Claim, status: str, error: str, mp4: bytes) -> bool:
        state, inputs, video = self._keys(claim.job_id)
        args = [claim.owner, time.time(), status, self.ttl_s, error, mp4, GROUP]
        return bool(self._end(keys=[state, video, inputs, self.stream], args=args))

    @unavailable
    def cancel(self, job_id: str) -> Job | None:
        state, inputs, video = self._keys(job_id)
        done = self._cancel(keys=[state, self.queued, inputs, video], args=[job_id, time.time(), self.ttl_s, CANCELLED])
        if done == -1:
            raise JobNotFound(f"no job with id {job_id!r}")
        return self.get(job_id) if done == 1 else None

    @unavailable
    def video(self, job_id: str) -> bytes:
        data = self.r.get(self._keys(job_id)[2])
        if data is None:
            job = self.get(job_id)
            raise JobNotDone(f"job {job_id} is {job.status}: its video exists once it is done (poll GET /api/jobs/{job_id})")
        return data

    @unavailable
    def waiting(self) -> int:
        return self.r.zcard(self.queued)


def _job(job_id: str, h: dict[str, str]) -> Job:
    number = lambda key: float(h[key]) if h.get(key) else None
    return Job(
        id=job_id, status=h["status"], progress=float(h.get("progress") or 0), created_at=float(h["created_at"]),
        started_at=number("started_at"), completed_at=number("completed_at"),
        error=json.loads(h["error"]) if h.get("error") else None, attempts=int(h.get("attempts") or 0),
        webhook_url=h.get("webhook_url") or None, base_url=h.get("base_url", ""),
    )  # fmt: skip
