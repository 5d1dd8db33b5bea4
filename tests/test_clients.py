"""The shipped clients against the real server: the Node CLI (an MP4, an error JSON, 503 + Retry-After)
and the browser page in headless Chromium (fetch → base64 → Blob → a <video> that really plays).

node and chromium are required, not optional: when either is missing these tests fail (CI installs both).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import av
import pytest

from harness import ROOT
from harness.gunicorn import Gunicorn

NODE_CLI = ROOT / "clients" / "node" / "lipsync.mjs"
PAGE_PORT = 8123  # the server fixture's CORS_ORIGINS allows http://localhost:8123
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic", "--autoplay-policy=no-user-gesture-required"]  # fmt: skip
SPEECH_S = 6.4  # test_assets/speech.wav: 102400 samples at 16 kHz → 160 frames at 25 fps


def _require(name: str, *fallbacks: str) -> str:
    found = shutil.which(name) or next((f for f in fallbacks if os.access(f, os.X_OK)), None)
    if found is None:
        pytest.fail(f"{name!r} is not installed; the client tests need it (Debian: apt-get install {name}; .ci/run does this)")
    return found


@pytest.fixture(scope="session")
def node() -> str:
    exe = _require("node", "/usr/bin/node")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 18:
        pytest.fail(f"node {version} has no built-in fetch; the client needs Node >= 18")
    return exe


@pytest.fixture(scope="session")
def chromium() -> str:
    return _require("chromium", "/usr/bin/chromium")


def run_cli(node: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([node, str(NODE_CLI), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_node_cli_writes_a_playable_mp4(node: str, server: Gunicorn, assets: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    proc = run_cli(node, "--url", server.url, "--image", assets / "astronaut.jpg", "--audio", assets / "speech.wav", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and "160 frames 512x512 @ 25 fps" in proc.stdout, proc.stdout
    with av.open(str(out)) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        assert (video.codec_context.name, audio.codec_context.name) == ("h264", "aac")
        assert (video.codec_context.width, video.codec_context.height) == (512, 512)
        assert sum(1 for _ in c.decode(video=0)) == 160


def test_node_cli_reports_the_error_json(node: str, server: Gunicorn, assets: Path, tmp_path: Path) -> None:
    text = tmp_path / "face.jpg"
    text.write_text("this is not an image\n")
    out = tmp_path / "out.mp4"
    proc = run_cli(node, "--url", server.url, "--image", text, "--audio", assets / "speech.wav", "--out", out)
    assert proc.returncode == 1
    assert re.match(r"error bad_image \(HTTP 415\): image is not a JPEG.*\[request_id [0-9a-f]{32}\]$", proc.stderr.strip()), proc.stderr
    assert not out.exists()


@dataclass
class Stub:
    """A loopback HTTP server answering POSTs with canned responses in order (the last one repeats)."""

    responses: list[tuple[int, dict[str, str], bytes]]
    requests: list[tuple[float, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def stub() -> Iterator[Stub]:
    state = Stub(responses=[])

    class Handler(SimpleHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.requests.append((time.monotonic(), dict(self.headers), body))
            status, headers, payload = state.responses[min(len(state.requests), len(state.responses)) - 1]
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", "Content-Length": str(len(payload)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def _busy(retry_after: int) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"error": {"code": "busy", "message": "server busy"}}).encode()
    return 503, {"Retry-After": str(retry_after), "X-Request-ID": "stub-busy"}, body


def test_node_cli_waits_retry_after_then_retries(node: str, stub: Stub, assets: Path, tmp_path: Path) -> None:
    mp4 = b"\x00\x00\x00\x18ftypisom canned bytes"
    meta = {"mime_type": "video/mp4", "duration_s": 0.04, "fps": 30, "frames": 1, "width": 2, "height": 2, "request_id": "stub-ok"}
    stub.responses = [_busy(1), (200, {}, json.dumps({"video": base64.b64encode(mp4).decode(), **meta}).encode())]
    out = tmp_path / "out.mp4"
    args = ["--image", assets / "astronaut.jpg", "--audio", assets / "speech.wav", "--out", out]
    proc = run_cli(node, "--url", stub.url, *args, "--fps", "30", "--box", "10", "20", "110", "120", "--api-key", "K")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == mp4
    assert "retry 1/3 in 1 s" in proc.stderr
    (t0, _, first), (t1, headers, second) = stub.requests
    assert t1 - t0 >= 1.0
    assert first == second
    assert headers["Authorization"] == "Bearer K"
    sent = json.loads(second)
    assert base64.b64decode(sent["image"]) == (assets / "astronaut.jpg").read_bytes()
    assert (sent["fps"], sent["box"]) == (30, [10, 20, 110, 120])


def test_node_cli_retries_are_bounded(node: str, stub: Stub, assets: Path, tmp_path: Path) -> None:
    stub.responses = [_busy(0)]
    args = ["--image", assets / "astronaut.jpg", "--audio", assets / "speech.wav", "--out", tmp_path / "out.mp4"]
    proc = run_cli(node, "--url", stub.url, *args, "--retries", "2")
    assert proc.returncode == 1
    assert len(stub.requests) == 3
    assert proc.stderr.strip().endswith("error busy (HTTP 503): server busy [request_id stub-busy]"), proc.stderr


@pytest.fixture
def page_origin() -> Iterator[tuple[str, queue.Queue[str]]]:
    """http://localhost:8123 serving the browser page and test_assets; POST /report puts the page's result in the queue."""
    reports: queue.Queue[str] = queue.Queue()

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if not self.path.startswith(("/clients/browser/", "/test_assets/")):
                self.send_error(404)
                return
            super().do_GET()

        def do_POST(self) -> None:
            reports.put(self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode())
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    try:
        httpd = ThreadingHTTPServer(("127.0.0.1", PAGE_PORT), functools.partial(Handler, directory=str(ROOT)))
    except OSError as e:
        pytest.fail(f"port {PAGE_PORT} is taken ({e}); the page must be served from http://localhost:{PAGE_PORT}, the CORS origin")
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://localhost:{PAGE_PORT}", reports
    httpd.shutdown()
    httpd.server_close()


def test_browser_page_plays_the_generated_video(
    chromium: str, server: Gunicorn, page_origin: tuple[str, queue.Queue[str]], tmp_path: Path
) -> None:
    origin, reports = page_origin
    page = f"{origin}/clients/browser/index.html?server={quote(server.url)}&report=/report"
    log = (tmp_path / "chromium.log").open("w")
    proc = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", page], stdout=log, stderr=log, start_new_session=True
    )
    try:
        report = json.loads(reports.get(timeout=45))
    except queue.Empty:
        pytest.fail(f"the page reported nothing in 45 s; chromium log:\n{(tmp_path / 'chromium.log').read_text()[-2000:]}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # chromium's renderer and GPU processes share its process group
        proc.wait(timeout=10)
        log.close()
    assert report["ok"], report
    assert report["http_status"] == 200 and report["request_id"] == report["server"]["request_id"]  # X-Request-ID exposed by CORS
    assert report["loadedmetadata"] and report["ready_state"] >= 2  # HAVE_CURRENT_DATA
    assert abs(report["duration"] - SPEECH_S) <= 0.1
    assert (report["video_width"], report["video_height"]) == (512, 512)
    assert report["frames_presented"] >= 10 and report["max_media_time"] >= 1.0 and report["current_time"] >= 1.0
    assert report["media_error"] is None
