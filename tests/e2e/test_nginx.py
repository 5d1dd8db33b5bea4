"""nginx in front of the server (deploy/nginx/lipsync.conf, as compose runs it): uploads buffered before a
replica sees them, its own errors as the API's JSON and the replicas' passed through untouched, streamed
replies flowing through, the load spread, a POST never sent to a second replica once one took it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path

import pytest
from helpers import SMALL_BOX, astronaut, b64, good_body, http, image_bytes, small_face, speech_s, wav

from harness.gunicorn import Gunicorn, free_port
from harness.nginx import Nginx

STALLED = 7  # uploads trickling at once: more than the server's gunicorn threads (gunicorn.conf.py: 1 computing + 2 queued + 2)
BODY_TIMEOUT_S = 30  # lipsync.conf's client_body_timeout
IN_FLIGHT_TIMEOUT_S = 60.0  # until a replica reports the request computing


def address(server: Gunicorn) -> str:
    return server.url.removeprefix("http://")


def long_body() -> dict:
    """12 s of speech on the 512² portrait: seconds of work, so it is still computing when the test acts."""
    return {"image": b64(image_bytes(astronaut())), "audio": b64(wav(speech_s(12.0))), "box": [190, 60, 330, 230]}


def computing(servers: list[Gunicorn]) -> Gunicorn:
    """The replica whose worker holds a compute slot (lipsync_in_flight_requests ≥ 1 in its /metrics)."""
    deadline = time.monotonic() + IN_FLIGHT_TIMEOUT_S
    while time.monotonic() < deadline:
        for server in servers:
            text = http("GET", f"{server.url}/metrics", timeout=10)[2].decode()
            if float(re.search(r"^lipsync_in_flight_requests (\S+)$", text, re.MULTILINE).group(1)) >= 1:
                return server
        time.sleep(0.05)
    raise TimeoutError(f"no replica computed a request within {IN_FLIGHT_TIMEOUT_S:g} s")


def nginx_error(data: bytes) -> str:
    return json.loads(data)["error"]["code"]


@pytest.fixture(scope="module")
def proxied(server: Gunicorn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    with Nginx([address(server)], tmp_path_factory.mktemp("nginx")) as nginx:
        yield nginx


@pytest.fixture(scope="module")
def pair(ir_blazeface: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Gunicorn]]:
    """Two more replicas, one OpenVINO thread each (2 cores), no queue: a request that finds the slot taken is `503 busy`."""
    tmp = tmp_path_factory.mktemp("pair")
    env = {"INFERENCE_NUM_THREADS": "1", "MAX_QUEUE": "0"}
    with (
        Gunicorn(ir_blazeface, tmp / "a.log", env=env, ready_timeout_s=180) as a,
        Gunicorn(ir_blazeface, tmp / "b.log", env=env, ready_timeout_s=180) as b,
    ):
        yield [a, b]


def test_a_request_through_nginx(proxied: Nginx) -> None:
    status, headers, data = http("POST", f"{proxied.url}/api/generate", good_body(), headers={"X-Request-ID": "via-nginx-1"})
    assert status == 200 and json.loads(data)["frames"] == 1 and headers["X-Request-ID"] == "via-nginx-1"


def test_without_a_request_id_nginx_gives_its_own_to_the_replica(proxied: Nginx, server: Gunicorn) -> None:
    status, headers, _ = http("GET", f"{proxied.url}/api/avatars")
    request_id = headers["X-Request-ID"]
    assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", request_id)  # nginx's $request_id
    assert server.served_by([request_id]) and proxied.records_of(request_id)


def test_nginx_refuses_a_body_over_the_limit_with_the_api_json(proxied: Nginx) -> None:
    with socket.create_connection(("127.0.0.1", proxied.port), timeout=10) as s:
        s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 70000000\r\n\r\n")
        answer = s.recv(4096).decode()
    head, body = answer.split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 413") and "application/json" in head and "X-Request-ID: " in head
    assert nginx_error(body.encode()) == "payload_too_large"


def test_the_replicas_own_errors_pass_through_untouched(proxied: Nginx, server: Gunicorn) -> None:
    cases = [("POST", "/api/generate", b"{not json"), ("GET", "/no/such/route", None), ("GET", "/api/avatars/unknown", None)]
    for method, path, body in cases:
        headers = {"Content-Type": "application/json", "X-Request-ID": "passed-through"}
        direct, via = (http(method, base + path, body, headers) for base in (server.url, proxied.url))
        assert via[0] == direct[0] >= 400 and via[2] == direct[2] and via[1]["Content-Type"] == direct[1]["Content-Type"], (path, via)


def test_stalled_uploads_never_reach_the_server(proxied: Nginx, server: Gunicorn) -> None:
    """More stalled uploads than gunicorn has threads: without nginx reading the bodies first they would hold every
    thread and the probes below would time out. With it the server sees only the one completed; nginx cuts the
    others after client_body_timeout (no answer: it logs 408 and closes)."""
    body = json.dumps(good_body()).encode()
    ids = [f"stalled-{k}" for k in range(STALLED)]
    stalled = [socket.create_connection(("127.0.0.1", proxied.port), timeout=BODY_TIMEOUT_S * 2) for _ in ids]
    try:
        for request_id, s in zip(ids, stalled, strict=True):
            head = f"POST /api/generate HTTP/1.1\r\nHost: x\r\nX-Request-ID: {request_id}\r\nContent-Type: application/json\r\n"
            s.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:100])
        assert [http("GET", f"{proxied.url}/health", timeout=5)[0] for _ in range(STALLED)] == [200] * STALLED
        stalled[0].sendall(body[100:])  # now complete: passed on and answered
        answer = stalled[0].recv(65536).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 200"), answer[:300]
        assert [s.recv(1) for s in stalled[1:]] == [b""] * (STALLED - 1)  # closed by nginx, nothing sent
    finally:
        for s in stalled:
            s.close()
    assert set(server.served_by(ids)) == {ids[0]}
    logged = {r["request_id"]: r["status"] for r in proxied.records_of("stalled-", count=STALLED)}
    assert logged == {ids[0]: 200} | {i: 408 for i in ids[1:]}


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
    assert t_end - t_first > 0.1  # the first bytes came while the rest was still being made (100 frames: seconds)


def test_no_replica_is_json_503_with_retry_after() -> None:
    with Nginx([f"127.0.0.1:{free_port()}"]) as nginx:  # nobody listens there
        status, headers, data = http("POST", f"{nginx.url}/api/generate", good_body())
    assert status == 503 and headers["Content-Type"] == "application/json" and headers["Retry-After"] == "5"
    assert nginx_error(data) == "upstream_unavailable" and headers["X-Request-ID"]


def test_a_replica_that_never_accepts_is_json_504_with_retry_after() -> None:
    """A replica whose accept queue is full (a listening socket nobody accepts from, its one place taken): the
    kernel drops nginx's SYNs, and after proxy_connect_timeout nginx answers for it."""
    with socket.socket() as full, socket.socket() as taken:
        full.bind(("127.0.0.1", 0))
        full.listen(0)  # room for one connection, which `taken` fills
        taken.connect(full.getsockname())
        with Nginx([f"127.0.0.1:{full.getsockname()[1]}"]) as nginx:
            status, headers, data = http("POST", f"{nginx.url}/api/generate", good_body(), timeout=60)
    assert status == 504 and headers["Content-Type"] == "application/json" and headers["Retry-After"] == "5"
    assert nginx_error(data) == "upstream_timeout"


def test_a_refused_connection_moves_on_to_the_next_replica(server: Gunicorn) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with Nginx([dead, address(server)]) as nginx:
        statuses = [http("POST", f"{nginx.url}/api/generate", good_body(), {"X-Request-ID": f"refused-{k}"})[0] for k in range(2)]
        tried = [r["upstream"] for r in nginx.records_of("refused-", count=2)]
    assert statuses == [200, 200] and f"{dead}, {address(server)}" in tried, tried  # nothing was sent: the POST went on


def test_requests_spread_over_two_replicas(pair: list[Gunicorn]) -> None:
    with Nginx([address(r) for r in pair]) as nginx:
        pids = {json.loads(http("GET", f"{nginx.url}/livez")[2])["pid"] for _ in range(10)}
    assert pids == {w for r in pair for w in r.workers()}


def test_the_replicas_503_passes_through_with_its_retry_after(pair: list[Gunicorn]) -> None:
    one = pair[0]
    with Nginx([address(one)]) as nginx, ThreadPoolExecutor(1) as pool:
        running = pool.submit(http, "POST", f"{one.url}/api/generate", long_body(), None, 300)
        computing([one])
        status, headers, data = http("POST", f"{nginx.url}/api/generate", good_body())
        assert running.result()[0] == 200
    assert status == 503 and nginx_error(data) == "busy" and int(headers["Retry-After"]) >= 1  # the app's, not nginx's


def test_a_post_is_never_sent_to_a_second_replica(pair: list[Gunicorn]) -> None:
    """The replica computing a POST dies: the client gets nginx's 503, and the other replica never sees the request."""
    with Nginx([address(r) for r in pair]) as nginx, ThreadPoolExecutor(1) as pool:
        sent = pool.submit(http, "POST", f"{nginx.url}/api/generate", long_body(), {"X-Request-ID": "dies-with-its-replica"}, 300)
        victim = computing(pair)
        (other,) = [r for r in pair if r is not victim]
        for pid in victim.workers():
            os.kill(pid, signal.SIGKILL)
        status, _, data = sent.result()
        tried = [r["upstream"] for r in nginx.records_of("dies-with-its-replica")]
    assert status == 503 and nginx_error(data) == "upstream_unavailable"
    assert tried == [address(victim)] and not other.served_by(["dies-with-its-replica"])
    victim.wait_ready(1)  # its master has started a new worker
