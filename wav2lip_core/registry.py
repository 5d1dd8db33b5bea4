"""Registered avatars: prepared once (decode, face boxes on every frame), stored, reused by id.

The id is a digest of the uploaded bytes and the options that shape the boxes, so registering the
same thing again finds the same avatar. A request with an `avatar_id` decodes the stored upload
again but never runs the detector: its frames and boxes are exactly those of the inline request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from typing import Any

from .api import TalkingHead
from .avatar import Avatar
from .errors import AvatarNotFound
from .payload import GenerateRequest
from .pipeline import Clock, Progress, Render
from .scheduler import Pace
from .schema import Options, Result
from .store import Avatars
from .video import Mp4Writer

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

    def __init__(self, head: TalkingHead, store: Avatars):
        self.head = head
        self.store = store

    def register(self, media: bytes, options: Options, video: bool | None = None) -> tuple[dict[str, Any], bool]:
        """Prepare and store; (record, True) when new, (the existing record, False) when already there.

        Only the options that shape the boxes count (pads, box; fps for an image): a registered video is
        looped from memory, so it is held to MAX_AVATAR_SECONDS whatever `loop` the request named."""
        options = Options(fps=options.fps, pads=options.pads, box=options.box)
        ident = avatar_id(media, options)
        try:
            return self.store.get(ident), False
        except AvatarNotFound:
            pass
        avatar = self.head.lipsync.prepare(media, options, video)
        record = describe(avatar, ident)
        created = self.store.put(ident, media, record)
        return (record if created else self.store.get(ident)), created

    def generate(self, req: GenerateRequest, deadline: float | None = None) -> Result:
        """A request's avatar is a registered id, a one-shot video, or an image (never told by the bytes alone)."""
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
        `pace` places its batches in the scheduler's line (a stream's or a job's)."""
        if req.avatar_id is not None:
            avatar, clock = self._restore(req.avatar_id)
            return self.head.lipsync.start(
                avatar, req.audio, req.options, deadline, progress, clock=clock, fragmented=fragmented, gone=gone, pace=pace
            )
        media, video = _media(req)
        return self.head.lipsync.start(
            media, req.audio, req.options, deadline, progress, video, fragmented=fragmented, gone=gone, pace=pace
        )

    def idle(self, ident: str) -> bytes:
        """The avatar's idle loop as an MP4 without sound: one period of the ping-pong sequence, so a page
        that loops it shows loop position round(currentTime × fps) mod period (made once, then kept)."""
        cached = self.store.extra(ident, IDLE_FILE)
        if cached is not None:
            return cached
        record = self.store.get(ident)
        boxes = [tuple(b) for b in record["face_boxes"]]
        avatar = self.head.lipsync.restore(self.store.media(ident), record["kind"], boxes, record["fps"])  # type: ignore[arg-type]
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
        """Lip-sync a registered avatar (by id or alias): the stored upload decoded again, its stored boxes, no detection."""
        avatar, clock = self._restore(ident)
        return self.head.lipsync.start(avatar, audio, options, deadline, clock=clock).complete()

    def _restore(self, ident: str) -> tuple[Avatar, Clock]:
        """A registered avatar, ready to render, and the clock that timed its decoding."""
        ident = self.store.resolve(ident)  # once: the record and the media are then of the same avatar
        record = self.store.get(ident)
        clock = Clock()
        boxes = [tuple(b) for b in record["face_boxes"]]
        avatar = self.head.lipsync.restore(self.store.media(ident), record["kind"], boxes, record["fps"], clock)  # type: ignore[arg-type]
        return avatar, clock


def _media(req: GenerateRequest) -> tuple[bytes, bool]:
    """An inline avatar's bytes and whether they are a video."""
    return (req.video, True) if req.video is not None else (req.image, False)  # type: ignore[return-value]
