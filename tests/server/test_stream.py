"""Streamed replies (`"stream": true`): a fragmented MP4 whose frames are the whole reply's, errors before
the first byte as JSON, a client that leaves (barge-in) stopping the work, a failure after the first byte
cutting the connection. Content in process (Flask); leaving and cutting against a real gunicorn."""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import re
import socket
import struct
import time
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import SMALL_BOX, assert_error, b64, decode_mp4, idle_clip, loaded_app, make_settings, small_face, speech_s, wav

from harness.gunicorn import Gunicorn
from lipsync_server.payload import Body
from wav2lip_core.audio import Audio
from wav2lip_core.config import Settings
from wav2lip_core.errors import BadRequest
from wav2lip_core.video import Mp4Writer

FPS = 25


@pytest.fixture(scope="module")
def client(ir_blazeface: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = make_settings(ir_blazeface, avatar_dir=tmp_path_factory.mktemp("avatars"), max_image_pixels=320 * 240)
    return loaded_app(settings).test_client()


@pytest.fixture(scope="module")
def audio() -> bytes:
    return wav(speech_s(1.3))  # 33 frames: 8 batches and a short one


def top_level_boxes(data: bytes) -> list[str]:
    """The MP4's top-level box types, in order."""
    boxes, i = [], 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        assert size >= 8, f"box {kind!r} at {i} has size {size}"
        boxes.append(kind.decode("latin-1"))
        i += size
    assert i == len(data), "the file ends inside a box"
    return boxes


def streamed(client, body: dict):
    """The streamed reply, read to its end (the slot is held until then)."""
    resp = client.post("/api/generate", json=body | {"stream": True}, buffered=True)
    assert resp.status_code == 200, resp.get_data()[:300]
    return resp


def whole(client, body: dict) -> bytes:
    resp = client.post("/api/generate", json=body, headers={"Accept": "video/mp4"})
    assert resp.status_code == 200, resp.get_data()[:300]
    return resp.data


def test_stream_is_a_fragmented_mp4_with_the_frames_of_the_whole_reply(client, audio: bytes) -> None:
    body = {"image": b64(small_face()), "audio": b64(audio), "box": SMALL_BOX}
    resp = streamed(client, body)
    data = resp.data
    kinds = top_level_boxes(data)
    assert kinds[:2] == ["ftyp", "moov"] and kinds.count("moof") >= 9 and kinds.count("moof") == kinds.count("mdat")
    assert kinds[-1] == "mdat", "a fragmented file: no index at the end"
    frames = math.ceil(1.3 * FPS)
    assert resp.headers["X-Frames"] == str(frames) and float(resp.headers["X-Duration"]) == pytest.approx(1.3, abs=1e-3)
    assert resp.headers["X-Fps"] == str(FPS) and resp.headers["X-Face-Box"] == ",".join(map(str, SMALL_BOX))
    assert re.fullmatch(r'video/mp4; codecs="avc1\.[0-9a-f]{6}, mp4a\.40\.2"', resp.headers["Content-Type"])
    got, ref = decode_mp4(data), decode_mp4(whole(client, body))
    assert len(got.frames) == len(ref.frames) == frames
    assert all(np.array_equal(a, b) for a, b in zip(got.frames, ref.frames, strict=True)), "streamed frames differ from the whole reply's"
    assert abs(got.audio_duration - got.video_duration) <= 1 / FPS, (got.audio_duration, got.video_duration)


def test_codec_string_names_the_encoders_profile_and_level(client, audio: bytes) -> None:
    resp = streamed(client, {"image": b64(small_face()), "audio": b64(audio), "box": SMALL_BOX})
    avc = re.search(r"avc1\.([0-9a-f]{6})", resp.headers["Content-Type"]).group(1)
    with av.open(io.BytesIO(resp.data)) as c:
        ctx = c.streams.video[0].codec_context
        assert ctx.profile == "High" and avc[:2] == "64"  # x264 at yuv420p 8-bit: High profile, profile_idc 100
        assert int(avc[4:], 16) == ctx.level


def test_multipart_stream_and_registered_video_stream_match_their_whole_replies(client, audio: bytes) -> None:
    clip, _ = idle_clip(320, 240, frames=12)
    record = client.post("/api/avatars", json={"video": b64(clip)}).get_json()
    by_id = {"avatar_id": record["avatar_id"], "audio": b64(audio), "start_frame": 5}
    resp = streamed(client, by_id)
    assert resp.headers["X-End-Frame"] == str(json.loads(client.post("/api/generate", json=by_id).data)["end_frame"])
    assert [f.tobytes() for f in decode_mp4(resp.data).frames] == [f.tobytes() for f in decode_mp4(whole(client, by_id)).frames]
    form = {"image": (io.BytesIO(small_face()), "face.png"), "audio": (io.BytesIO(audio), "a.wav"), "box": ",".join(map(str, SMALL_BOX)),
            "stream": "true"}  # fmt: skip
    multipart = client.post("/api/generate", data=form, content_type="multipart/form-data", buffered=True)
    assert multipart.status_code == 200 and multipart.headers["Content-Type"].startswith("video/mp4; codecs=")
    json_body = {"image": b64(small_face()), "audio": b64(audio), "box": SMALL_BOX}
    assert [f.tobytes() for f in decode_mp4(multipart.data).frames] == [f.tobytes() for f in decode_mp4(whole(client, json_body)).frames]


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"audio": b64(b"not audio at all")}, {400, 415, 422}, None),
        ({"image": b64(b"\x89PNG broken")}, {400, 415, 422}, None),
        ({"avatar_id": "no-such-avatar", "image": None}, {404}, "avatar_not_found"),
        ({"stream": "yes"}, {400}, "invalid_field"),
    ],
)
def test_errors_before_the_first_byte_are_json(client, fields: dict, status: set[int], code: str | None) -> None:
    body = {"image": b64(small_face()), "audio": b64(wav(speech_s(0.5))), "box": SMALL_BOX, "stream": True} | fields
    assert_error(client.post("/api/generate", json={k: v for k, v in body.items() if v is not None}), status, code)


@pytest.mark.parametrize(("value", "form", "expected"), [(True, False, True), (False, False, False), ("true", True, True),
                                                          ("1", True, True), ("0", True, False), ("", True, False)])  # fmt: skip
def test_stream_flag_reads_json_booleans_and_form_words(value: object, form: bool, expected: bool) -> None:
    assert Body({"stream": value}, form=form).flag("stream") is expected


@pytest.mark.parametrize("value", ["true", 1, [True]])
def test_stream_flag_refuses_anything_else_in_json(value: object) -> None:
    with pytest.raises(BadRequest, match="stream must be true or false"):
        Body({"stream": value}).flag("stream")


@pytest.mark.parametrize("rate", [16000, 22050, 48000])
def test_fragmented_and_whole_writers_hold_the_same_packets(rate: int) -> None:
    """Same H.264 and AAC packets at the same times in both layouts: frame k at k/fps, the audio after
    the AAC encoder's priming starting with frame 0."""
    rng = np.random.default_rng(7)
    sound = Audio((rng.standard_normal((rate, 1)) * 0.1).astype(np.float32), rate)
    s = Settings()
    files = []
    for fragmented in (False, True):
        w = Mp4Writer(64, 48, FPS, s.x264_preset, s.x264_crf, s.x264_params, fragmented=fragmented)
        w.add_audio(sound)
        parts = []
        for k in range(FPS):
            w.write(np.full((48, 64, 3), k * 9, np.uint8))
            parts.append(w.take() if fragmented else b"")
        files.append(b"".join(parts) + w.finish())
    layouts = []
    for data in files:
        with av.open(io.BytesIO(data)) as c:
            packets = [p for p in c.demux() if p.size]
            layouts.append(
                {kind: [(float(p.pts * p.time_base), bytes(p)) for p in packets if p.stream.type == kind] for kind in ("video", "audio")}
            )
    assert layouts[0] == layouts[1]
    video, audio = ([t for t, _ in layouts[1][kind]] for kind in ("video", "audio"))
    assert video == pytest.approx([k / FPS for k in range(FPS)]) and audio[0] < 0 and audio[1] == 0  # priming before 0
    assert top_level_boxes(files[1])[:3] == ["ftyp", "moov", "moof"]


# ---------------------------------------------------------------- against a real gunicorn


def open_stream(port: int, body: bytes) -> tuple[socket.socket, bytes]:
    """Send a streamed request on a raw socket; the socket and the first bytes of the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock, sock.recv(65536)


def stream_body(assets: Path, seconds: float) -> bytes:
    image = base64.b64encode((assets / "astronaut.jpg").read_bytes()).decode()
    return json.dumps({"image": image, "audio": b64(wav(speech_s(seconds))), "stream": True}).encode()


def access_records(server: Gunicorn, request_ids: set[str] | None = None) -> list[dict]:
    return [r for r in server.log_records() if r.get("message") == "request" and (request_ids is None or r["request_id"] in request_ids)]


def wait_for_record(server: Gunicorn, request_id: str, timeout_s: float = 30.0) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        found = access_records(server, {request_id})
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for {request_id}:\n{server.log_tail()}")


def test_a_client_that_leaves_stops_the_work_and_frees_the_slot(server: Gunicorn, assets: Path) -> None:
    body = stream_body(assets, 20.0)  # 500 frames: seconds of work if nobody stopped it
    for _ in range(3):
        sock, first = open_stream(server.port, body)
        assert first.startswith(b"HTTP/1.1 200") and b"video/mp4; codecs=" in first
        request_id = re.search(rb"X-Request-ID: (\S+)", first, re.IGNORECASE).group(1).decode()
        sock.close()  # barge-in: the user interrupts the avatar
        record = wait_for_record(server, request_id, timeout_s=10)
        assert record["stream"] == "aborted" and record["frames_sent"] < 500, record
        assert record["ttfb_ms"] is not None and record["bytes_sent"] > 0
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/api/generate", stream_body(assets, 0.5), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()  # the slot is free: the next stream runs to its end
    assert resp.status == 200 and len(decode_mp4(data).frames) == int(resp.getheader("X-Frames"))
    record = wait_for_record(server, resp.getheader("X-Request-ID"))
    assert record["stream"] == "completed" and record["wait_ms"] < 1000, record
    metrics = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    metrics.request("GET", "/metrics")
    text = metrics.getresponse().read().decode()
    value = lambda name: float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE).group(1))
    assert value('lipsync_streams_total{outcome="aborted"}') >= 3 and value('lipsync_streams_total{outcome="completed"}') >= 1
    assert value("lipsync_stream_first_byte_seconds_count") >= 4 and value("lipsync_in_flight_requests") == 0


def test_a_failure_after_the_first_byte_cuts_the_connection(ir_blazeface: Path, assets: Path, tmp_path: Path) -> None:
    env = {"REQUEST_TIMEOUT_S": "1", "AVATAR_DIR": str(tmp_path / "avatars")}
    with Gunicorn(ir_blazeface, tmp_path / "gunicorn.log", env=env, ready_timeout_s=120) as short:
        conn = http.client.HTTPConnection("127.0.0.1", short.port, timeout=60)
        conn.request("POST", "/api/generate", stream_body(assets, 30.0), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200  # the first batch came in time; the deadline falls mid-stream
        with pytest.raises(http.client.IncompleteRead):
            resp.read()  # no final chunk: the client knows the stream is cut
        record = wait_for_record(short, resp.getheader("X-Request-ID"))
        assert record["stream"] == "failed" and "DeadlineExceeded" in record["stream_error"], record
        assert record["frames_sent"] < int(resp.getheader("X-Frames"))
