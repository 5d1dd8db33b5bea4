"""Registered avatars, video avatars over HTTP, loop positions and multipart bodies (in-process Flask)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import SMALL_BOX, assert_error, b64, decode_mp4, idle_clip, loaded_app, make_settings, psnr, small_face, speech_s, wav

from lipsync_stores.store import AvatarStore
from wav2lip_core.avatar import smooth_boxes

CLIP_FRAMES = 20


@pytest.fixture(scope="module")
def client(ir_blazeface: Path, tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("avatars")
    settings = make_settings(ir_blazeface, batch_size=4, avatar_dir=store, max_avatar_seconds=2.0, max_image_pixels=320 * 240)
    return loaded_app(settings).test_client()


def empty_video() -> bytes:
    """A Matroska file with a video track and not one frame: a one-frame file cut before its first cluster."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as c:
        stream = c.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        c.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")))
        c.mux(stream.encode(None))
    data = buf.getvalue()
    return data[: data.index(b"\x1f\x43\xb6\x75")]  # the Cluster element id: frames start there


@pytest.fixture(scope="module")
def clip() -> tuple[bytes, list[tuple[float, float]]]:
    return idle_clip(320, 240, frames=CLIP_FRAMES)


@pytest.fixture(scope="module")
def audio() -> bytes:
    return wav(speech_s(1.0))  # 25 frames at 25 fps


def post(client, path: str, body: dict, **headers: str):
    return client.post(path, json=body, headers=headers)


def mp4(resp) -> bytes:
    assert resp.status_code == 200, resp.get_json()
    return base64.b64decode(resp.get_json()["video"])


def test_image_registered_once_then_used_by_id(client, audio: bytes) -> None:
    first = post(client, "/api/avatars", {"image": b64(small_face())})
    assert first.status_code == 201, first.get_json()
    record = first.get_json()
    assert record["kind"] == "image" and record["frames"] == 1 and len(record["face_boxes"]) == 1
    again = post(client, "/api/avatars", {"image": b64(small_face())})
    assert again.status_code == 200 and again.get_json()["avatar_id"] == record["avatar_id"]
    by_id = post(client, "/api/generate", {"avatar_id": record["avatar_id"], "audio": b64(audio)})
    inline = post(client, "/api/generate", {"image": b64(small_face()), "audio": b64(audio)})
    assert "detect" not in by_id.get_json()["timings_ms"] and "detect" in inline.get_json()["timings_ms"]
    assert by_id.get_json()["face_box"] == inline.get_json()["face_box"] == record["face_boxes"][0]
    ours, theirs = decode_mp4(mp4(by_id)).frames, decode_mp4(mp4(inline)).frames
    assert len(ours) == 25 and all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_other_options_give_another_id(client) -> None:
    plain = post(client, "/api/avatars", {"image": b64(small_face())}).get_json()["avatar_id"]
    boxed = post(client, "/api/avatars", {"image": b64(small_face()), "box": SMALL_BOX}).get_json()
    assert boxed["avatar_id"] != plain and boxed["face_boxes"] == [SMALL_BOX]


def test_video_avatar_boxes_follow_the_head(client, clip) -> None:
    data, centres = clip
    resp = post(client, "/api/avatars", {"video": b64(data)})
    assert resp.status_code in (200, 201), resp.get_json()
    record = resp.get_json()
    assert (record["kind"], record["frames"], record["width"], record["height"]) == ("video", CLIP_FRAMES, 320, 240)
    assert record["fps"] == 25 and abs(record["duration_s"] - CLIP_FRAMES / 25) < 1e-6
    xs = np.array([(b[0] + b[2]) / 2 for b in record["face_boxes"]])
    # inference.py smooths each box with the next 4: the true centre, smoothed the same way
    truth = np.array([b[0] for b in smooth_boxes([(round(x), round(y), round(x), round(y)) for x, y in centres])])
    print(f"box centre vs smoothed truth: corr {np.corrcoef(xs, truth)[0, 1]:.3f}, mean |dx| {np.abs(xs - truth).mean():.1f} px")
    assert np.corrcoef(xs, truth)[0, 1] > 0.95 and np.abs(xs - truth).mean() < 6
    media = client.get(f"/api/avatars/{record['avatar_id']}/media")
    assert media.status_code == 200 and media.mimetype == "video/mp4" and media.data == data and media.headers["ETag"]


def test_pingpong_clips_chain_at_end_frame(client, clip, audio: bytes) -> None:
    ident = post(client, "/api/avatars", {"video": b64(clip[0])}).get_json()["avatar_id"]
    one = post(client, "/api/generate", {"avatar_id": ident, "audio": b64(audio), "start_frame": 5}).get_json()
    period = 2 * CLIP_FRAMES - 2
    assert one["frames"] == 25 and one["end_frame"] == (5 + 25) % period
    two = post(client, "/api/generate", {"avatar_id": ident, "audio": b64(audio), "start_frame": one["end_frame"]}).get_json()
    assert two["end_frame"] == (5 + 50) % period
    whole = post(client, "/api/generate", {"avatar_id": ident, "audio": b64(wav(speech_s(2.0))), "start_frame": 5}).get_json()
    # outside the mouth box, clip 1 then clip 2 show exactly the frames one long clip shows
    frames = decode_mp4(base64.b64decode(one["video"])).frames + decode_mp4(base64.b64decode(two["video"])).frames
    long = decode_mp4(base64.b64decode(whole["video"])).frames
    top = slice(0, 40)  # above the face: only the background and the moving head's top
    assert all(np.abs(a[top].astype(int) - b[top].astype(int)).mean() < 2 for a, b in zip(frames, long, strict=True))


def test_one_shot_video_equals_registered(client, clip, audio: bytes) -> None:
    ident = post(client, "/api/avatars", {"video": b64(clip[0])}).get_json()["avatar_id"]
    body = {"audio": b64(audio), "loop": "none", "start_frame": 3}
    by_id = post(client, "/api/generate", body | {"avatar_id": ident}).get_json()
    inline = post(client, "/api/generate", body | {"video": b64(clip[0])}).get_json()
    assert by_id["video"] == inline["video"] and by_id["end_frame"] == inline["end_frame"] == CLIP_FRAMES - 1


def test_multipart_and_json_give_identical_mp4(client, audio: bytes) -> None:
    form = {"image": (io.BytesIO(small_face()), "face.png"), "audio": (io.BytesIO(audio), "speech.wav"), "fps": "20",
            "pads": "0,15,0,0", "paste": "feather"}  # fmt: skip
    multipart = client.post("/api/generate", data=form, content_type="multipart/form-data", headers={"Accept": "video/mp4"})
    body = {"image": b64(small_face()), "audio": b64(audio), "fps": 20, "pads": [0, 15, 0, 0], "paste": "feather"}
    as_json = post(client, "/api/generate", body, Accept="video/mp4")
    assert multipart.status_code == as_json.status_code == 200, multipart.get_data()[:300]
    assert multipart.data == as_json.data and multipart.headers["X-Frames"] == "20"
    registered = client.post("/api/avatars", data={"image": (io.BytesIO(small_face()), "f.png")}, content_type="multipart/form-data")
    assert registered.status_code in (200, 201) and registered.get_json()["kind"] == "image"


def test_list_get_delete(client) -> None:
    ident = post(client, "/api/avatars", {"image": b64(small_face()), "pads": [0, 5, 0, 0]}).get_json()["avatar_id"]
    assert ident in [a["avatar_id"] for a in client.get("/api/avatars").get_json()["avatars"]]
    assert client.get(f"/api/avatars/{ident}").get_json()["avatar_id"] == ident
    assert client.delete(f"/api/avatars/{ident}").status_code == 204
    for resp in (client.get(f"/api/avatars/{ident}"), client.delete(f"/api/avatars/{ident}"), client.get(f"/api/avatars/{ident}/media")):
        assert_error(resp, {404}, "avatar_not_found")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (lambda c, a: {"avatar_id": "0123456789abcdef01234567", "audio": b64(a)}, 404, "avatar_not_found"),
        (lambda c, a: {"avatar_id": "../etc", "audio": b64(a)}, 400, "invalid_field"),
        (lambda c, a: {"image": b64(small_face()), "video": b64(c), "audio": b64(a)}, 400, "invalid_field"),
        (lambda c, a: {"audio": b64(a)}, 400, "missing_field"),
        (lambda c, a: {"video": b64(b"\x00\x00\x00\x18ftypmp42" + b"x" * 200), "audio": b64(a)}, 415, "bad_video"),
        (lambda c, a: {"video": b64(idle_clip(64, 64, frames=60)[0]), "audio": b64(a)}, 422, "video_too_long"),
        (lambda c, a: {"video": b64(idle_clip(400, 300, frames=3)[0]), "audio": b64(a)}, 422, "image_too_large"),
        (lambda c, a: {"video": b64(idle_clip(400, 300, frames=3)[0]), "audio": b64(a), "loop": "none"}, 422, "image_too_large"),
        (lambda c, a: {"video": b64(empty_video()), "audio": b64(a)}, 415, "bad_video"),
        (lambda c, a: {"video": b64(empty_video()), "audio": b64(a), "loop": "none"}, 415, "bad_video"),
        (lambda c, a: {"video": b64(c), "audio": b64(a), "loop": "bounce"}, 400, "invalid_loop"),
        (lambda c, a: {"video": b64(c), "audio": b64(a), "start_frame": -2}, 400, "invalid_start_frame"),
    ],
    ids=[
        "unknown_id",
        "unsafe_id",
        "two_avatars",
        "no_avatar",
        "undecodable_video",
        "too_long",
        "too_large",
        "too_large_streamed",
        "no_frames",
        "no_frames_streamed",
        "bad_loop",
        "bad_start",
    ],
)
def test_refusals_are_typed(client, clip, audio: bytes, body, status: int, code: str) -> None:
    err = assert_error(post(client, "/api/generate", body(clip[0], audio)), {status}, code)
    assert err["message"]


def test_a_video_with_no_face_anywhere_is_no_face(client) -> None:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        stream = c.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(5):
            c.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i, np.uint8), format="rgb24")))
        c.mux(stream.encode(None))
    err = assert_error(post(client, "/api/avatars", {"video": b64(buf.getvalue())}), {422}, "no_face")
    assert "box" in err["message"]


def test_directory_store_writes_whole_folders_and_leaves_no_temporary_ones(tmp_path: Path) -> None:
    """What only the directory store has (both stores' behaviour: tests/stores/test_stores.py): folders renamed into place."""
    store = AvatarStore(tmp_path / "avatars", max_bytes=3100)  # three avatars of ~1020 bytes fit
    for k in range(4):  # the fourth evicts the first
        store.put(f"abc{k}", b"x" * 1000, {"avatar_id": f"abc{k}"})
    store.delete("abc3")
    assert sorted(p.name for p in (tmp_path / "avatars").iterdir()) == ["abc1", "abc2"]  # no .new-* or .del-* left
    assert json.loads((tmp_path / "avatars" / "abc1" / "meta.json").read_text()) == {"avatar_id": "abc1"}


def test_idle_loop_is_one_pingpong_period(client, clip) -> None:
    ident = post(client, "/api/avatars", {"video": b64(clip[0])}).get_json()["avatar_id"]
    resp = client.get(f"/api/avatars/{ident}/idle.mp4")
    assert resp.status_code == 200 and resp.mimetype == "video/mp4" and resp.headers["ETag"]
    idle, source = decode_mp4(resp.data), decode_mp4(clip[0])
    period = 2 * CLIP_FRAMES - 2
    assert len(idle.frames) == period and idle.audio_codec is None
    for p in (0, CLIP_FRAMES - 1, CLIP_FRAMES, period - 1):  # position p shows frame p, then 2N - 2 - p
        want = source.frames[p if p < CLIP_FRAMES else period - p]
        assert psnr(idle.frames[p], want) > 35, p
    again = client.get(f"/api/avatars/{ident}/idle.mp4", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status_code == 304


def test_dubbing_video_is_streamed(client, audio: bytes) -> None:
    """loop none: a video longer than MAX_AVATAR_SECONDS (2 s here) runs straight through, streamed."""
    data, _ = idle_clip(160, 120, frames=75)  # 3 s: too long to loop from memory here, fine to stream
    body = {"video": b64(data), "audio": b64(wav(speech_s(2.0))), "loop": "none"}
    resp = post(client, "/api/generate", body)
    out = decode_mp4(mp4(resp))
    source = decode_mp4(data)
    assert len(out.frames) == 50 and resp.get_json()["end_frame"] == 50 and resp.get_json()["fps"] == 25
    assert abs(out.video_duration - out.audio_duration) < 1 / 25
    top = slice(0, 20)  # above the face: the video's own pixels, frame for frame
    assert all(psnr(o[top], s[top]) > 30 for o, s in zip(out.frames, source.frames, strict=False))
    looped = post(client, "/api/generate", body | {"loop": "pingpong"})
    assert_error(looped, {422}, "video_too_long")  # a looped video is held in memory: MAX_AVATAR_SECONDS
