"""Async jobs on one machine (the embedded store: SQLite + files): the real gunicorn with 2 workers,
a loopback server standing in for a webhook receiver and a file host, and a worker killed mid-job.
The same jobs over Redis and several replicas: tests/e2e/test_cluster.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import (
    SMALL_BOX,
    astronaut,
    b64,
    decode_mp4,
    http,
    idle_clip,
    image_bytes,
    loaded_app,
    make_settings,
    small_face,
    speech_s,
    submit_job,
    wait_job,
    wav,
)

from harness import ASSETS
from harness.gunicorn import Gunicorn

LEASE_S = 3  # JOB_LEASE_S here: a killed worker's job is taken over this long after its last heartbeat
LONG_S = 16.0  # seconds of speech in a job long enough to be caught running (400 frames at 512²)
FPS = 25


class Loopback:
    """A loopback HTTP server: GET serves `files`, POST bodies are recorded (a webhook receiver)."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.posts = files, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = outer.files.get(self.path)
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def do_POST(self) -> None:
                outer.posts.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass  # the test reads `posts`, not a log

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def loopback() -> Iterator[Loopback]:
    server = Loopback({"/face.png": small_face(), "/speech.wav": wav(speech_s(1.0))})
    yield server
    server.close()


@pytest.fixture(scope="module")
def machine(ir_blazeface: Path, loopback: Loopback, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """One machine, 2 workers sharing JOB_DIR; a short lease; webhooks and fetches allowed to the loopback server only."""
    tmp = tmp_path_factory.mktemp("jobs")
    env = {"WEB_CONCURRENCY": "2", "JOB_LEASE_S": str(LEASE_S), "WEBHOOK_HOSTS": loopback.host, "FETCH_HOSTS": loopback.host}
    with Gunicorn(ir_blazeface, tmp / "gunicorn.log", env=env, ready_timeout_s=180) as server:
        yield server


def long_body() -> dict:
    return {"image": b64(image_bytes(astronaut())), "audio": b64(wav(speech_s(LONG_S))), "box": [190, 60, 330, 230]}


def short_body(seconds: float = 1.0) -> dict:
    return {"image": b64(small_face()), "audio": b64(wav(speech_s(seconds))), "box": SMALL_BOX}


def job_events(server: Gunicorn, job_id: str) -> list[dict]:
    """The job workers' log lines about one job, oldest first."""
    return [r for r in server.log_records() if r.get("logger") == "wav2lip.jobs" and r.get("job_id") == job_id]


def wait_running(base: str, job_id: str, progress: float) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = json.loads(http("GET", f"{base}/api/jobs/{job_id}")[2])
        if job["status"] == "running" and job["progress"] >= progress:
            return job
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} never reached progress {progress}")


def test_a_job_is_queued_run_and_its_video_seekable(machine: Gunicorn) -> None:
    job = submit_job(machine.url, short_body(2.0))
    assert job["status"] == "queued" and job["progress"] == 0 and job["error"] is None and job["started_at"] is None
    assert job["status_url"] == f"{machine.url}/api/jobs/{job['id']}" and job["result_url"] == f"{job['status_url']}/video"
    done = wait_job(machine.url, job["id"])
    assert done["status"] == "done" and done["progress"] == 1 and done["attempts"] == 1, done
    assert done["created_at"] <= done["started_at"] <= done["completed_at"]
    assert done["seen"] == sorted(done["seen"])  # progress never goes back
    status, headers, mp4 = http("GET", done["result_url"])
    assert status == 200 and headers["Content-Type"] == "video/mp4" and int(headers["Content-Length"]) == len(mp4)
    assert mp4.find(b"moov") < mp4.find(b"mdat")  # +faststart: a <video> plays it before it has all of it
    assert len(decode_mp4(mp4).frames) == 2 * FPS
    status, headers, part = http("GET", done["result_url"], headers={"Range": "bytes=100-199"})
    assert status == 206 and part == mp4[100:200] and headers["Content-Range"] == f"bytes 100-199/{len(mp4)}"
    assert http("GET", done["result_url"], headers={"If-None-Match": headers["ETag"]})[0] == 304


def test_multipart_job_with_a_registered_avatar(machine: Gunicorn) -> None:
    status, _, data = http("POST", f"{machine.url}/api/avatars", {"image": b64(small_face()), "box": SMALL_BOX})
    assert status in (200, 201), data
    boundary = "jobboundary"
    parts = [(b'name="avatar_id"', json.loads(data)["avatar_id"].encode()), (b'name="audio"; filename="a.wav"', wav(speech_s(0.5)))]
    body = b"".join(b"--%s\r\nContent-Disposition: form-data; %s\r\n\r\n%s\r\n" % (boundary.encode(), d, v) for d, v in parts)
    body += f"--{boundary}--\r\n".encode()
    status, _, data = http("POST", f"{machine.url}/api/jobs", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 202, data
    assert wait_job(machine.url, json.loads(data)["id"])["status"] == "done"


def test_a_failing_job_ends_in_its_typed_error_and_a_bad_request_is_never_queued(machine: Gunicorn) -> None:
    no_face = submit_job(machine.url, {"image": b64((ASSETS / "cat.jpg").read_bytes()), "audio": b64(wav(speech_s(0.5)))})
    ended = wait_job(machine.url, no_face["id"])
    assert ended["status"] == "error" and ended["error"]["code"] == "no_face" and ended["error"]["message"], ended
    assert http("GET", ended["result_url"])[0] == 409
    status, _, data = http("POST", f"{machine.url}/api/jobs", {"image": b64(small_face())})
    assert status == 400 and json.loads(data)["error"]["code"] == "missing_field"
    status, _, data = http("POST", f"{machine.url}/api/jobs", short_body() | {"avatar_id": "nope", "image": None})
    assert status == 404 and json.loads(data)["error"]["code"] == "avatar_not_found"
    assert http("GET", f"{machine.url}/api/jobs/0123456789abcdef0123456789abcdef")[0] == 404
    assert http("GET", f"{machine.url}/api/jobs/..%2Fjobs.sqlite3")[0] == 404


def test_delete_stops_a_running_job_and_removes_it(machine: Gunicorn) -> None:
    job = submit_job(machine.url, long_body())
    running = wait_running(machine.url, job["id"], 0.1)
    status, _, data = http("DELETE", job["status_url"])
    cancelled = json.loads(data)
    assert status == 200 and cancelled["status"] == "cancelled" and cancelled["error"]["code"] == "cancelled"
    deadline = time.monotonic() + 10
    while not any(e.get("outcome") == "stopped" for e in job_events(machine, job["id"])):
        assert time.monotonic() < deadline, job_events(machine, job["id"])
        time.sleep(0.05)
    after = json.loads(http("GET", job["status_url"])[2])
    assert after["status"] == "cancelled" and running["progress"] <= after["progress"] < 1
    assert http("GET", job["result_url"])[0] == 409
    assert http("DELETE", job["status_url"])[0] == 204  # a finished job: removed
    assert http("GET", job["status_url"])[0] == 404


def test_the_webhook_gets_the_final_status_once_and_only_allowed_hosts(machine: Gunicorn, loopback: Loopback) -> None:
    hook = f"http://{loopback.host}/hook"
    job = submit_job(machine.url, short_body() | {"webhook_url": hook})
    wait_job(machine.url, job["id"])
    deadline = time.monotonic() + 10
    while not [p for p in loopback.posts if p[1]["id"] == job["id"]]:
        assert time.monotonic() < deadline, loopback.posts
        time.sleep(0.05)
    time.sleep(0.5)
    posted = [p for p in loopback.posts if p[1]["id"] == job["id"]]
    assert len(posted) == 1 and posted[0][0] == "/hook" and posted[0][1]["status"] == "done" and posted[0][1]["result_url"]
    for url in ("http://10.0.0.1/hook", "http://127.0.0.1:1/hook", "file:///etc/passwd", "ftp://127.0.0.1/"):
        status, _, data = http("POST", f"{machine.url}/api/jobs", short_body() | {"webhook_url": url})
        assert status == 400 and json.loads(data)["error"]["code"] in ("url_not_allowed", "invalid_field"), (url, data)


def test_a_worker_killed_mid_job_the_job_is_done_once(machine: Gunicorn) -> None:
    job = submit_job(machine.url, long_body())
    wait_running(machine.url, job["id"], 0.2)
    (started,) = [e for e in job_events(machine, job["id"]) if e["message"].endswith("started")]
    killed_at = time.monotonic()
    os.kill(started["pid"], signal.SIGKILL)
    done = wait_job(machine.url, job["id"], timeout=180)
    recovered_s = time.monotonic() - killed_at
    assert done["status"] == "done" and done["attempts"] == 2, done
    outcomes = [e["outcome"] for e in job_events(machine, job["id"]) if "outcome" in e]
    assert outcomes == ["done"], outcomes  # the killed worker never reported; the second run did, once
    assert len(decode_mp4(http("GET", done["result_url"])[2]).frames) == LONG_S * FPS
    print(f"worker killed mid-job: done again {recovered_s:.1f} s later (lease {LEASE_S} s)")
    machine.wait_ready(2)  # gunicorn replaced the worker


def test_jobs_spread_over_both_workers_each_done_once(machine: Gunicorn) -> None:
    ids = [submit_job(machine.url, short_body(1.0))["id"] for _ in range(8)]
    jobs = [wait_job(machine.url, i) for i in ids]
    assert all(j["status"] == "done" and j["attempts"] == 1 for j in jobs), jobs
    events = [e for i in ids for e in job_events(machine, i) if e.get("outcome")]
    assert sorted(e["job_id"] for e in events) == sorted(ids)  # one outcome per job
    assert len({e["pid"] for e in events}) == 2  # both workers took jobs


def test_d_id_style_client_with_form_data(machine: Gunicorn, node: str, tmp_path: Path) -> None:
    (tmp_path / "face.png").write_bytes(small_face())
    (tmp_path / "speech.wav").write_bytes(wav(speech_s(1.0)))
    script = Path(__file__).parents[1] / "node" / "did_client.mjs"
    args = [node, str(script), machine.url, str(tmp_path / "face.png"), str(tmp_path / "speech.wav"), str(tmp_path / "talk.mp4")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["created"]["status"] == "created" and result["created"]["result_url"] is None, result
    assert result["statuses"][-1] == "done" and set(result["statuses"]) <= {"created", "started", "done"}, result
    assert result["talk"]["result_url"].startswith(machine.url) and result["talk"]["error"] is None
    assert len(decode_mp4((tmp_path / "talk.mp4").read_bytes()).frames) == FPS


def test_d_id_urls_are_fetched_only_from_allowed_hosts(machine: Gunicorn, loopback: Loopback) -> None:
    allowed = {"source_url": f"http://{loopback.host}/face.png", "audio_url": f"http://{loopback.host}/speech.wav", "box": SMALL_BOX}
    status, _, data = http("POST", f"{machine.url}/generate-video", allowed)
    assert status == 201, data
    talk = json.loads(data)
    deadline = time.monotonic() + 60
    while talk["status"] not in ("done", "error"):
        assert time.monotonic() < deadline, talk
        time.sleep(0.1)
        talk = json.loads(http("GET", f"{machine.url}/talk-status/{talk['id']}")[2])
    assert talk["status"] == "done" and set(talk) == {"id", "status", "result_url", "progress", "created_at", "started_at",
                                                      "completed_at", "error"}  # fmt: skip
    for field, url in (("source_url", "http://169.254.169.254/latest/meta-data"), ("audio_url", "http://localhost:1/x.wav")):
        status, _, data = http("POST", f"{machine.url}/generate-video", allowed | {field: url})
        assert status == 400 and json.loads(data)["error"]["code"] == "url_not_allowed", data
    status, _, data = http("POST", f"{machine.url}/generate-video", allowed | {"audio_url": f"http://{loopback.host}/missing.wav"})
    assert status == 400 and json.loads(data)["error"]["code"] == "fetch_failed", data


def test_node_client_async_submits_polls_with_progress_and_downloads(machine: Gunicorn, node: str, tmp_path: Path) -> None:
    (tmp_path / "face.png").write_bytes(image_bytes(astronaut()))
    (tmp_path / "speech.wav").write_bytes(wav(speech_s(4.0)))
    cli = Path(__file__).parents[2] / "clients" / "node" / "lipsync.mjs"
    args = ["--url", machine.url, "--image", str(tmp_path / "face.png"), "--audio", str(tmp_path / "speech.wav"), "--box", "190,60,330,230"]
    proc = subprocess.run(
        [node, str(cli), *args, "--out", str(tmp_path / "out.mp4"), "--async"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "queued" in lines[0] and lines[-1].endswith("done 100%"), lines
    percents = [int(line.rsplit(" ", 1)[1].rstrip("%")) for line in lines[1:]]
    assert percents == sorted(percents) and len(percents) >= 2, lines
    assert proc.stdout.startswith(f"wrote {tmp_path / 'out.mp4'}: job ") and "attempts 1" in proc.stdout
    assert len(decode_mp4((tmp_path / "out.mp4").read_bytes()).frames) == 4 * FPS


# ---------------------------------------------------------------- in process: one worker, one job thread, an API key

KEY = {"Authorization": "Bearer k3y"}


@pytest.fixture(scope="module")
def client(ir_blazeface: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    tmp = tmp_path_factory.mktemp("jobs_in_process")
    settings = make_settings(ir_blazeface, job_dir=tmp / "jobs", avatar_dir=tmp / "avatars", api_key="k3y", job_queue_max=2, job_workers=1)
    app = loaded_app(settings)
    yield app.test_client()
    app.extensions["models"].runner.close()


def running_long_job(client) -> str:
    job_id = client.post("/api/jobs", json=long_body(), headers=KEY).get_json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/api/jobs/{job_id}", headers=KEY).get_json()["progress"] < 0.1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return job_id


def test_a_request_goes_before_a_running_job_and_the_queue_is_bounded(client) -> None:
    """One slot: a request arriving while a job computes is served between two of the job's batches; with the
    job thread busy, JOB_QUEUE_MAX (2) jobs wait and the next is refused."""
    job_id = running_long_job(client)
    t0 = time.monotonic()
    answer = client.post("/api/generate", json=short_body(1.0), headers=KEY)
    took = time.monotonic() - t0
    during = client.get(f"/api/jobs/{job_id}", headers=KEY).get_json()
    assert answer.status_code == 200 and during["status"] == "running" and during["progress"] < 1, during
    print(f"a 1 s request while a job runs: {took * 1000:.0f} ms")
    waiting = [client.post("/api/jobs", json=short_body(0.1), headers=KEY) for _ in range(2)]
    assert [w.status_code for w in waiting] == [202, 202]
    full = client.post("/api/jobs", json=short_body(0.1), headers=KEY)
    assert full.status_code == 503 and full.get_json()["error"]["code"] == "queue_full" and int(full.headers["Retry-After"]) >= 1
    for job in (job_id, *(w.get_json()["id"] for w in waiting)):
        assert client.delete(f"/api/jobs/{job}", headers=KEY).status_code == 200


def test_with_an_api_key_only_the_video_url_is_open(client) -> None:
    """The result_url is a capability (a random 128-bit id), so a <video src> plays it; submitting and polling need the key."""
    assert client.post("/api/jobs", json=short_body(0.2)).status_code == 401
    job = client.post("/api/jobs", json=short_body(0.2), headers=KEY).get_json()
    assert client.get(f"/api/jobs/{job['id']}").status_code == 401
    deadline = time.monotonic() + 60
    while client.get(f"/api/jobs/{job['id']}", headers=KEY).get_json()["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    video = client.get(f"/api/jobs/{job['id']}/video")
    assert video.status_code == 200 and video.mimetype == "video/mp4"
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 401


def test_a_dubbing_job_runs_a_video_straight_through(machine: Gunicorn) -> None:
    clip, _ = idle_clip(160, 120, frames=50)  # 2 s at 25 fps, played once (loop none), the speech replacing its sound
    job = submit_job(machine.url, {"video": b64(clip), "audio": b64(wav(speech_s(2.0))), "loop": "none"})
    done = wait_job(machine.url, job["id"])
    assert done["status"] == "done", done
    decoded = decode_mp4(http("GET", done["result_url"])[2])
    assert (decoded.width, decoded.height, len(decoded.frames)) == (160, 120, 2 * FPS)
    status, _, data = http("GET", f"{machine.url}/talk-status/{'f' * 32}")
    assert status == 404 and json.loads(data)["error"]["code"] == "job_not_found"


def test_a_relative_job_dir_serves_its_videos(ir_blazeface: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make serve`'s defaults: JOB_DIR `jobs`, relative to the folder the server runs in (not to the app's package)."""
    monkeypatch.chdir(tmp_path)
    app = loaded_app(make_settings(ir_blazeface, job_dir=Path("jobs"), avatar_dir=Path("avatars"), job_workers=1))
    try:
        client = app.test_client()
        job = client.post("/api/jobs", json=short_body(0.2)).get_json()
        deadline = time.monotonic() + 60
        while client.get(f"/api/jobs/{job['id']}").get_json()["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        video = client.get(f"/api/jobs/{job['id']}/video")
        assert video.status_code == 200 and video.data[4:8] == b"ftyp" and (tmp_path / "jobs" / "results").is_dir()
    finally:
        app.extensions["models"].runner.close()
