"""Frame files (frames.py): a looped video avatar's frames written once and mapped read-only, on both avatar
stores (a directory; Redis with a local cache of frame files): the very frames of a decode, never on the heap,
built again where missing, removed with their avatar."""

from __future__ import annotations

import base64
import errno
import io
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import b64, idle_clip, loaded_app, make_settings, speech_s, wav

from wav2lip_core import frames
from wav2lip_core.compose import face_input
from wav2lip_core.errors import DiskFull
from wav2lip_core.schema import Options

CLIP_FRAMES = 12
BACKENDS = ("local", "redis")


@pytest.fixture(scope="module", params=BACKENDS)
def app(request: pytest.FixtureRequest, ir_blazeface: Path, tmp_path_factory: pytest.TempPathFactory):
    """The app in process on either store; AVATAR_STORE_MB 1: every avatar registered evicts the ones before it."""
    redis_url = request.getfixturevalue("redis_server").url if request.param == "redis" else ""
    avatars = tmp_path_factory.mktemp(f"avatars-{request.param}")
    settings = make_settings(ir_blazeface, avatar_dir=avatars, avatar_store_mb=1, max_image_pixels=320 * 240, redis_url=redis_url)
    return loaded_app(settings)


@pytest.fixture(scope="module")
def clips() -> list[bytes]:
    """Two different 320×240 clips (different motion): two avatars."""
    return [idle_clip(320, 240, frames=CLIP_FRAMES, period=CLIP_FRAMES + k)[0] for k in range(2)]


@pytest.fixture(scope="module")
def audio() -> bytes:
    return wav(speech_s(0.8))  # 20 frames: more than the clip's 12, so the loop turns


def decoded(data: bytes) -> np.ndarray:
    """Every frame of a clip as PyAV decodes it (320×240: already even, no scaling)."""
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="bgr24") for f in c.decode(video=0)])


def register(app, clip: bytes) -> dict:
    resp = app.test_client().post("/api/avatars", json={"video": b64(clip)})
    assert resp.status_code in (200, 201), resp.get_json()
    return resp.get_json()


def generate(app, body: dict) -> bytes:
    resp = app.test_client().post("/api/generate", json=body)
    assert resp.status_code == 200, resp.get_json()
    return base64.b64decode(resp.get_json()["video"])


def folder_of(app, ident: str) -> Path:
    return app.extensions["models"].registry.store.frames_dir(ident)


def test_stored_frames_are_the_decoded_frames_and_faces_the_generator_inputs(app, clips: list[bytes]) -> None:
    record = register(app, clips[0])
    folder = folder_of(app, record["avatar_id"])
    stored, faces = np.load(folder / frames.FRAMES), np.load(folder / frames.FACES)
    assert stored.shape == (CLIP_FRAMES, 240, 320, 3) and np.array_equal(stored, decoded(clips[0]))
    want = np.stack([face_input(f, tuple(b)) for f, b in zip(stored, record["face_boxes"], strict=True)])
    assert faces.dtype == np.float32 and np.array_equal(faces, want)


def test_frames_are_mapped_read_only_never_on_the_heap(app, clips: list[bytes]) -> None:
    """Registered: mapped from the avatar's files. Inline: mapped from a file already unlinked (gone with the Avatar)."""
    registry = app.extensions["models"].registry
    ident = register(app, clips[0])["avatar_id"]
    avatar, _ = registry._restore(ident)
    for array, name in ((avatar.frames, frames.FRAMES), (avatar.faces, frames.FACES)):
        assert isinstance(array, np.memmap) and not array.flags.writeable and Path(array.filename) == folder_of(app, ident) / name
    inline = registry.head.lipsync.prepare(clips[1], Options(), video=True)
    assert isinstance(inline.frames, np.memmap) and isinstance(inline.faces, np.memmap) and not inline.frames.flags.writeable
    assert not Path(inline.frames.filename).exists() and np.array_equal(inline.frames, decoded(clips[1]))


def test_a_registered_video_gives_the_inline_mp4(app, clips: list[bytes], audio: bytes) -> None:
    ident = register(app, clips[0])["avatar_id"]
    body = {"audio": b64(audio), "loop": "pingpong", "start_frame": 5}
    assert generate(app, body | {"avatar_id": ident}) == generate(app, body | {"video": b64(clips[0])})


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_frame_files_missing_or_cut_short_are_built_again_on_first_use(
    app, clips: list[bytes], audio: bytes, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An avatar registered before frame files existed (or on another machine with Redis), or a write cut short by a crash."""
    ident = register(app, clips[0])["avatar_id"]
    body = {"avatar_id": ident, "audio": b64(audio)}
    before = generate(app, body)
    folder = folder_of(app, ident)
    good = (folder / frames.FRAMES).read_bytes()
    if damage == "missing":
        (folder / frames.FRAMES).unlink()
        (folder / frames.FACES).unlink()
    else:
        (folder / frames.FRAMES).write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.INFO):
        assert generate(app, body) == before
    assert any("building them from its upload" in r.getMessage() for r in caplog.records)
    assert (folder / frames.FRAMES).read_bytes() == good and not list(folder.parent.glob(f"{frames.STAGE_PREFIX}*"))


def test_two_builders_at_once_leave_one_good_file(app, clips: list[bytes]) -> None:
    """Two requests find no frame files at the same time: both build them and rename them into place; one good copy stays."""
    registry = app.extensions["models"].registry
    ident = register(app, clips[0])["avatar_id"]
    folder = folder_of(app, ident)
    good = (folder / frames.FRAMES).read_bytes()
    for name in (frames.FRAMES, frames.FACES):
        (folder / name).unlink()
    start = threading.Barrier(2)

    def restore(_: int) -> np.ndarray:
        start.wait()
        return registry._restore(ident)[0].frames

    with ThreadPoolExecutor(2) as pool:
        assert all(np.array_equal(f, decoded(clips[0])) for f in pool.map(restore, range(2)))
    assert (folder / frames.FRAMES).read_bytes() == good and not list(folder.parent.glob(f"{frames.STAGE_PREFIX}*"))
    assert frames.open_mapped(folder, (CLIP_FRAMES, 240, 320)) is not None


def test_eviction_and_deletion_remove_frame_files(app, clips: list[bytes]) -> None:
    """AVATAR_STORE_MB 1: registering the second avatar evicts the first's frame files (on the directory store the
    avatar with them; Redis keeps the small upload, within its budget, and this machine's files are built again on
    use); DELETE removes an avatar's frame files too."""
    first, second = (register(app, clip)["avatar_id"] for clip in clips)
    assert not folder_of(app, first).exists() and (folder_of(app, second) / frames.FRAMES).is_file()
    in_redis = bool(app.extensions["settings"].redis_url)
    assert app.test_client().get(f"/api/avatars/{first}").status_code == (200 if in_redis else 404)
    assert app.test_client().delete(f"/api/avatars/{second}").status_code == 204
    assert not folder_of(app, second).exists()


def test_npy_appender_writes_the_count_last_and_a_short_file_is_refused(tmp_path: Path) -> None:
    items = [np.full((3, 5), k % 251, np.uint8) for k in range(1234)]  # a count of 4 digits: the header's length must not move
    with frames.NpyAppender(tmp_path / "x.npy", (3, 5), np.uint8) as out:
        for item in items:
            out.append(item)
    assert np.array_equal(np.load(tmp_path / "x.npy", mmap_mode="r"), np.stack(items))
    with pytest.raises(ValueError, match="expected uint8"):
        frames.NpyAppender(tmp_path / "y.npy", (3, 5), np.uint8).append(np.zeros((3, 4), np.uint8))
    assert frames.open_mapped(tmp_path) is None  # no faces.npy


def test_a_full_disk_is_a_typed_error_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(DiskFull) as full, frames.staged(tmp_path):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert full.value.status == 507 and "AVATAR_STORE_MB" in full.value.message and not list(tmp_path.iterdir())
