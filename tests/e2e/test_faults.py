"""Issue 5, faults through the real gunicorn server: overload, deadlines, killed workers, memory,
temporary files, metrics and logs."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import (
    b64,
    encode_audio,
    good_body,
    small_face,
    speech_s,
    video_without_audio,
    wav,
)

from harness.gunicorn import Gunicorn, memory_mb

MAX_AUDIO_S = 3.0  # the test app's MAX_AUDIO_SECONDS: "audio too long" needs only 4 s of audio

# ---------------------------------------------------------------- the real gunicorn server


def owner(server_port: int, client_port: int, pids: set[int], timeout: float = 3.0) -> int:
    """The worker that accepted our TCP connection: /proc/net/tcp gives its inode, /proc/<pid>/fd the holder."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        inodes = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            if int(f[1].split(":")[1], 16) == server_port and int(f[2].split(":")[1], 16) == client_port and f[9] != "0":
                inodes.add(f"socket:[{f[9]}]")
        for pid in pids:
            fds = Path(f"/proc/{pid}/fd")
            for fd in fds.iterdir() if fds.exists() else ():
                try:
                    if os.readlink(fd) in inodes:
                        return pid
                except OSError:  # the fd closed while we looked
                    continue
        time.sleep(0.02)
    raise TimeoutError(f"no worker of {pids} holds the connection from port {client_port}")


def connection_to(server: Gunicorn, pid: int, timeout: float = 30.0) -> http.client.HTTPConnection:
    """A keep-alive connection accepted by worker `pid` (connect until that worker accepts one, ≤ 200 tries).

    The kernel often hands several connections in a row to the same idle worker, so the tries are
    spread out a little in time."""
    spare = []
    try:
        for i in range(200):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
            conn.connect()
            if owner(server.port, conn.sock.getsockname()[1], server.workers()) == pid:
                return conn
            spare.append(conn)
            time.sleep(0.005 * (i % 7))
        raise AssertionError(f"worker {pid} accepted none of 200 connections")
    finally:
        for conn in spare:
            conn.close()


def call(conn: http.client.HTTPConnection, body: dict | bytes, path: str = "/api/generate", **headers: str) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **headers})
    resp = conn.getresponse()
    return resp.status, dict(resp.headers), json.loads(resp.read())


def post(server: Gunicorn, body: dict, timeout: float = 60.0) -> tuple[int, dict, dict, float]:
    """One request on a fresh connection: status, headers, JSON, seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    t0 = time.monotonic()
    try:
        status, headers, body_out = call(conn, body)
    finally:
        conn.close()
    return status, headers, body_out, time.monotonic() - t0


@pytest.fixture(scope="module")
def pool(ir_blazeface: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """2 workers × 1 request, no queue, 3 s deadline, batch 1 (cheap one-frame requests), private TMPDIR."""
    env = {"WEB_CONCURRENCY": "2", "MAX_CONCURRENT": "1", "MAX_QUEUE": "0", "BATCH_SIZE": "1", "REQUEST_TIMEOUT_S": "3",
           "TMPDIR": str(tmp_path_factory.mktemp("pool_tmp"))}  # fmt: skip
    with Gunicorn(ir_blazeface, tmp_path_factory.mktemp("pool_logs") / "gunicorn.log", env=env, ready_timeout_s=120) as s:
        yield s


def test_body_over_limit_is_413_before_the_body_is_read(pool: Gunicorn) -> None:
    with socket.create_connection(("127.0.0.1", pool.port), timeout=10) as sock:
        head = f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {10**10}\r\n\r\n"
        sock.sendall(head.encode() + b'{"image": "')
        t0 = time.monotonic()
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)  # the socket timeout bounds this
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"\r\nX-Request-ID: " in reply.split(b"\r\n\r\n", 1)[0]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "payload_too_large"
    assert time.monotonic() - t0 < 5


def test_overload_is_503_with_retry_after_at_once(pool: Gunicorn) -> None:
    body = good_body(audio=b64(wav(speech_s(1.2))), fps=25)  # ~30 frames: ~1.5 s of work per request
    with ThreadPoolExecutor(6) as ex:
        results = list(ex.map(lambda _: post(pool, body), range(6)))
    busy = [r for r in results if r[0] == 503]
    print("statuses", sorted(r[0] for r in results), "503 latencies", [round(r[3], 3) for r in busy])
    assert len(busy) >= 2  # 2 workers × 1 slot, no queue: at least 4 of 6 simultaneous requests cannot run
    assert all(r[0] in (200, 503) for r in results)
    for _status, headers, out, seconds in busy:
        assert int(headers["Retry-After"]) >= 1 and out["error"]["code"] == "busy"
        assert seconds < 1.0, "503 must be immediate, not after waiting"
    assert post(pool, good_body())[0] == 200


def test_a_stalled_upload_does_not_hold_the_compute_slot(server: Gunicorn) -> None:
    """On the default single worker (one compute slot), a client that sends its headers and part of
    the body, then stalls, must not block the others: the body is read before a slot is taken."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("POST", "/api/generate")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", "100000")
        conn.endheaders(b'{"image": "')
        time.sleep(0.3)  # a worker thread is now blocked reading a body that never comes
        assert [post(server, good_body(), timeout=20)[0] for _ in range(3)] == [200] * 3
    finally:
        conn.close()


def test_deadline_is_504_and_the_worker_keeps_serving(pool: Gunicorn) -> None:
    before = pool.workers()
    status, _, out, seconds = post(pool, good_body(audio=b64(wav(speech_s(60))), fps=25))  # 1500 frames ≫ 3 s
    print(f"504 after {seconds:.2f} s")
    assert status == 504 and out["error"]["code"] == "deadline_exceeded", out
    assert seconds < 3 + 5
    assert [post(pool, good_body())[0] for _ in range(4)] == [200] * 4
    assert pool.workers() == before  # no worker died or was recycled


def test_metrics_sum_both_workers(pool: Gunicorn) -> None:
    def count_400() -> float:
        with urllib.request.urlopen(f"{pool.url}/metrics", timeout=10) as r:
            match = re.search(r'^lipsync_requests_total\{status="400"\} (\S+)$', r.read().decode(), re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    before = count_400()
    pids = sorted(pool.workers())
    for pid, n in zip(pids, (3, 2), strict=True):
        conn = connection_to(pool, pid)
        try:
            assert [call(conn, {"fps": 25})[0] for _ in range(n)] == [400] * n
        finally:
            conn.close()
    assert count_400() - before == 5


def test_json_log_lines_carry_request_id_status_pid(pool: Gunicorn) -> None:
    rid = f"log-probe-{uuid.uuid4().hex}"
    conn = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=10)
    try:
        status, headers, _ = call(conn, {"image": "!!"}, **{"X-Request-ID": rid})
    finally:
        conn.close()
    assert status == 400 and headers["X-Request-ID"] == rid
    t0 = time.monotonic()
    while not (records := [r for r in pool.log_records() if r.get("request_id") == rid]) and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    assert len(records) == 1, records
    assert records[0]["status"] == 400 and records[0]["pid"] in pool.workers() and records[0]["path"] == "/api/generate"


def test_rss_growth_over_200_requests(pool: Gunicorn) -> None:
    pid = min(pool.workers())
    conn = connection_to(pool, pid)  # keep-alive: every request goes to this worker
    body = good_body(audio=b64(wav(speech_s(0.5))), fps=2)  # 0.5 s of audio, one frame
    try:
        for _ in range(20):  # warm-up: allocator pools and caches reach their steady size
            assert call(conn, body)[0] == 200
        before = memory_mb(pid)["rss_mb"]
        t0 = time.monotonic()
        for _ in range(200):
            assert call(conn, body)[0] == 200
        after = memory_mb(pid)["rss_mb"]
    finally:
        conn.close()
    print(
        f"worker {pid} RSS {before:.1f} MB → {after:.1f} MB (+{after - before:.1f} MB) over 200 requests in {time.monotonic() - t0:.1f} s"
    )
    assert after - before <= 50


def listing(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if not p.name.startswith("wav2lip-metrics-")}


def test_no_temporary_files_are_left_behind(pool: Gunicorn) -> None:
    shm = Path("/dev/shm")
    tmpdir = Path(pool.env["TMPDIR"])
    before_tmp, before_shm = listing(tmpdir), listing(shm)
    bodies = [
        good_body(),
        good_body(audio=b64(encode_audio(speech_s(0.5), 16000, "webm", "libopus"))),
        good_body(audio=b64(encode_audio(speech_s(0.5), 16000, "ipod", "aac"))),
        good_body(audio=b64(video_without_audio())),
        good_body(image=b64(small_face()[:500])),
        good_body(audio=b64(wav(speech_s(60)))),  # 504: the deadline abandons a half-written MP4
    ]
    statuses = [post(pool, b)[0] for b in bodies]
    assert statuses == [200, 200, 200, 415, 415, 504]
    assert listing(tmpdir) == before_tmp, listing(tmpdir) - before_tmp
    assert not listing(shm) - before_shm, listing(shm) - before_shm
    # the listing is the server's own tempfile.gettempdir(): gunicorn.conf.py put its metrics directory there
    assert any(p.name.startswith("wav2lip-metrics-") for p in tmpdir.iterdir())


def test_sigkill_mid_request_fails_cleanly_and_the_worker_is_replaced(pool: Gunicorn) -> None:
    victim, survivor = sorted(pool.workers())
    doomed, spared = connection_to(pool, victim, timeout=10), connection_to(pool, survivor, timeout=30)
    long_body = json.dumps(good_body(audio=b64(wav(speech_s(30))), fps=25)).encode()  # would take > 3 s
    doomed.request("POST", "/api/generate", body=long_body, headers={"Content-Type": "application/json"})
    with ThreadPoolExecutor(1) as ex:
        spared_result = ex.submit(call, spared, good_body(audio=b64(wav(speech_s(0.5))), fps=25))  # ~0.7 s of work
        time.sleep(0.5)  # both requests are computing now
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            doomed.getresponse().read()  # reset or closed by the kernel, not a hang (timeout 10 s)
        assert time.monotonic() - killed_at < 5
        assert spared_result.result(timeout=30)[0] == 200  # the other worker is unaffected
    doomed.close()
    spared.close()
    new = pool.wait_ready(2, timeout=15) - {survivor}
    assert len(new) == 1 and victim not in new
    conn = connection_to(pool, new.pop(), timeout=10)
    try:
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    recovery = time.monotonic() - killed_at
    print(f"worker {victim} killed; replacement serving /health 200 after {recovery:.1f} s")
    assert recovery < 15
    assert post(pool, good_body())[0] == 200
