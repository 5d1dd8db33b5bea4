"""The two backends behind one interface, each against a real store: avatars and jobs on this machine
(a directory, SQLite) and in Redis (a real redis-server). The same tests run on both."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from harness.gunicorn import free_port
from harness.redis import RedisServer
from lipsync_stores.backend import open_avatars
from lipsync_stores.jobs import Claim, JobStore, new_job
from lipsync_stores.jobs_redis import RedisJobs
from lipsync_stores.jobs_sqlite import SqliteJobs
from lipsync_stores.redis_store import RedisAvatarStore, connect
from lipsync_stores.store import Avatars, AvatarStore
from wav2lip_core.config import Settings
from wav2lip_core.errors import AvatarNotFound, BadRequest, Busy, JobNotDone, JobNotFound, StoreUnavailable

LEASE_S = 1.0
BACKENDS = ("local", "redis")


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"  # each test its own keys on the session's Redis


@pytest.fixture(params=BACKENDS)
def avatars(request: pytest.FixtureRequest, tmp_path: Path) -> Avatars:
    if request.param == "local":
        return AvatarStore(tmp_path / "avatars", max_bytes=3000)
    return RedisAvatarStore(connect(request.getfixturevalue("redis_server").url), 3000, tmp_path / "frames", prefix=prefix())


@pytest.fixture(params=BACKENDS)
def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "local":
        return SqliteJobs(tmp_path / "jobs", LEASE_S, ttl_s=60)
    return RedisJobs(connect(request.getfixturevalue("redis_server").url), LEASE_S, ttl_s=60, prefix=prefix())


def registered_at_once(avatars: Avatars, idents: list[str], media: bytes) -> list[bool]:
    """Put each of `idents` from its own thread, all released together; what the puts returned."""
    start, created = threading.Barrier(len(idents)), []

    def register(ident: str) -> None:
        start.wait()
        created.append(avatars.put(ident, media, {"avatar_id": ident}))

    threads = [threading.Thread(target=register, args=(ident,)) for ident in idents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return created


def test_avatar_put_is_atomic_and_the_least_recently_used_is_evicted(avatars: Avatars, caplog: pytest.LogCaptureFixture) -> None:
    results = registered_at_once(avatars, ["abc1"] * 8, b"x" * 1000)
    assert sorted(results) == [False] * 7 + [True] and avatars.media("abc1") == b"x" * 1000
    avatars.put("abc2", b"y" * 1000, {"avatar_id": "abc2"})
    time.sleep(0.01)
    avatars.get("abc1")  # used: abc2 is now the least recently used
    with caplog.at_level(logging.INFO):
        avatars.put("abc3", b"z" * 1000, {"avatar_id": "abc3"})
    assert [m["avatar_id"] for m in avatars.list()] == ["abc3", "abc1"]  # most recently used first
    assert [r.getMessage().split(": ")[-1] for r in caplog.records] == ["evicting abc2 (least recently used)"]
    with pytest.raises(AvatarNotFound):
        avatars.get("abc2")


def test_avatar_aliases_extras_and_delete(avatars: Avatars) -> None:
    avatars.put("abc1", b"x", {"avatar_id": "abc1"})
    avatars.put("abc2", b"y", {"avatar_id": "abc2"})
    avatars.alias("seed.avatar_1", "abc1")
    assert avatars.get("seed.avatar_1")["avatar_id"] == "abc1" and avatars.resolve("seed.avatar_1") == "abc1"
    avatars.alias("seed.avatar_1", "abc2")  # repointed
    assert avatars.get("seed.avatar_1")["avatar_id"] == "abc2"
    for name in ("abc2", "meta.json", ".hidden", "A-b_c.d"):  # even names that look like ids or store files
        avatars.alias(name, "abc1")
        assert avatars.resolve(name) == ("abc2" if name == "abc2" else "abc1")  # a registered id wins over an alias
    assert avatars.get("meta.json")["avatar_id"] == "abc1" and len(avatars.list()) == 2  # an alias is never taken for an avatar
    for bad in (".", "..", "a/b", "", "x" * 129):
        with pytest.raises(BadRequest):
            avatars.alias(bad, "abc1")
    with pytest.raises(AvatarNotFound):
        avatars.alias("x", "abc9")
    assert avatars.resolve("unknown") == "unknown" and avatars.resolve("../abc1") == "../abc1"
    assert avatars.extra("abc1", "idle.mp4") is None
    avatars.put_extra("abc1", "idle.mp4", b"loop")
    assert avatars.extra("abc1", "idle.mp4") == b"loop"
    avatars.delete("abc1")
    for call in (lambda: avatars.get("abc1"), lambda: avatars.media("abc1"), lambda: avatars.delete("abc1"), lambda: avatars.get("../x")):
        with pytest.raises(AvatarNotFound):
            call()


def test_avatar_extras_count_against_the_budget(avatars: Avatars) -> None:
    avatars.put("abc1", b"x" * 1000, {"avatar_id": "abc1"})
    avatars.put_extra("abc1", "idle.mp4", b"i" * 1500)
    avatars.put_extra("abc1", "idle.mp4", b"i" * 10)  # replaced: only the new one counts
    avatars.put("abc2", b"y" * 1000, {"avatar_id": "abc2"})
    assert len(avatars.list()) == 2
    avatars.put_extra("abc2", "idle.mp4", b"i" * 1500)  # over the budget now, but only a registration evicts
    avatars.put("abc3", b"z" * 10, {"avatar_id": "abc3"})
    assert [m["avatar_id"] for m in avatars.list()] == ["abc3", "abc2"]
    with pytest.raises(AvatarNotFound):
        avatars.put_extra("abc1", "idle.mp4", b"i")  # evicted: nothing is written for it


def test_concurrent_registrations_over_the_budget_leave_exactly_one(avatars: Avatars) -> None:
    """Any two avatars are over the budget: however registrations interleave, they never evict each other down to none."""
    for round_ in range(20):  # a race: many rounds make a lost one likely to show
        created = registered_at_once(avatars, [f"r{round_}k{k}" for k in range(8)], b"x" * 2000)
        left = [m["avatar_id"] for m in avatars.list()]
        assert created == [True] * 8 and len(left) == 1, (round_, left)


def submitted(jobs: JobStore, limit: int = 10) -> str:
    job = new_job(None, "http://x", time.time())
    jobs.submit(job, {"request": b"{}", "audio": b"\x00" * 10}, limit)
    return job.id


def test_a_job_is_claimed_once_and_its_result_kept_once(jobs: JobStore) -> None:
    job_id = submitted(jobs)
    first = jobs.claim("w1-a", 0.5)
    assert first == Claim(job_id, "w1-a") and jobs.claim("w2-b", 0.3) is None  # nobody else gets it
    assert jobs.inputs(first)["audio"] == b"\x00" * 10
    assert jobs.renew(first, 0.5) and jobs.get(job_id).progress == 0.5 and jobs.get(job_id).status == "running"
    time.sleep(LEASE_S * 1.5)  # first stopped beating: its lease runs out
    second = jobs.claim("w2-c", 2.0)
    assert second == Claim(job_id, "w2-c") and jobs.get(job_id).attempts == 2
    assert not jobs.renew(first, 0.6)  # the stale claim learns it lost the job ...
    assert not jobs.finish(first, b"stale")  # ... and cannot keep a result
    assert jobs.finish(second, b"mp4!") and not jobs.finish(second, b"again")
    done = jobs.get(job_id)
    assert done.status == "done" and done.progress == 1 and done.completed_at is not None
    video = jobs.video(job_id)
    assert (video if isinstance(video, bytes) else video.read_bytes()) == b"mp4!"
    assert jobs.claim("w3-d", 0.3) is None  # a finished job is never handed out again


def test_fail_cancel_delete_and_the_queue_bound(jobs: JobStore) -> None:
    failing = submitted(jobs, limit=2)
    claim = jobs.claim("w1-a", 0.5)
    assert jobs.fail(claim, {"code": "no_face", "message": "no face"}) and jobs.get(failing).error == {
        "code": "no_face",
        "message": "no face",
    }
    with pytest.raises(JobNotDone):
        jobs.video(failing)
    queued = [submitted(jobs, limit=2) for _ in range(2)]
    with pytest.raises(Busy) as full:
        submitted(jobs, limit=2)
    assert full.value.code == "queue_full" and full.value.retry_after and jobs.waiting() == 2
    cancelled = jobs.cancel(queued[0])
    assert cancelled.status == "cancelled" and cancelled.error["code"] == "cancelled" and jobs.waiting() == 1
    running = jobs.claim("w1-b", 0.5)
    assert running.job_id == queued[1]  # the cancelled one is skipped
    assert jobs.cancel(queued[1]).status == "cancelled" and not jobs.renew(running, 0.1) and not jobs.finish(running, b"x")
    assert jobs.cancel(failing) is None  # a finished job: removed
    for gone in (failing, "0" * 32):
        with pytest.raises(JobNotFound):
            jobs.get(gone)


def test_redis_down_is_a_typed_503_and_up_again_without_a_new_client(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        store, jobs = RedisAvatarStore(connect(server.url), 10_000, tmp_path / "frames"), RedisJobs(connect(server.url), LEASE_S, 60)
        store.put("abc1", b"x", {"avatar_id": "abc1"})
        job_id = submitted(jobs)
        server.stop()
        for call in (lambda: store.get("abc1"), lambda: jobs.get(job_id), lambda: submitted(jobs), lambda: jobs.claim("w-a", 0.1)):
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable) as down:
                call()
            assert down.value.retry_after and time.monotonic() - t0 < 10 and isinstance(down.value.__cause__, redis.RedisError)
        server.start()  # the same port, the same append-only data
        assert store.get("abc1") == {"avatar_id": "abc1"} and jobs.get(job_id).status == "queued"
        assert jobs.claim("w-b", 1.0).job_id == job_id


def test_redis_killed_or_restarted_loses_no_avatar_and_the_same_client_carries_on(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        store = RedisAvatarStore(connect(server.url), 10_000, tmp_path / "frames")
        store.put("abc1", b"x", {"avatar_id": "abc1"})
        store.alias("me", "abc1")
        server.kill()  # appendfsync always: acknowledged is on disk
        with pytest.raises(StoreUnavailable) as down:
            store.put("abc2", b"y", {"avatar_id": "abc2"})
        assert down.value.retry_after and server.url in down.value.message
        server.start()
        assert store.get("me") == {"avatar_id": "abc1"} and store.media("abc1") == b"x"
        server.restart(down_s=0.2)  # every pooled connection is stale now: each is retried once on a new one
        assert store.put("abc2", b"y", {"avatar_id": "abc2"}) and [m["avatar_id"] for m in store.list()] == ["abc2", "abc1"]


def test_redis_stalled_is_a_typed_503_after_one_socket_timeout(tmp_path: Path) -> None:
    """A Redis that accepts connections but answers nothing: one timeout, not retried, then 503 (not a hung request)."""
    timeout_s = 0.5
    with RedisServer(tmp_path / "redis") as server:
        store = RedisAvatarStore(connect(server.url, timeout_s=timeout_s), 10_000, tmp_path / "frames")
        store.put("abc1", b"x", {"avatar_id": "abc1"})
        with server.stalled():
            for fresh in (False, True):  # a pooled connection, and a new client's handshake
                client = RedisAvatarStore(connect(server.url, timeout_s=timeout_s), 10_000, tmp_path / "frames") if fresh else store
                t0 = time.monotonic()
                with pytest.raises(StoreUnavailable) as down:
                    client.get("abc1")
                waited = time.monotonic() - t0
                assert isinstance(down.value.__cause__, redis.TimeoutError) and waited < 2 * timeout_s, (fresh, waited)
        assert store.get("abc1") == {"avatar_id": "abc1"}


def test_redis_is_reached_on_first_use_and_its_password_never_shown() -> None:
    """A worker starts while Redis is down (only what needs it fails, and says where it looked, without the password)."""
    port = free_port()
    store = open_avatars(replace(Settings(), redis_url=f"redis://:s3cret@127.0.0.1:{port}/0"))
    with pytest.raises(StoreUnavailable) as down:
        store.list()
    assert f"redis://127.0.0.1:{port}/0" in down.value.message and "s3cret" not in down.value.message


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_finished_job_and_its_video_expire_after_the_ttl(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if backend == "local":
        jobs: JobStore = SqliteJobs(tmp_path / "jobs", LEASE_S, ttl_s=1)
    else:
        jobs = RedisJobs(connect(request.getfixturevalue("redis_server").url), LEASE_S, ttl_s=1, prefix=prefix())
    job_id = submitted(jobs)
    assert jobs.finish(jobs.claim("w-a", 0.5), b"mp4")
    kept = jobs.video(job_id)
    time.sleep(2.1)
    with pytest.raises(JobNotFound):
        jobs.get(job_id)
    with pytest.raises(JobNotFound):
        jobs.video(job_id)
    if backend == "local":
        submitted(jobs)  # a submit sweeps what expired: the file goes too
        assert not kept.exists()
