"""The shipped clients against the real server: the Node CLI (an MP4, an error JSON, 503 + Retry-After,
avatars registered once and used by id, multipart bodies, a streamed MP4: written as it comes, cut,
aborted) and the browser page in headless Chromium (a registered video avatar that idles, cuts to a
lip-synced reply at the idle loop's position and back; the reply streamed with Media Source
Extensions, interrupted mid-stream, or played whole from a Blob).

node and chromium are required, not optional: when either is missing these tests fail (CI installs both).
"""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import pytest
from helpers import decode_mp4, idle_clip, speech_s, wav

from harness import ROOT
from harness.cdp import Chromium
from harness.gunicorn import Gunicorn
from harness.page import PAGE_ORIGIN, PAGE_PORT, open_page, playback_rate, serve_page, start_speaking, stream_timings, wait_idle

NODE_CLI = ROOT / "clients" / "node" / "lipsync.mjs"
STREAM_ABORT = ROOT / "tests" / "node" / "stream_abort.mjs"  # generateStream aborted after its first chunk
TWO_CONVERSATIONS = ROOT / "tests" / "node" / "two_conversations.mjs"  # two generateStream calls at once
CLIP_FRAMES = 20  # the video avatars: helpers.idle_clip(320, 240, frames=CLIP_FRAMES)
PERIOD = 2 * CLIP_FRAMES - 2  # their pingpong loop: 38 positions
SPEECH_S = 6.4  # test_assets/speech.wav: 102400 samples at 16 kHz → 160 frames at 25 fps


def run_cli(node: str, *args: str | Path, script: Path = NODE_CLI) -> subprocess.CompletedProcess[str]:
    return subprocess.run([node, str(script), *map(str, args)], capture_output=True, text=True, timeout=60)


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


CANNED_MP4 = b"\x00\x00\x00\x18ftypisom canned bytes"


def _canned() -> tuple[int, dict[str, str], bytes]:
    meta = {"mime_type": "video/mp4", "duration_s": 0.04, "fps": 30, "frames": 1, "width": 2, "height": 2, "end_frame": 0}
    return 200, {}, json.dumps({"video": base64.b64encode(CANNED_MP4).decode(), **meta, "request_id": "stub-ok"}).encode()


def test_node_cli_waits_retry_after_then_retries(node: str, stub: Stub, assets: Path, tmp_path: Path) -> None:
    stub.responses = [_busy(1), _canned()]
    out = tmp_path / "out.mp4"
    args = ["--image", assets / "astronaut.jpg", "--audio", assets / "speech.wav", "--out", out]
    proc = run_cli(node, "--url", stub.url, *args, "--fps", "30", "--box", "10", "20", "110", "120", "--api-key", "K")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == CANNED_MP4
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


def form_parts(content_type: str, body: bytes) -> dict[str, bytes]:
    """The parts of a multipart/form-data body by name (the stdlib's MIME parser reads the format)."""
    message = BytesParser(policy=policy.HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True) for part in message.iter_parts()}


def test_node_cli_multipart_sends_files_and_options_as_form_fields(node: str, stub: Stub, tmp_path: Path) -> None:
    stub.responses = [_canned()]
    (video := tmp_path / "clip.mp4").write_bytes(b"video bytes")
    (audio := tmp_path / "speech.wav").write_bytes(b"audio bytes")
    args = ["--video", video, "--audio", audio, "--out", tmp_path / "out.mp4", "--start-frame", "7", "--loop", "repeat"]
    proc = run_cli(node, "--url", stub.url, *args, "--pads", "0", "10", "0", "0", "--fps", "30", "--multipart")
    assert proc.returncode == 0, proc.stderr
    [(_, headers, body)] = stub.requests
    content_type = next(v for k, v in headers.items() if k.lower() == "content-type")  # fetch writes it lowercase
    assert content_type.startswith("multipart/form-data; boundary=")
    assert form_parts(content_type, body) == {
        "video": b"video bytes", "audio": b"audio bytes", "start_frame": b"7", "loop": b"repeat", "pads": b"0,10,0,0", "fps": b"30",
    }  # fmt: skip


def test_node_cli_registers_an_avatar_once_then_generates_by_id(node: str, server: Gunicorn, tmp_path: Path) -> None:
    frames = CLIP_FRAMES - 4  # not the browser test's clip: this one must be new to the server
    (clip := tmp_path / "idle.mp4").write_bytes(idle_clip(320, 240, frames=frames)[0])
    (speech := tmp_path / "speech.wav").write_bytes(wav(speech_s(1.0)))  # 25 frames at 25 fps
    first = run_cli(node, "--url", server.url, "--register", "--video", clip, "--multipart")
    assert first.returncode == 0, first.stderr
    record = json.loads(first.stdout)
    assert record["created"] and (record["kind"], record["frames"], record["width"], record["height"]) == ("video", frames, 320, 240)
    again = run_cli(node, "--url", server.url, "--register", "--video", clip)  # base64 JSON: the same bytes, the same avatar
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == record | {"created": False}

    out, start, period = tmp_path / "out.mp4", 27, 2 * frames - 2
    by_id = ["--avatar-id", record["avatar_id"], "--audio", speech, "--start-frame", start, "--multipart"]
    proc = run_cli(node, "--url", server.url, *by_id, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "25 frames 320x240 @ 25 fps" in proc.stdout and f"end frame {(start + 25) % period}," in proc.stdout, proc.stdout
    mp4 = decode_mp4(out.read_bytes())
    assert (mp4.video_codec, mp4.audio_codec, mp4.width, mp4.height, len(mp4.frames)) == ("h264", "aac", 320, 240, 25)


STREAMED = re.compile(
    r"streamed (?P<out>\S+): (?P<frames>\d+) frames @ 25 fps, [\d.]+ s, end frame \d+, (?P<bytes>\d+) bytes; "
    r"first byte after (?P<ttfb>[\d.]+) s, total (?P<total>[\d.]+) s \(request_id [0-9a-f]{32}\)\n"
)


def stream_cli(node: str, url: str, image: Path, audio: Path, out: Path, *args: str) -> re.Match[str]:
    """`--stream` to `out`: the line it printed, checked against the file (an MP4 of as many frames as it said)."""
    proc = run_cli(node, "--url", url, "--image", image, "--audio", audio, "--out", out, "--stream", *args)
    assert proc.returncode == 0, proc.stderr
    line = STREAMED.fullmatch(proc.stdout)
    assert line and line["out"] == str(out), proc.stdout
    assert float(line["ttfb"]) <= float(line["total"]) and int(line["bytes"]) == out.stat().st_size
    assert not Path(f"{out}.part").exists()
    mp4 = decode_mp4(out.read_bytes())
    assert (mp4.video_codec, mp4.audio_codec, mp4.width, mp4.height) == ("h264", "aac", 512, 512)
    assert len(mp4.frames) == int(line["frames"]), (len(mp4.frames), proc.stdout)
    print(proc.stdout.strip())
    return line


def test_node_cli_stream_writes_a_fragmented_mp4_as_it_comes(node: str, server: Gunicorn, assets: Path, tmp_path: Path) -> None:
    face, speech, out = assets / "astronaut.jpg", assets / "speech.wav", tmp_path / "out.mp4"
    assert int(stream_cli(node, server.url, face, speech, out)["frames"]) == 160
    boxes = top_level_boxes(out.read_bytes())
    assert boxes[:2] == ["ftyp", "moov"] and {"moof", "mdat"} <= set(boxes), boxes  # fragmented: the samples come after the header
    multipart = stream_cli(node, server.url, face, speech, tmp_path / "multipart.mp4", "--multipart")  # stream=true as a form field
    assert int(multipart["frames"]) == 160


def top_level_boxes(mp4: bytes) -> list[str]:
    """The types of an MP4's top-level boxes, in order (ISO/IEC 14496-12: 32-bit size, 4-char type; size 1: a 64-bit size follows)."""
    boxes, at = [], 0
    while at + 8 <= len(mp4):
        size, kind = int.from_bytes(mp4[at : at + 4], "big"), mp4[at + 4 : at + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(mp4[at + 8 : at + 16], "big")
        boxes.append(kind)
        at += size
    return boxes


def test_node_cli_stream_reports_an_error_before_the_first_byte(node: str, server: Gunicorn, assets: Path, tmp_path: Path) -> None:
    (speech := tmp_path / "speech.wav").write_text("this is not audio\n")
    out = tmp_path / "out.mp4"
    proc = run_cli(node, "--url", server.url, "--image", assets / "astronaut.jpg", "--audio", speech, "--out", out, "--stream")
    assert proc.returncode == 1
    assert re.match(r"error bad_audio \(HTTP 415\): .*\[request_id [0-9a-f]{32}\]$", proc.stderr.strip()), proc.stderr
    assert not out.exists() and not Path(f"{out}.part").exists()


def access_record(server: Gunicorn, request_id: str, wait_s: float = 30.0) -> dict:
    """The access log's line of a request; a stream's is written when its body is closed."""
    t0 = time.monotonic()
    while not (records := [r for r in server.log_records() if r.get("request_id") == request_id]) and time.monotonic() - t0 < wait_s:
        time.sleep(0.1)
    assert len(records) == 1, (request_id, records)
    return records[0]


def test_node_stream_aborted_after_the_first_chunk_frees_the_server(node: str, server: Gunicorn, assets: Path, tmp_path: Path) -> None:
    (long_speech := tmp_path / "long.wav").write_bytes(wav(speech_s(20.0)))  # 500 frames: far from done at the first chunk
    proc = run_cli(node, server.url, assets / "astronaut.jpg", long_speech, script=STREAM_ABORT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["info"]["frames"] == 500 and report["info"]["mime_type"].startswith('video/mp4; codecs="avc1.'), report
    assert report["chunks"] == 1 and report["ended"]["name"] == "AbortError", report
    # the next request gets the only slot (no retry allowed: a 503 would fail it) and streams whole
    (short := tmp_path / "short.wav").write_bytes(wav(speech_s(1.0)))
    assert int(stream_cli(node, server.url, assets / "astronaut.jpg", short, tmp_path / "next.mp4", "--retries", "0")["frames"]) == 25
    aborted = access_record(server, report["info"]["request_id"])  # the server stopped: it did not make the 500 frames
    assert aborted["stream"] == "aborted" and aborted["frames_sent"] < 500, aborted
    print(f"aborted after the first chunk: the server stopped at {aborted['frames_sent']} of 500 frames")


def test_node_client_streams_two_conversations_at_once(node: str, server: Gunicorn, assets: Path) -> None:
    """One Node process, two streams in flight together: both whole, and the second began before the first ended."""
    proc = run_cli(node, server.url, assets / "astronaut.jpg", assets / "speech.wav", "10", script=TWO_CONVERSATIONS)
    assert proc.returncode == 0, proc.stderr
    first, second = sorted(json.loads(proc.stdout), key=lambda c: c["firstByteAt"])
    for conversation in (first, second):
        assert conversation["frames"] == round(SPEECH_S * 10) and conversation["bytes"] > 0, conversation
        assert access_record(server, conversation["requestId"])["stream"] == "completed"
    assert second["firstByteAt"] < first["doneAt"], (first, second)  # not one after the other


def test_node_cli_stream_interrupted_leaves_no_file(node: str, server: Gunicorn, assets: Path, tmp_path: Path) -> None:
    """Ctrl-C while the MP4 comes: the CLI closes the stream, removes OUT.part and exits 130."""
    (long_speech := tmp_path / "long.wav").write_bytes(wav(speech_s(20.0)))
    out, part = tmp_path / "out.mp4", tmp_path / "out.mp4.part"
    args = ["--url", server.url, "--image", assets / "astronaut.jpg", "--audio", long_speech, "--out", out, "--stream"]
    proc = subprocess.Popen([node, str(NODE_CLI), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (part.exists() and part.stat().st_size) and proc.poll() is None and time.monotonic() - t0 < 30:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # the first bytes are on disk: the stream is under way
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130 and stderr.strip() == "interrupted" and not stdout, (proc.returncode, stdout, stderr)
    assert not out.exists() and not part.exists()


def test_node_cli_stream_cut_leaves_no_file(node: str, stub: Stub, assets: Path, tmp_path: Path) -> None:
    """A stream that ends before its last byte (the server failed mid-way): exit 1, no OUT, no OUT.part."""
    headers = {"Content-Type": 'video/mp4; codecs="avc1.640028, mp4a.40.2"', "Content-Length": "100000", "X-Frames": "160"}
    stub.responses = [(200, headers, CANNED_MP4)]  # 100000 bytes announced, a few sent, then the connection closes
    out = tmp_path / "out.mp4"
    args = ["--image", assets / "astronaut.jpg", "--audio", assets / "speech.wav", "--out", out, "--stream"]
    proc = run_cli(node, "--url", stub.url, *args)
    assert proc.returncode == 1
    cut = rf"error stream_cut \(HTTP 200\): the stream was cut after {len(CANNED_MP4)} bytes .*; {re.escape(str(out))} not written"
    assert re.match(cut, proc.stderr), proc.stderr
    assert not out.exists() and not Path(f"{out}.part").exists()
    [(_, sent_headers, body)] = stub.requests
    assert json.loads(body)["stream"] is True and sent_headers["Accept"].startswith("video/mp4"), sent_headers


@pytest.fixture
def page_origin() -> Iterator[str]:
    """http://localhost:8123 (the server fixture's CORS origin) serving clients/browser/."""
    try:
        with serve_page() as origin:
            yield origin
    except OSError as e:
        pytest.fail(f"port {PAGE_PORT} is taken ({e}); the page must be served from {PAGE_ORIGIN}, the CORS origin")


def loop_distance(a: float, b: float, period: int) -> float:
    """a - b on a loop of `period` positions, in [-period/2, period/2)."""
    return (a - b + period / 2) % period - period / 2


def idle_advances(browser: Chromium, period: int, fps: float, wait_s: float = 0.4) -> None:
    """The idle video plays: its loop position moves on as fast as the wall clock."""
    sample = "[performance.now() / 1000, document.getElementById('idle').currentTime, document.getElementById('idle').paused]"
    t0, p0, paused0 = browser.evaluate(sample)
    time.sleep(wait_s)
    t1, p1, paused1 = browser.evaluate(sample)
    moved = (p1 - p0) * fps % period
    assert not (paused0 or paused1) and abs(moved - (t1 - t0) * fps) <= 2, (p0, p1, t1 - t0)


def speak_and_check(browser: Chromium, speech: Path, frames: int) -> dict:
    """Choose `speech` in the page's audio input, wait until it is idle again; assert the cut, the reply of
    `frames` frames and the resume. Returns the page's state, with the events of this speech."""
    state = wait_idle(browser, start_speaking(browser, speech))
    assert state["phase"] == "idle" and not any(e["event"] == "error" for e in state["events"]), state["events"]
    cut, clip, resume, fps = state["lastCut"], state["lastClip"], state["lastResume"], state["avatar"]["fps"]
    start = state["lastRequest"]["startFrame"]
    # the cut: at the swap the idle loop's position (from its currentTime) is the clip's start_frame, and
    # the last idle frame handed to the screen (requestVideoFrameCallback) the one before it (or that one)
    assert cut["clipStart"] == clip["start"] == start
    assert abs(loop_distance(cut["idleTime"] * fps, start, PERIOD)) <= 1, cut
    assert 0 <= loop_distance(start, round(cut["idleFrameOnScreen"]), PERIOD) <= 1, cut
    # the clip: the speech played to its last frame, with sound, no error; end_frame is the loop's
    assert clip["frames"] == frames and clip["endFrame"] == (start + frames) % PERIOD, clip
    assert re.fullmatch(r"[0-9a-f]{32}", clip["requestId"]), clip  # X-Request-ID, X-Frames, X-End-Frame: exposed by CORS
    assert clip["error"] is None and not clip["muted"] and clip["audioBytes"] > 0, clip
    assert clip["currentTime"] >= (frames - 0.5) / fps and round(resume["clipFrameOnScreen"]) == frames - 1, (clip, resume)
    # the resume: the idle loop again, at end_frame, and moving on
    assert resume["outcome"] == "complete" and resume["framesShown"] == frames, resume
    assert abs(loop_distance(resume["idleTime"] * fps, clip["endFrame"], PERIOD)) <= 1, resume
    assert round(resume["idleFrameOnScreen"]) == clip["endFrame"], resume
    idle_advances(browser, PERIOD, fps)
    request = state["lastRequest"]
    print(f"cut at {cut['position']:.3f} for start_frame {start}: {cut['errorFrames']:+.3f} frames", end="; ")
    print(f"clip ready in {request['readyMs']} ms, estimated {request['estimateMs']} ms; {stream_timings(state['lastStream'])}")
    return state


def open_avatar(browser: Chromium, page_origin: str, server_url: str, tmp_path: Path) -> dict:
    """The page on `server_url`, idling with a 320×240 video avatar registered through its file input; the avatar."""
    (clip_mp4 := tmp_path / "idle.mp4").write_bytes(idle_clip(320, 240, frames=CLIP_FRAMES)[0])
    avatar = open_page(browser, page_origin, server_url, clip_mp4)
    assert (avatar["kind"], avatar["frames"], avatar["width"], avatar["height"]) == ("video", CLIP_FRAMES, 320, 240), avatar
    idle_advances(browser, PERIOD, avatar["fps"])
    return avatar


@pytest.fixture
def avatar_page(chromium: str, server: Gunicorn, page_origin: str, tmp_path: Path) -> Iterator[tuple[Chromium, dict]]:
    """The page in headless Chromium, idling with its video avatar on the server fixture."""
    with Chromium(chromium, tmp_path) as browser:
        yield browser, open_avatar(browser, page_origin, server.url, tmp_path)


def test_browser_avatar_cuts_in_and_out_of_its_idle_loop(avatar_page: tuple[Chromium, dict], tmp_path: Path) -> None:
    browser, avatar = avatar_page
    (speech := tmp_path / "speech.wav").write_bytes(wav(speech_s(1.0)))  # 25 frames at 25 fps
    speak_and_check(browser, speech, 25)  # the first guess of the generation time
    browser.evaluate("lipsyncState.estimateMs = 0")  # the clip is then late: the page waits for the next turn (or asks again)
    assert any(e["event"] == "late" for e in speak_and_check(browser, speech, 25)["events"])

    browser.send("Page.reload")  # the page put ?avatar=<id> in its URL: it idles without registering again
    same_avatar = f"window.lipsyncState?.avatar?.avatar_id === {json.dumps(avatar['avatar_id'])}"
    browser.wait_for(f"{same_avatar} && lipsyncState.phase === 'idle'", timeout_s=20)
    assert not any(e["event"] == "registered" for e in browser.evaluate("lipsyncState.events"))


def test_browser_plays_a_streamed_reply_as_it_arrives(avatar_page: tuple[Chromium, dict], assets: Path) -> None:
    """Media Source Extensions: the first frame is on screen while the rest still arrives; every frame of
    X-Frames arrives and plays, as long as the audio, never waiting for data, at the wall clock's pace."""
    browser, _ = avatar_page
    state = speak_and_check(browser, assets / "speech.wav", round(SPEECH_S * 25))
    stream, clip = state["lastStream"], state["lastClip"]
    assert (stream["path"], stream["outcome"], stream["error"]) == ("mse", "complete", None), stream
    assert re.fullmatch(r'video/mp4; codecs="avc1\.[0-9a-f]{6}, mp4a\.40\.2"', stream["type"]), stream["type"]
    assert stream["framesReceived"] == stream["framesExpected"] == clip["frames"], stream
    order = ["requestAt", "headersAt", "firstByteAt", "readyAt", "cutAt", "firstFrameAt"]  # first byte, decodable, cut, on screen
    assert [stream[k] for k in order] == sorted(stream[k] for k in order), stream
    assert stream["readyAt"] < stream["doneAt"] and stream["chunks"] > 1, stream  # playable before the body's end
    assert abs(clip["duration"] - clip["durationS"]) < 1 / clip["fps"], clip  # X-Duration: the media's, once the stream ended
    assert stream["waiting"] == 0, [e for e in state["events"] if e["event"] == "stall"]
    assert len(stream["samples"]) > 10 and abs(playback_rate(stream["samples"]) - 1) < 0.05, stream["samples"]


def test_browser_interrupts_a_streamed_reply(avatar_page: tuple[Chromium, dict], server: Gunicorn, tmp_path: Path) -> None:
    """Barge-in: Interrupt aborts the fetch mid-stream, the server stops; the idle loop resumes after the last frame shown."""
    browser, avatar = avatar_page
    (speech := tmp_path / "speech.wav").write_bytes(wav(speech_s(20.0)))  # 500 frames: still streaming when interrupted
    before = start_speaking(browser, speech)
    browser.wait_for("lipsyncState.phase === 'talking'", timeout_s=30)
    browser.evaluate("document.getElementById('interrupt').click()")
    state = wait_idle(browser, before)
    stream, resume, start = state["lastStream"], state["lastResume"], state["lastRequest"]["startFrame"]
    assert (stream["path"], stream["outcome"]) == ("mse", "aborted") and 0 < stream["framesReceived"] < stream["framesExpected"], stream
    assert resume["outcome"] == "aborted" and 1 <= resume["framesShown"] <= stream["framesReceived"], resume
    # the idle loop follows the last frame shown: on screen, the reply's frame k, then the loop's start + k + 1
    assert round(resume["clipFrameOnScreen"]) == resume["framesShown"] - 1, resume
    assert resume["endFrame"] == (start + resume["framesShown"]) % PERIOD, resume
    assert round(resume["idleFrameOnScreen"]) == resume["endFrame"], resume
    assert state["phase"] == "idle" and "interrupted" in browser.evaluate("document.getElementById('status').textContent")
    idle_advances(browser, PERIOD, avatar["fps"])
    request_id = state["lastRequest"]["requestId"]
    deadline = time.monotonic() + 10
    while not server.served_by([request_id]) and time.monotonic() < deadline:  # once the server sees the client gone
        time.sleep(0.1)
    record = next((r for r in server.log_records() if r.get("request_id") == request_id and r.get("logger") == "wav2lip.access"), None)
    assert record is not None and record["stream"] == "aborted" and record["frames_sent"] < 500, record


def test_browser_without_media_source_plays_the_whole_reply(avatar_page: tuple[Chromium, dict], tmp_path: Path) -> None:
    """No Media Source Extensions: the streamed body is read whole and played from a Blob URL, cut and resumed alike."""
    browser, _ = avatar_page
    assert browser.evaluate("delete window.MediaSource && window.MediaSource === undefined")
    (speech := tmp_path / "speech.wav").write_bytes(wav(speech_s(1.0)))
    stream = speak_and_check(browser, speech, 25)["lastStream"]
    assert (stream["path"], stream["outcome"], stream["framesReceived"]) == ("blob", "complete", 25), stream
    assert stream["firstByteAt"] <= stream["doneAt"] <= stream["readyAt"], stream  # the whole body, then played


def test_two_pages_talk_at_once_and_both_play_without_waiting(
    chromium: str, server: Gunicorn, page_origin: str, assets: Path, tmp_path: Path
) -> None:
    """Two conversations on one worker: both streams play at once (neither waits for the other's whole answer)
    and neither player waits for data. A 10 fps avatar: this is about sharing, not the machine's capacity."""
    (clip := tmp_path / "idle10.mp4").write_bytes(idle_clip(320, 240, frames=CLIP_FRAMES, fps=10)[0])
    for name in "ab":
        (tmp_path / name).mkdir()
    with Chromium(chromium, tmp_path / "a") as a, Chromium(chromium, tmp_path / "b") as b:
        pages = (a, b)
        for browser in pages:
            open_page(browser, page_origin, server.url, clip)
        befores = [start_speaking(browser, assets / "speech.wav") for browser in pages]
        states = [wait_idle(browser, before) for browser, before in zip(pages, befores, strict=True)]
        origins = [browser.evaluate("performance.timeOrigin") for browser in pages]
    streams = [state["lastStream"] for state in states]
    for stream in streams:
        assert (stream["path"], stream["outcome"], stream["error"]) == ("mse", "complete", None), stream
        assert stream["framesReceived"] == stream["framesExpected"] == round(SPEECH_S * 10), stream
        assert stream["waiting"] == 0, stream
    at = [{k: origin + stream[k] for k in ("firstByteAt", "doneAt")} for origin, stream in zip(origins, streams, strict=True)]
    assert at[0]["firstByteAt"] < at[1]["doneAt"] and at[1]["firstByteAt"] < at[0]["doneAt"], at  # they overlapped


@pytest.fixture(scope="module")
def hasty_server(ir_blazeface: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """A server whose deadline (REQUEST_TIMEOUT_S) passes while a long reply streams: it then cuts the connection.
    It plays one stream at a time (MAX_STREAMS): a second is refused with 503 + Retry-After."""
    env = {"CORS_ORIGINS": PAGE_ORIGIN, "AVATAR_DIR": str(tmp_path_factory.mktemp("avatars")), "REQUEST_TIMEOUT_S": "4", "MAX_STREAMS": "1"}
    with Gunicorn(ir_blazeface, tmp_path_factory.mktemp("logs") / "gunicorn.log", env=env, ready_timeout_s=120) as s:
        yield s


def test_browser_shows_a_reply_cut_short(chromium: str, hasty_server: Gunicorn, page_origin: str, tmp_path: Path) -> None:
    """The body ends without its last chunk: the page plays every frame that came, says the reply was cut,
    and resumes the idle loop after the last of them."""
    (speech := tmp_path / "speech.wav").write_bytes(wav(speech_s(60.0)))  # 1500 frames: far more than 4 s of work makes
    with Chromium(chromium, tmp_path) as browser:
        open_avatar(browser, page_origin, hasty_server.url, tmp_path)
        state = wait_idle(browser, start_speaking(browser, speech))
        status = browser.evaluate("document.getElementById('status').textContent")
    stream, resume, start = state["lastStream"], state["lastResume"], state["lastRequest"]["startFrame"]
    assert (stream["path"], stream["outcome"]) == ("mse", "cut") and 0 < stream["framesReceived"] < stream["framesExpected"], stream
    assert resume["outcome"] == "cut" and resume["framesShown"] == stream["framesReceived"], resume
    assert resume["endFrame"] == (start + resume["framesShown"]) % PERIOD, resume
    assert round(resume["idleFrameOnScreen"]) == resume["endFrame"], resume
    assert state["phase"] == "idle" and "the reply was cut" in status, status


def test_browser_waits_out_a_busy_server_and_then_speaks(chromium: str, hasty_server: Gunicorn, page_origin: str, tmp_path: Path) -> None:
    """One stream at a time: the second page's reply is refused (503 + Retry-After); the page waits that long, asks
    again, and plays it whole."""
    (speech := tmp_path / "speech.wav").write_bytes(wav(speech_s(1.0)))
    for name in "ab":
        (tmp_path / name).mkdir()
    with Chromium(chromium, tmp_path / "a") as a, Chromium(chromium, tmp_path / "b") as b:
        for browser in (a, b):
            open_avatar(browser, page_origin, hasty_server.url, tmp_path)
        befores = [start_speaking(browser, speech) for browser in (a, b)]
        states = [wait_idle(browser, before) for browser, before in zip((a, b), befores, strict=True)]
    busy = [[e for e in state["events"] if e["event"] == "busy"] for state in states]
    assert sum(map(bool, busy)) == 1, busy  # exactly one page was refused, and waited
    assert all(e["code"] == "busy" and 1 <= e["retryAfterS"] <= 30 for e in busy[0] + busy[1]), busy
    for state in states:
        assert (state["lastStream"]["outcome"], state["lastStream"]["framesReceived"]) == ("complete", 25), state["events"]
