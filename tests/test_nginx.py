"""nginx in front of the server (deploy/nginx/lipsync.conf, as compose runs it): uploads buffered before a
replica sees them, its own errors as the API's JSON, streamed replies flowing through, the load spread."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import pytest
from helpers import SMALL_BOX, b64, good_body, http, small_face, speech_s, wav

from harness.gunicorn import Gunicorn, free_port
from harness.nginx import Nginx

STALLED = 7  # uploads trickling at once: more than the server's gunicorn threads


@pytest.fixture(scope="module")
def proxied(server: Gunicorn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    with Nginx([server.url.removeprefix("http://")], tmp_path_factory.mktemp("nginx")) as nginx:
        yield nginx


def test_a_request_through_nginx(proxied: Nginx) -> None:
    status, headers, data = http("POST", f"{proxied.url}/api/generate", good_body(), headers={"X-Request-ID": "via-nginx-1"})
    assert status == 200 and json.loads(data)["frames"] == 1 and headers["X-Request-ID"] == "via-nginx-1"


def test_nginx_refuses_a_body_over_the_limit_with_the_api_json(proxied: Nginx) -> None:
    with socket.create_connection(("127.0.0.1", proxied.port), timeout=10) as s:
        s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 70000000\r\n\r\n")
        answer = s.recv(4096).decode()
    head, body = answer.split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 413") and "application/json" in head
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_stalled_uploads_never_reach_the_server(proxied: Nginx, server: Gunicorn) -> None:
    """More stalled uploads than gunicorn has threads (1 + 2 + 2): without nginx reading the bodies first they
    would hold every thread and the probes below would time out; with it, the server never sees them."""
    body = json.dumps(good_body()).encode()
    head = f"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    stalled = [socket.create_connection(("127.0.0.1", proxied.port), timeout=30) for _ in range(STALLED)]
    try:
        for s in stalled:
            s.sendall(head.encode() + body[:100])
        time.sleep(0.5)
        assert [http("GET", f"{proxied.url}/health", timeout=5)[0] for _ in range(STALLED)] == [200] * STALLED
        stalled[0].sendall(body[100:])  # now complete: passed on and answered
        answer = stalled[0].recv(65536).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 200"), answer[:300]
    finally:
        for s in stalled:
            s.close()


def test_streamed_replies_flow_through_nginx(proxied: Nginx) -> None:
    body = json.dumps({"image": b64(small_face()), "audio": b64(wav(speech_s(4.0))), "box": SMALL_BOX, "stream": True})
    conn = HTTPConnection("127.0.0.1", proxied.port, timeout=60)
    conn.request("POST", "/api/generate", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("video/mp4")
    first = resp.read1(65536)
    t_first = time.monotonic()
    rest = resp.read()
    t_end = time.monotonic()
    conn.close()
    assert first[4:8] == b"ftyp" and len(rest) > len(first)
    assert t_end - t_first > 0.1  # the first bytes came while the rest was still being made


def test_no_replica_is_json_503_with_retry_after(tmp_path: Path) -> None:
    with Nginx([f"127.0.0.1:{free_port()}"], tmp_path / "nginx") as nginx:  # nobody listens there
        status, headers, data = http("POST", f"{nginx.url}/api/generate", good_body())
    assert status == 503 and headers["Content-Type"] == "application/json" and headers["Retry-After"] == "5"
    assert json.loads(data)["error"]["code"] == "upstream_unavailable"


def test_requests_spread_over_two_replicas(server: Gunicorn, ir_blazeface: Path, tmp_path: Path) -> None:
    with (
        Gunicorn(ir_blazeface, tmp_path / "second.log", env={"INFERENCE_NUM_THREADS": "1"}, ready_timeout_s=120) as second,
        Nginx([server.url.removeprefix("http://"), second.url.removeprefix("http://")], tmp_path / "nginx") as nginx,
    ):
        pids = {json.loads(http("GET", f"{nginx.url}/livez")[2])["pid"] for _ in range(10)}
    assert len(pids) == 2
