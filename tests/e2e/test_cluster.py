"""Several replicas on one Redis, as in production but on loopback: a real redis-server, two real gunicorn
servers with REDIS_URL (one worker each) and real nginx in front. An avatar registered through one
replica serves on the other; jobs spread over both; a replica SIGKILLed in the middle of a job loses
nothing and finishes nothing twice; Redis restarted under load gives typed 503s, then everything works
again without restarting a server.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import SMALL_BOX, astronaut, b64, decode_mp4, http, image_bytes, small_face, speech_s, submit_job, wait_job, wav

from harness.gunicorn import Gunicorn, children
from harness.nginx import Nginx
from harness.redis import RedisServer
from lipsync_server.registry import IDLE_FILE
from lipsync_stores.redis_store import RedisAvatarStore, connect

LEASE_S = 3
FPS = 25
JOBS = 20


class Cluster:
    def __init__(self, redis: RedisServer, replicas: list[Gunicorn], nginx: Nginx):
        self.redis, self.replicas, self.nginx = redis, replicas, nginx

    def outcomes(self) -> Counter[tuple[str, str]]:
        """(job id, outcome) of every job run logged by any replica (a killed one's log ends where it died)."""
        records = [r for s in self.replicas for r in s.log_records() if r.get("logger") == "wav2lip.jobs" and r.get("outcome")]
        return Counter((r["job_id"], r["outcome"]) for r in records)

    def ran_on(self, job_id: str) -> Gunicorn | None:
        """The replica whose worker logged this job as started last."""
        found = None
        for server in self.replicas:
            if any(r.get("job_id") == job_id and r["message"].endswith("started") for r in server.log_records()):
                found = server
        return found


@pytest.fixture(scope="module")
def cluster(ir_blazeface: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    with RedisServer(tmp / "redis") as redis:
        env = {"REDIS_URL": redis.url, "JOB_LEASE_S": str(LEASE_S), "INFERENCE_NUM_THREADS": "1"}  # 2 replicas share 2 cores
        replicas = [Gunicorn(ir_blazeface, tmp / f"replica{k}.log", env=env, ready_timeout_s=180) for k in range(2)]
        try:
            for replica in replicas:
                replica.start()
            with Nginx([r.url.removeprefix("http://") for r in replicas], tmp / "nginx") as nginx:
                yield Cluster(redis, replicas, nginx)
        finally:
            for replica in replicas:
                replica.stop()


def short_body(seconds: float = 1.0) -> dict:
    return {"image": b64(small_face()), "audio": b64(wav(speech_s(seconds))), "box": SMALL_BOX}


def sound_mp4(data: bytes, frames: int) -> None:
    """A playable MP4 of `frames` 192×192 frames (small_face) with its AAC sound."""
    out = decode_mp4(data)
    assert (len(out.frames), out.width, out.height, out.audio_codec) == (frames, 192, 192, "aac")


def test_an_avatar_registered_on_one_replica_serves_on_the_other(cluster: Cluster) -> None:
    one, other = cluster.replicas
    status, _, data = http("POST", f"{one.url}/api/avatars", {"image": b64(small_face()), "box": SMALL_BOX})
    assert status in (200, 201), data
    avatar_id = json.loads(data)["avatar_id"]
    status, _, data = http("POST", f"{other.url}/api/generate", {"avatar_id": avatar_id, "audio": b64(wav(speech_s(0.4)))})
    assert status == 200 and json.loads(data)["frames"] == 10, data[:300]
    sound_mp4(base64.b64decode(json.loads(data)["video"]), 10)
    status, _, data = http("GET", f"{other.url}/api/avatars/{avatar_id}")
    assert status == 200 and json.loads(data)["avatar_id"] == avatar_id


def test_a_name_cached_on_one_replica_animates_on_the_other(cluster: Cluster) -> None:
    """The drop-in routes (JSON with base64 fields; multipart is tested in process): the alias lives in Redis too."""
    one, other = cluster.replicas
    status, _, data = http("POST", f"{one.url}/cache-avatar", {"avatar": b64(small_face()), "avatar_id": "anna.v1", "box": SMALL_BOX})
    assert status == 200 and json.loads(data) == {"status": "cached", "avatar_id": "anna.v1"}, data[:300]
    status, headers, data = http("POST", f"{other.url}/v1/animation-with-cache", {"avatar_id": "anna.v1", "audio": b64(wav(speech_s(0.4)))})
    assert status == 200 and headers["Content-Type"] == "video/mp4", data[:300]
    sound_mp4(data, 10)
    avatar_id = json.loads(http("GET", f"{other.url}/api/avatars/anna.v1")[2])["avatar_id"]
    status, _, idle = http("GET", f"{one.url}/api/avatars/{avatar_id}/idle.mp4")  # made once, kept with the avatar in Redis
    assert status == 200 and http("GET", f"{other.url}/api/avatars/{avatar_id}/idle.mp4")[2] == idle
    assert RedisAvatarStore(connect(cluster.redis.url), 0, cluster.redis.data_dir / "frames").extra(avatar_id, IDLE_FILE) == idle


def test_twenty_jobs_through_nginx_spread_over_the_replicas_each_done_once(cluster: Cluster) -> None:
    ids = [submit_job(cluster.nginx.url, short_body(1.0))["id"] for _ in range(JOBS)]
    jobs = [wait_job(cluster.nginx.url, i, timeout=300) for i in ids]
    assert [j["status"] for j in jobs] == ["done"] * JOBS and all(j["attempts"] == 1 for j in jobs)
    assert all(j["result_url"].startswith(cluster.nginx.url) for j in jobs)  # links through the balancer, as the client came
    outcomes = cluster.outcomes()
    assert all(outcomes[(i, "done")] == 1 for i in ids)
    assert {cluster.ran_on(i).port for i in ids} == {r.port for r in cluster.replicas}  # both replicas ran jobs
    status, headers, mp4 = http("GET", jobs[0]["result_url"], headers={"Range": "bytes=0-1023"})
    assert status == 206 and len(mp4) == 1024 and headers["Content-Range"].startswith("bytes 0-1023/")


def test_redis_restarted_typed_503s_then_recovery_without_restarting_servers(cluster: Cluster) -> None:
    cluster.redis.stop()
    try:
        for server in cluster.replicas:
            status, headers, data = http("POST", f"{server.url}/api/jobs", short_body(0.2))
            assert status == 503 and json.loads(data)["error"]["code"] == "store_unavailable" and int(headers["Retry-After"]) >= 1
            status, _, data = http("GET", f"{server.url}/api/avatars")
            assert status == 503 and json.loads(data)["error"]["code"] == "store_unavailable"
            assert http("GET", f"{server.url}/livez")[0] == 200
    finally:
        cluster.redis.start()  # the same port and data
    up_at = time.monotonic()
    job = submit_job(cluster.nginx.url, short_body(0.4))
    assert wait_job(cluster.nginx.url, job["id"], timeout=60)["status"] == "done"  # the job threads came back by themselves
    print(f"redis restarted: a job submitted at once was done {time.monotonic() - up_at:.1f} s after Redis was back")


def test_a_replica_started_while_redis_is_down_serves_what_needs_no_redis(cluster: Cluster) -> None:
    """Clients connect on first use: the worker gets ready, only avatar and job routes answer 503 until Redis is back."""
    replica = cluster.replicas[1]
    replica.stop()
    cluster.redis.stop()
    try:
        replica.start()  # returns once every worker answers /health 200
        status, headers, data = http("GET", f"{replica.url}/api/avatars")
        assert status == 503 and json.loads(data)["error"]["code"] == "store_unavailable" and int(headers["Retry-After"]) >= 1
        status, _, data = http("POST", f"{replica.url}/api/generate", short_body(0.4))
        assert status == 200 and json.loads(data)["frames"] == 10, data[:300]
    finally:
        cluster.redis.start()
    assert http("GET", f"{replica.url}/api/avatars")[0] == 200


def test_a_replica_killed_mid_job_loses_nothing_and_finishes_nothing_twice(cluster: Cluster) -> None:
    long = {"image": b64(image_bytes(astronaut())), "audio": b64(wav(speech_s(12.0))), "box": [190, 60, 330, 230]}
    ids = [submit_job(cluster.nginx.url, long)["id"] for _ in range(4)] + [
        submit_job(cluster.nginx.url, short_body())["id"] for _ in range(4)
    ]
    victim, victim_job = None, None
    deadline = time.monotonic() + 120
    while victim_job is None:  # a job well under way on some replica
        assert time.monotonic() < deadline
        for i in ids[:4]:
            job = json.loads(http("GET", f"{cluster.nginx.url}/api/jobs/{i}")[2])
            if job["status"] == "running" and job["progress"] >= 0.2:
                victim_job, victim = i, cluster.ran_on(i)
                break
        time.sleep(0.05)
    for pid in [*children(victim.pid), victim.pid]:  # the whole replica, master and worker, as a machine dies
        os.kill(pid, signal.SIGKILL)
    victim.proc.wait()
    killed_at = time.monotonic()
    jobs = {i: wait_job(cluster.nginx.url, i, timeout=300) for i in ids}
    recovered_s = time.monotonic() - killed_at
    outcomes = cluster.outcomes()
    lost = [i for i, j in jobs.items() if j["status"] != "done"]
    twice = [i for i in ids if outcomes[(i, "done")] > 1]
    assert not lost and not twice, (lost, twice, outcomes)
    assert jobs[victim_job]["attempts"] == 2
    for i in ids:
        assert len(decode_mp4(http("GET", jobs[i]["result_url"])[2]).frames) in (FPS, 12 * FPS)
    print(f"replica killed mid-job: {len(ids)} jobs submitted, {len(ids) - len(lost)} done, lost {len(lost)}, done twice {len(twice)}; "
          f"all done {recovered_s:.1f} s after the kill (lease {LEASE_S} s)")  # fmt: skip
    victim.start()  # for whatever runs after
