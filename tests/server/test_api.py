"""The HTTP contract of `POST /api/generate` and the probes, through Flask's test client (fast)."""

from __future__ import annotations

import base64
import io
import math
import re
import time
from pathlib import Path

import av
import pytest
import soundfile as sf
from helpers import ASSETS, loaded_app, make_settings

API_KEY = "test-key-0123"
ORIGIN = "http://localhost:8123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CONTRACT_KEYS = {
    "video",
    "mime_type",
    "duration_s",
    "fps",
    "frames",
    "width",
    "height",
    "face_box",
    "end_frame",
    "timings_ms",
    "request_id",
}


@pytest.fixture(scope="module")
def client(ir_blazeface: Path):
    """An app with an API key and one allowed CORS origin; every API call below sends the key."""
    return loaded_app(make_settings(ir_blazeface, batch_size=4, api_key=API_KEY, cors_origins=(ORIGIN,))).test_client()


@pytest.fixture(scope="module")
def image() -> bytes:
    return (ASSETS / "astronaut.jpg").read_bytes()


@pytest.fixture(scope="module")
def audio() -> bytes:
    """0.3 s of test_assets/speech.wav as WAV: 8 frames at 25 fps."""
    samples, rate = sf.read(ASSETS / "speech.wav", dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, samples[: int(0.3 * rate)], rate, format="WAV")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def generate(client, body: dict, **headers: str):
    return client.post("/api/generate", json=body, headers=AUTH | headers)


def count_frames(mp4: bytes) -> tuple[int, int, int]:
    """(frames, width, height) of an MP4, decoded with PyAV."""
    with av.open(io.BytesIO(mp4)) as c:
        frames = list(c.decode(video=0))
    return len(frames), frames[0].width, frames[0].height


def test_json_response_shape_and_types(client, image: bytes, audio: bytes) -> None:
    resp = generate(client, {"image": b64(image), "audio": b64(audio), "fps": 25})
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    out = resp.get_json()
    assert set(out) == CONTRACT_KEYS
    assert out["mime_type"] == "video/mp4" and isinstance(out["video"], str)
    assert isinstance(out["duration_s"], float) and abs(out["duration_s"] - 0.3) < 1e-3
    assert out["fps"] == 25 and isinstance(out["frames"], int) and out["frames"] == math.ceil(0.3 * 25)
    assert (out["width"], out["height"]) == (512, 512)
    x1, y1, x2, y2 = out["face_box"]
    assert all(isinstance(v, int) for v in out["face_box"]) and 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512
    assert out["timings_ms"] and all(isinstance(k, str) and isinstance(v, int | float) and v >= 0 for k, v in out["timings_ms"].items())
    assert out["request_id"] == resp.headers["X-Request-ID"]
    mp4 = base64.b64decode(out["video"], validate=True)
    assert mp4[4:8] == b"ftyp" and count_frames(mp4) == (out["frames"], 512, 512)


def test_raw_mp4_with_accept(client, image: bytes, audio: bytes) -> None:
    resp = generate(client, {"image": b64(image), "audio": b64(audio), "fps": 10}, Accept="video/mp4")
    assert resp.status_code == 200 and resp.mimetype == "video/mp4"
    assert resp.data[4:8] == b"ftyp"
    assert count_frames(resp.data) == (int(resp.headers["X-Frames"]), 512, 512) == (3, 512, 512)
    assert resp.headers["X-Request-ID"]


@pytest.mark.parametrize("path", ["/api/generate", "/health", "/api/nothing"])
def test_request_id_is_echoed_on_every_response(client, path: str) -> None:
    resp = client.post(path, json={}, headers=AUTH | {"X-Request-ID": "client-42.a:b_c"})
    assert resp.headers["X-Request-ID"] == "client-42.a:b_c"


def test_request_id_in_json_and_a_fresh_one_when_absent_or_unsafe(client, image: bytes, audio: bytes) -> None:
    out = generate(client, {"image": b64(image), "audio": b64(audio)}, **{"X-Request-ID": "job-7"}).get_json()
    assert out["request_id"] == "job-7"
    for sent in (None, "has spaces", "x" * 200, "<script>"):
        headers = AUTH | ({"X-Request-ID": sent} if sent else {})
        rid = client.post("/api/generate", json={}, headers=headers).headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", rid), rid  # uuid4().hex, never the unsafe value


def test_cors_preflight_allowed_origin_only(client) -> None:
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type, authorization"}
    ok = client.options("/api/generate", headers=preflight)
    assert ok.status_code in (200, 204)
    assert ok.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in ok.headers["Access-Control-Allow-Methods"]
    assert {"content-type", "authorization"} <= {h.strip().lower() for h in ok.headers["Access-Control-Allow-Headers"].split(",")}
    other = client.options("/api/generate", headers=preflight | {"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers and "Access-Control-Allow-Methods" not in other.headers
    err = client.post("/api/generate", json={}, headers=AUTH | {"Origin": ORIGIN})  # actual responses too, errors included
    assert err.headers["Access-Control-Allow-Origin"] == ORIGIN and "X-Request-ID" in err.headers["Access-Control-Expose-Headers"]


def test_api_key_required_but_probes_open(client, image: bytes, audio: bytes) -> None:
    body = {"image": b64(image), "audio": b64(audio)}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}, {"Authorization": f"bearer {API_KEY}x"}):
        resp = client.post("/api/generate", json=body, headers=headers)
        assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "unauthorized", headers
    for path in ("/health", "/readyz", "/livez", "/metrics"):
        assert client.get(path).status_code == 200, path
    assert generate(client, body).status_code == 200


def test_no_api_key_configured_means_no_401(tmp_path: Path) -> None:
    from lipsync_server.app import create_app

    app = create_app(make_settings(tmp_path / "no_models"))  # no IR: the route answers 503, not 401
    models = app.extensions["models"]
    models.start_loading()
    t0 = time.monotonic()
    while models.error is None and time.monotonic() - t0 < 10:
        time.sleep(0.01)
    resp = app.test_client().post("/api/generate", json={})
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "models_missing"


def test_probes(client) -> None:
    health = client.get("/health").get_json()
    assert health["status"] == "ok" and health["detector"] == "blazeface" and health["batch_size"] == 4
    assert client.get("/readyz").get_json()["status"] == "ok"
    assert client.get("/livez").get_json()["status"] == "alive"
    metrics = client.get("/metrics")
    assert metrics.mimetype == "text/plain" and b"lipsync_requests_total" in metrics.data


VARIANTS = ["standard", "data_url", "no_padding", "line_breaks", "url_safe", "wrong_declared_type", "data_url_spaces"]


def encode_variant(data: bytes, declared: str, variant: str) -> str:
    std = b64(data)
    return {
        "standard": std,
        "data_url": f"data:{declared};base64,{std}",
        "no_padding": std.rstrip("="),
        "line_breaks": "\n".join(std[i : i + 76] for i in range(0, len(std), 76)) + "\r\n",  # MIME style
        "url_safe": std.translate(str.maketrans("+/", "-_")).rstrip("="),
        "wrong_declared_type": f"data:application/pdf;base64,{std}",
        "data_url_spaces": f"data:{declared};base64, " + " ".join(std[i : i + 64] for i in range(0, len(std), 64)),
    }[variant]


@pytest.mark.parametrize("variant", VARIANTS)
def test_base64_variants_are_accepted(client, image: bytes, audio: bytes, variant: str) -> None:
    both = b64(image) + b64(audio)
    assert "+" in both and "/" in both and b64(audio).endswith("="), "the assets must exercise the URL-safe alphabet and padding"
    body = {"image": encode_variant(image, "image/jpeg", variant), "audio": encode_variant(audio, "audio/wav", variant), "fps": 10}
    resp = generate(client, body)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["frames"] == 3


def test_unknown_fields_are_ignored(client, image: bytes, audio: bytes) -> None:
    body = {"image": b64(image), "audio": b64(audio), "fps": 10, "client": "app/1.2", "metadata": {"a": [1, None]}, "seed": 5}
    resp = generate(client, body)
    assert resp.status_code == 200 and resp.get_json()["frames"] == 3
