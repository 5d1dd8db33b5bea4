"""Registered avatars: prepared once (decode, face boxes on every frame), stored, reused by id.

The id is a digest of the uploaded bytes and the options that shape the boxes, so registering the
same thing again finds the same avatar. A registered video keeps its decoded frames and face inputs
as frame files (wav2lip_core/frames.py), written once and mapped by every request and worker: its answer starts
without decoding, and never runs the detector; its frames and boxes are exactly those of the inline
request. Frame files missing on this machine (an avatar registered before they existed, or on
another replica) are built from the upload on first use.

Every piece of work is admitted by this worker's memory budget (memory.py) first, on an estimate
made from header facts: nothing is decoded for a request that is refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
from collections.abc import Callable
from typing import Any

from lipsync_stores.store import Avatars
from wav2lip_core import avatar as V
from wav2lip_core import frames
from wav2lip_core.api import TalkingHead
from wav2lip_core.audio import probe_audio
from wav2lip_core.avatar import Avatar
from wav2lip_core.compose import output_size
from wav2lip_core.errors import AvatarNotFound
from wav2lip_core.image import image_size
from wav2lip_core.pipeline import Clock, Progress, Render
from wav2lip_core.scheduler import Pace
from wav2lip_core.schema import Options, Result
from wav2lip_core.video import Mp4Writer

from .memory import Budget, Work
from .payload import GenerateRequest

log = logging.getLogger(__name__)

ID_BYTES = 12  # 24 hex digits
IDLE_FILE = "idle.mp4"


def avatar_id(media: bytes, options: Options) -> str:
    """Same media and same box-shaping options → same id."""
    digest = hashlib.blake2b(media, digest_size=ID_BYTES)
    digest.update(json.dumps([options.pads, options.box, options.fps]).encode())
    return digest.hexdigest()


def describe(avatar: Avatar, ident: str) -> dict[str, Any]:
    """The registry's public record of an avatar (the `POST /api/avatars` answer)."""
    n = len(avatar.frames)
    return {
        "avatar_id": ident, "kind": avatar.kind, "width": avatar.width, "height": avatar.height, "frames": n,
        "fps": avatar.fps, "duration_s": round(n / avatar.fps, 3) if avatar.kind == "video" else None,
        "face_boxes": [list(b) for b in avatar.boxes], "face_source": avatar.face_source,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


class Registry:
    """Register, look up and render registered avatars."""

    def __init__(self, head: TalkingHead, store: Avatars, budget: Budget):
        self.head = head
        self.store = store
        self.budget = budget

    def register(self, media: bytes, options: Options, video: bool | None = None) -> tuple[dict[str, Any], bool]:
        """Prepare and store; (record, True) when new, (the existing record, False) when already there.

        Only the options that shape the boxes count (pads, box; fps for an image): a registered video is
        looped, so it is held to MAX_AVATAR_SECONDS whatever `loop` the request named."""
        options = Options(fps=options.fps, pads=options.pads, box=options.box)
        ident = avatar_id(media, options)
        try:
            return self.store.get(ident), False
        except AvatarNotFound:
            pass
        video = V.is_video(media) if video is None else video
        with self.budget.reserve(Work(*self._header(media, video)[0], decoders=int(video), renders=False), "registering this avatar"):
            if not video:
                record = describe(self.head.lipsync.prepare(media, options, False), ident)
                created = self.store.put(ident, media, record)
            else:  # decoded frame by frame into frame files, kept with it
                with frames.staged(self.store.frames_root) as folder:
                    record = describe(self.head.lipsync.build(media, options, folder), ident)
                    created = self.store.put(ident, media, record, frames=folder)
        return (record if created else self.store.get(ident)), created

    def generate(self, req: GenerateRequest, deadline: float | None = None) -> Result:
        """A request's avatar is a registered id, a one-shot video, or an image (never told by the bytes alone)."""
        with self.budget.reserve(self.work(req, whole=True), "this answer"):
            if req.avatar_id is not None:
                return self.render(req.avatar_id, req.audio, req.options, deadline)
            media, video = _media(req)
            return self.head.render(req.audio, media, req.options, deadline=deadline, video=video)

    def start(
        self,
        req: GenerateRequest,
        deadline: float | None = None,
        gone: Callable[[], bool] | None = None,
        progress: Progress | None = None,
        fragmented: bool = True,
        pace: Pace | None = None,
    ) -> Render:
        """A request's clip, made batch by batch: fragmented for a streamed reply, whole for a job; decoding,
        detection and the audio are done before this returns. `gone()` True stops it (the client left, the job was cancelled);
        `pace` places its batches in the scheduler's line (a stream's or a job's). Its memory is held until it is closed."""
        # a job waits for memory as it waits for the cores (until cancelled or past its deadline); a request is answered at once
        wait = self.head.lipsync.checker(deadline, gone) if pace is not None and pace.kind == "job" else None
        reservation = self.budget.reserve(self.work(req, whole=not fragmented), "this answer", wait)
        try:
            if req.avatar_id is not None:
                avatar, clock = self._restore(req.avatar_id)
                render = self.head.lipsync.start(
                    avatar, req.audio, req.options, deadline, progress, clock=clock, fragmented=fragmented, gone=gone, pace=pace
                )
            else:
                media, video = _media(req)
                render = self.head.lipsync.start(
                    media, req.audio, req.options, deadline, progress, video, fragmented=fragmented, gone=gone, pace=pace
                )
        except BaseException:
            reservation.release()
            raise
        render.on_close(reservation.release)
        return render

    def work(self, req: GenerateRequest, whole: bool) -> Work:
        """What a request will hold, from header facts (the avatar's size and rate, the audio's length): nothing decoded."""
        sound = probe_audio(req.audio, self.head.settings.max_audio_seconds)
        if req.avatar_id is not None:
            record = self.store.get(self.store.resolve(req.avatar_id))
            size, fps, video = (record["width"], record["height"]), record["fps"], record["kind"] == "video"
        else:
            media, video = _media(req)
            size, fps = self._header(media, video)
        # a looped clip's frames are mapped (decoded before the render, never during); a dub decodes twice as it renders
        decoders = 2 if req.avatar_id is None and video and req.options.loop == "none" else 0
        compiles = video and not self.head.runtime.clip_generator_ready()
        frames_out, values = math.ceil(sound.seconds * req.options.fps_or(fps)), round(sound.seconds * sound.sample_rate * sound.channels)
        return Work(*size, frames_out, values, decoders, whole, compiles=compiles)

    def _header(self, media: bytes, video: bool) -> tuple[tuple[int, int], float]:
        """An upload's rendered frame size and its frame rate, from its header."""
        s = self.head.settings
        fps, (width, height) = V.video_header(media, s.max_image_pixels) if video else (V.STILL_FPS, image_size(media, s.max_image_pixels))
        return output_size(width, height, s.max_output_side), fps

    def idle(self, ident: str) -> bytes:
        """The avatar's idle loop as an MP4 without sound: one period of the ping-pong sequence, so a page
        that loops it shows loop position round(currentTime × fps) mod period (made once, then kept)."""
        cached = self.store.extra(ident, IDLE_FILE)
        if cached is not None:
            return cached
        record = self.store.get(ident)
        period = max(1, 2 * record["frames"] - 2)
        with self.budget.reserve(Work(record["width"], record["height"], period, whole=True), "the idle loop"):
            avatar, _ = self._restore(ident)
            s = self.head.settings
            writer = Mp4Writer(avatar.width, avatar.height, avatar.fps, s.x264_preset, s.x264_crf, s.x264_params)
            try:
                for k in avatar.sequence(avatar.period("pingpong"), "pingpong"):
                    writer.write(avatar.frames[int(k)])
                data = writer.finish()
            except BaseException:
                writer.abort()
                raise
        self.store.put_extra(ident, IDLE_FILE, data)
        return data

    def render(self, ident: str, audio: bytes, options: Options, deadline: float | None = None) -> Result:
        """Lip-sync a registered avatar (by id or alias): its mapped frame files (an image: decoded again), its stored boxes."""
        avatar, clock = self._restore(ident)
        return self.head.lipsync.start(avatar, audio, options, deadline, clock=clock).complete()

    def _restore(self, ident: str) -> tuple[Avatar, Clock]:
        """A registered avatar, ready to render, and the clock that timed its restoring ("decode")."""
        ident = self.store.resolve(ident)  # once: the record and the media are then of the same avatar
        record = self.store.get(ident)
        clock = Clock()
        boxes = [tuple(b) for b in record["face_boxes"]]
        if record["kind"] == "video":
            avatar = self._clip(ident, record, boxes)  # type: ignore[arg-type]
        else:
            avatar = self.head.lipsync.restore_image(self.store.media(ident), boxes[0], record["fps"])  # type: ignore[arg-type]
        clock.lap("decode")
        return avatar, clock

    def _clip(self, ident: str, record: dict[str, Any], boxes: list[V.Box]) -> Avatar:
        """A registered video: its frame files mapped; built from the upload first when this machine has none."""
        mapped = frames.open_mapped(self.store.frames_dir(ident), (record["frames"], record["height"], record["width"]))
        if mapped is not None:
            return V.clip_avatar(mapped, boxes, record["fps"], "registered")
        log.info("avatar %s has no frame files here: building them from its upload", ident)
        with frames.staged(self.store.frames_root) as folder:
            avatar = self.head.lipsync.rebuild(self.store.media(ident), boxes, record["fps"], folder)
            self.store.add_frames(ident, folder)
        return avatar


def _media(req: GenerateRequest) -> tuple[bytes, bool]:
    """An inline avatar's bytes and whether they are a video."""
    return (req.video, True) if req.video is not None else (req.image, False)  # type: ignore[return-value]
