"""The drop-in routes (lipsync_server/compat.py): in process, each against the native call it maps to;
then through the real gunicorn, from a Node client written as the seed services' clients are (axios +
form-data, tests/node) and from a browser `FormData` in headless Chromium.

node, npm and chromium are required, not optional: when one is missing these tests fail.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit

import av
import numpy as np
import pytest
from helpers import Decoded, assert_error, b64, decode_mp4, encode_audio, idle_clip, loaded_app, make_settings, small_face, speech_s, wav

from harness.gunicorn import Gunicorn, free_port
from lipsync_stores.store import ALIAS_SUFFIX, ALIASES, AvatarStore

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip
BROWSER_BUDGET_MS = 30_000  # virtual ms the page may run after loading (timers only: network waits do not count)
BROWSER_TIMEOUT_S = 120  # wall clock for the whole browser run
SPEECH = 1.0  # seconds of audio in every request
CLIP_FRAMES, CLIP_FPS = 20, 25
DUB_FPS = 20  # /sync's clip has its own rate, not the default 25: the output must keep it


def multipart(client, path: str, headers: dict[str, str] | None = None, **fields: bytes | str):
    """POST `fields` as multipart/form-data: bytes as file parts, str as text fields."""
    data = {k: (io.BytesIO(v), k) if isinstance(v, bytes) else v for k, v in fields.items()}
    return client.post(path, data=data, content_type="multipart/form-data", headers=headers or {})


def video_answer(resp, fps: float, seconds: float = SPEECH) -> Decoded:
    """An MP4 answer with an X-Request-ID, ceil(seconds × fps) frames and an AAC track as long as the audio sent."""
    assert resp.status_code == 200, resp.get_data()[:300]
    assert resp.mimetype == "video/mp4" and resp.headers["X-Request-ID"]
    return checked_mp4(resp.data, fps, seconds)


def checked_mp4(data: bytes, fps: float, seconds: float = SPEECH) -> Decoded:
    out = decode_mp4(data)
    assert len(out.frames) == math.ceil(seconds * fps), len(out.frames)
    assert out.audio_codec == "aac" and abs(out.audio_duration - seconds) < 0.05, (out.audio_codec, out.audio_duration)
    return out


def with_sound(video: bytes, seconds: float) -> bytes:
    """The clip's own packets with a sound track of its own (a loud 1 kHz tone), remuxed without re-encoding."""
    t = np.arange(round(seconds * 16000), dtype=np.float32)[:, None] / 16000
    sound = encode_audio(0.8 * np.sin(2 * np.pi * 1000 * t), 16000, "ipod", "aac")
    buf = io.BytesIO()
    with av.open(io.BytesIO(video)) as vin, av.open(io.BytesIO(sound)) as ain, av.open(buf, "w", format="mp4") as out:
        pairs = [(src, out.add_stream_from_template(src)) for src in (vin.streams.video[0], ain.streams.audio[0])]  # before any mux
        for src, dst in pairs:
            for packet in src.container.demux(src):
                if packet.dts is not None:  # the flushing packet
                    packet.stream = dst
                    out.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(ir_blazeface: Path, tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("avatars")
    return loaded_app(make_settings(ir_blazeface, batch_size=4, avatar_dir=store, max_avatar_seconds=2.0)).test_client()


@pytest.fixture(scope="module")
def audio() -> bytes:
    return wav(speech_s(SPEECH))


@pytest.fixture(scope="module")
def clip() -> bytes:
    return idle_clip(320, 240, frames=CLIP_FRAMES, fps=CLIP_FPS)[0]


# ---------------------------------------------------------------- in process


def test_sync_dubs_the_video_at_its_own_rate_and_replaces_its_sound(client, audio: bytes) -> None:
    seconds = 1.2  # longer than the 1.0 s clip: the last frame holds
    speech = wav(speech_s(seconds))
    silent = idle_clip(320, 240, frames=DUB_FPS, fps=DUB_FPS)[0]
    dubbed = multipart(client, "/sync", video=with_sound(silent, 1.0), audio=speech, fps="30")  # fps: the video's, always
    out = video_answer(dubbed, DUB_FPS, seconds)
    assert (out.width, out.height) == (320, 240)
    assert dubbed.data == multipart(client, "/sync", video=silent, audio=speech).data  # its own sound: gone, not mixed in
    native = multipart(client, "/api/generate", {"Accept": "video/mp4"}, video=silent, audio=speech, loop="none")
    assert dubbed.data == native.data and dubbed.headers["X-End-Frame"] == str(DUB_FPS - 1)


def test_animation_tells_an_image_from_a_video_by_its_bytes(client, audio: bytes, clip: bytes) -> None:
    still = multipart(client, "/v1/animation", avatar=small_face(), audio=audio, fps="20")
    assert video_answer(still, 20).width == 192
    native = multipart(client, "/api/generate", {"Accept": "video/mp4"}, image=small_face(), audio=audio, fps="20")
    assert still.data == native.data
    moving = multipart(client, "/v1/animation", avatar=clip, audio=audio)
    assert video_answer(moving, CLIP_FPS).width == 320
    assert moving.data == multipart(client, "/api/generate", {"Accept": "video/mp4"}, video=clip, audio=audio).data


def test_cache_avatar_names_it_and_animation_with_cache_uses_the_name(client, audio: bytes, clip: bytes) -> None:
    name = "my-avatar_1.0"
    cached = multipart(client, "/cache-avatar", avatar=small_face(), avatar_id=name)
    assert cached.status_code == 200 and cached.get_json() == {"status": "cached", "avatar_id": name}
    native = multipart(client, "/api/avatars", image=small_face())
    assert native.status_code == 200  # registered as usual: the native call finds it already there
    ident = native.get_json()["avatar_id"]
    aliases = Path(client.application.extensions["settings"].avatar_dir) / ALIASES
    assert (aliases / f"{name}{ALIAS_SUFFIX}").read_text() == ident
    by_name = multipart(client, "/v1/animation-with-cache", avatar_id=name, audio=audio)
    assert video_answer(by_name, 25).width == 192
    assert by_name.data == multipart(client, "/api/generate", {"Accept": "video/mp4"}, avatar_id=ident, audio=audio).data
    assert client.get(f"/api/avatars/{name}").get_json()["avatar_id"] == ident  # the native API takes the name too
    assert client.post("/api/generate", json={"avatar_id": name, "audio": b64(audio)}).get_json()["frames"] == 25
    again = multipart(client, "/cache-avatar", avatar=clip, avatar_id=name)  # the same name, another avatar: repointed
    assert again.get_json() == {"status": "cached", "avatar_id": name}
    assert video_answer(multipart(client, "/v1/animation-with-cache", avatar_id=name, audio=audio), CLIP_FPS).width == 320
    assert client.get(f"/api/avatars/{name}").get_json()["kind"] == "video"
    assert [p.name for p in aliases.iterdir()] == [f"{name}{ALIAS_SUFFIX}"]  # no temporary file left


GARBAGE_VIDEO = b"\x00\x00\x00\x18ftypmp42" + b"x" * 200


@pytest.mark.parametrize(
    ("path", "fields", "status", "code"),
    [
        pytest.param("/sync", {"audio": "A"}, 400, "missing_field", id="sync_no_video"),
        pytest.param("/sync", {"video": "V"}, 400, "missing_field", id="sync_no_audio"),
        pytest.param("/v1/animation", {"audio": "A"}, 400, "missing_field", id="animation_no_avatar"),
        pytest.param("/v1/animation", {"avatar": "F", "audio": "A", "fps": "0"}, 400, "invalid_fps", id="animation_bad_fps"),
        pytest.param("/cache-avatar", {"avatar": "F"}, 400, "missing_field", id="cache_no_name"),
        pytest.param("/cache-avatar", {"avatar_id": "x"}, 400, "missing_field", id="cache_no_avatar"),
        pytest.param("/cache-avatar", {"avatar": "F", "avatar_id": "../etc"}, 400, "invalid_field", id="cache_path"),
        pytest.param("/cache-avatar", {"avatar": "F", "avatar_id": "a b"}, 400, "invalid_field", id="cache_space"),
        pytest.param("/cache-avatar", {"avatar": "F", "avatar_id": ".."}, 400, "invalid_field", id="cache_dotdot"),
        pytest.param("/cache-avatar", {"avatar": "F", "avatar_id": "x" * 129}, 400, "invalid_field", id="cache_long"),
        pytest.param("/v1/animation-with-cache", {"audio": "A"}, 400, "missing_field", id="with_cache_no_name"),
        pytest.param("/v1/animation-with-cache", {"avatar_id": "a/b", "audio": "A"}, 400, "invalid_field", id="with_cache_slash"),
        pytest.param(
            "/v1/animation-with-cache", {"avatar_id": "nobody-cached-this", "audio": "A"}, 404, "avatar_not_found", id="with_cache_unknown"
        ),
        pytest.param("/sync", {"video": GARBAGE_VIDEO, "audio": "A"}, 415, "bad_video", id="sync_undecodable"),
        pytest.param("/v1/animation", {"avatar": b"this is not an image", "audio": "A"}, 415, "bad_image", id="animation_undecodable"),
        pytest.param("/cache-avatar", {"avatar": GARBAGE_VIDEO, "avatar_id": "garbage"}, 415, "bad_video", id="cache_undecodable"),
        pytest.param("/v1/animation", {"avatar": "F", "audio": b"RIFF but not a wav file"}, 415, "bad_audio", id="animation_bad_audio"),
    ],
)
def test_refusals_are_typed(client, audio: bytes, path: str, fields: dict, status: int, code: str) -> None:
    media = {"A": audio, "V": idle_clip(64, 64, frames=5)[0], "F": small_face()}
    store = Path(client.application.extensions["settings"].avatar_dir)
    before = sorted(p.name for p in store.rglob("*"))
    err = assert_error(multipart(client, path, **{k: media.get(v, v) for k, v in fields.items()}), {status}, code)
    assert err["message"]
    assert sorted(p.name for p in store.rglob("*")) == before  # nothing registered, no alias written


def test_drop_in_routes_count_in_the_metrics(client) -> None:
    def refused() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith('lipsync_requests_total{status="400"}'))

    before = refused()
    assert_error(client.post("/sync", data={}, content_type="multipart/form-data"), {400}, "missing_field")
    assert_error(client.post("/sync", data="x", content_type="text/plain"), {415}, "unsupported_content_type")
    assert refused() == before + 1


def test_drop_in_routes_want_the_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lipsync_server.app import create_app

    app = create_app(make_settings(tmp_path / "no_models", api_key="K"))
    monkeypatch.setattr(app.extensions["models"], "_load", lambda: None)  # never ready: a request that passes the key gets 503
    for path in ("/sync", "/v1/animation", "/cache-avatar", "/v1/animation-with-cache"):
        assert_error(app.test_client().post(path, data={}), {401}, "unauthorized")
        passed = app.test_client().post(path, data={}, content_type="multipart/form-data", headers={"Authorization": "Bearer K"})
        assert_error(passed, {503}, "not_ready")


def test_aliases_are_files_replaced_atomically(tmp_path: Path) -> None:
    """What only the directory store has (both stores' aliases: tests/stores/test_stores.py): one file per alias, renamed into place."""
    store = AvatarStore(tmp_path / "avatars", max_bytes=10_000)
    store.put("abc1", b"x", {"avatar_id": "abc1"})
    store.put("abc2", b"y", {"avatar_id": "abc2"})
    names = ("meta.json", ".hidden", "A-b_c.d")  # names of store files or hidden ones: only ever an alias's file
    for name in names:
        store.alias(name, "abc1")
    store.alias("meta.json", "abc2")
    aliases = tmp_path / "avatars" / ALIASES
    assert sorted(p.name for p in aliases.iterdir()) == sorted(f"{n}{ALIAS_SUFFIX}" for n in names)  # no temporary file left
    assert (aliases / f"meta.json{ALIAS_SUFFIX}").read_text() == "abc2" and store.get("meta.json")["avatar_id"] == "abc2"


# ---------------------------------------------------------------- real server, real clients


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name!r} is not installed; the drop-in client tests need it (Debian: apt-get install {name})")
    return found


@pytest.fixture(scope="module")
def node_client(node_packages: Path) -> list[str]:
    """`node tests/node/drop_in_client.mjs`, with axios and form-data installed from the lockfile (conftest)."""
    return [_tool("node"), str(node_packages.parent / "drop_in_client.mjs")]


class Page:
    """A loopback origin serving a page and its media from memory (the origin the server's CORS_ORIGINS allows)."""

    def __init__(self, files: dict[str, tuple[str, bytes]]):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mime, body = files.get(urlsplit(self.path).path, ("text/plain", b""))
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", mime)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# The browser's side, as the seed services' web clients call them: fetch with a FormData of Blob parts.
# The result (status, headers, the MP4 in base64) replaces the page's text, which `--dump-dom` prints.
ANIMATION_PAGE = b"""<!doctype html><meta charset="utf-8"><title>drop-in FormData</title><body>pending</body><script>
(async () => {
  let report;
  try {
    const blob = async (path) => (await fetch(path)).blob();
    const form = new FormData();
    form.append("avatar", await blob("/face.png"), "face.png");
    form.append("audio", await blob("/speech.wav"), "speech.wav");
    form.append("fps", "20");
    const server = new URLSearchParams(location.search).get("server");
    const r = await fetch(server + "/v1/animation", { method: "POST", body: form });
    let bytes = "";
    for (const b of new Uint8Array(await r.arrayBuffer())) bytes += String.fromCharCode(b);
    report = { status: r.status, type: r.headers.get("Content-Type"), request_id: r.headers.get("X-Request-ID"), body: btoa(bytes) };
  } catch (e) {
    report = { error: String(e) };
  }
  document.body.textContent = "REPORT" + JSON.stringify(report) + "END";
})();
</script>"""


@pytest.fixture(scope="module")
def page(audio: bytes) -> Iterator[Page]:
    files = {"/": ("text/html", ANIMATION_PAGE), "/face.png": ("image/png", small_face()), "/speech.wav": ("audio/wav", audio)}
    origin = Page(files)
    yield origin
    origin.close()


@pytest.fixture(scope="module")
def drop_in_server(ir_blazeface: Path, page: Page, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gunicorn, Path]]:
    """The real gunicorn with its avatar store in a temporary folder and the page's origin allowed (CORS)."""
    tmp = tmp_path_factory.mktemp("drop_in")
    env = {"AVATAR_DIR": str(tmp / "avatars"), "CORS_ORIGINS": page.origin, "BATCH_SIZE": "4"}
    with Gunicorn(ir_blazeface, tmp / "gunicorn.log", env=env, ready_timeout_s=120) as server:
        yield server, tmp / "avatars"


def test_a_seed_style_node_client_gets_every_route(
    node_client: list[str], drop_in_server, audio: bytes, clip: bytes, tmp_path: Path
) -> None:
    server, avatars = drop_in_server
    media = {"face.png": small_face(), "clip.mp4": clip, "speech.wav": audio}
    for name, data in media.items():
        (tmp_path / name).write_bytes(data)
    args = [server.url, *(tmp_path / name for name in media), tmp_path]
    proc = subprocess.run([*node_client, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    for name, fps, width in (("sync", CLIP_FPS, 320), ("animation", 20, 192), ("cached", 25, 192)):
        assert results[name]["status"] == 200 and results[name]["type"] == "video/mp4" and results[name]["requestId"], results[name]
        assert checked_mp4((tmp_path / f"{name}.mp4").read_bytes(), fps).width == width, name
    assert results["cache"]["status"] == 200 and results["cache"]["json"] == {"status": "cached", "avatar_id": "seed-client.avatar_1"}
    assert (avatars / ALIASES / f"seed-client.avatar_1{ALIAS_SUFFIX}").is_file()
    unknown = results["unknown"]
    assert unknown["status"] == 404 and unknown["json"]["error"]["code"] == "avatar_not_found" and unknown["requestId"]


def test_a_browser_form_data_gets_v1_animation(drop_in_server, page: Page, tmp_path: Path) -> None:
    server, _ = drop_in_server
    url = f"{page.origin}/?server={quote(server.url)}"
    # --dump-dom prints the page once it is loaded and its virtual time budget spent; virtual time stands
    # still while a fetch is pending, so the budget is not spent before the render has answered.
    dump = ["--dump-dom", f"--virtual-time-budget={BROWSER_BUDGET_MS}"]
    cmd = [_tool("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *dump, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)
    found = re.search(r"REPORT(.*)END", html.unescape(proc.stdout), re.DOTALL)
    assert found, f"the page reported nothing; chromium said:\n{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}"
    report = json.loads(found.group(1))
    assert report.get("status") == 200 and report["type"] == "video/mp4", {k: str(v)[:300] for k, v in report.items()}
    assert report["request_id"], "X-Request-ID is exposed to the page by CORS"
    assert checked_mp4(base64.b64decode(report["body"]), 20).width == 192
