"""The data path, top to bottom: avatar → audio → mel → one render loop (generator → paste → MP4).

`LipSync` receives compiled parts (from `runtime.Runtime`) and only runs them; `run()` serves one
request and may be called from several threads. Still images and clips share the same loop,
deadline and progress: the avatar says, per output frame, which source frame, box and face input.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from . import audio as A
from . import avatar as V
from .compose import Paster
from .config import Settings
from .detect import FaceFinder
from .errors import DeadlineExceeded
from .generator import Generator
from .schema import Options, Result
from .stream import streamed
from .video import Mp4Writer

Progress = Callable[[int, int], None]  # (frames done, frames in total)


class Clock:
    """Accumulates wall time per stage."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self._t) * 1000
        self._t = now


class LipSync:
    """Compiled generator(s) + face finder; thread-safe `prepare()` and `run()`."""

    def __init__(self, settings: Settings, generator: Generator, clip_generator: Callable[[], Generator], finder: FaceFinder):
        self.settings = settings
        self.generator = generator  # still avatars (the split network when available)
        self.clip_generator = clip_generator  # video avatars: the whole network, compiled on first use
        self.finder = finder

    def warm_up(self) -> None:
        """First inference of each model outside any request: no first-call penalty."""
        list(self.generator.run(np.zeros((1, 80, 16), np.float32), np.zeros((6, 96, 96), np.float32)))
        self.finder.detector.detect(np.zeros((64, 64, 3), np.uint8))

    def prepare(self, media: bytes, options: Options, video: bool | None = None, clock: Clock | None = None) -> V.Avatar:
        """Decode an image or clip and find its face box(es): the part of a request that a reused avatar skips.

        A video played straight through (`loop: none`, dubbing) is streamed: any length up to
        MAX_VIDEO_SECONDS, never all its frames in memory."""
        clock = clock or Clock()
        s = self.settings
        if options.loop == "none" and (video if video is not None else V.is_video(media)):
            avatar = streamed(media, options, self.finder, s.max_image_pixels, s.max_video_seconds, s.max_output_side)
            clock.lap("detect")  # decode and detection interleave in the first pass
            return avatar
        frames, fps, kind = V.decode(media, self.settings.max_image_pixels, self.settings.max_avatar_seconds, video)
        fps = options.fps_or(fps) if kind == "image" else fps  # a registered image keeps its requested rate
        clock.lap("decode")
        avatar = V.prepare(frames, fps, kind, options, self.finder, self.settings.max_output_side)
        clock.lap("detect")
        return avatar

    def restore(self, media: bytes, kind: str, boxes: list[V.Box], fps: float, clock: Clock | None = None) -> V.Avatar:
        """A registered avatar from its stored media and boxes: decoded again, never detected again."""
        frames, _, _ = V.decode(media, self.settings.max_image_pixels, self.settings.max_avatar_seconds, kind == "video")
        frames, _ = V.fit_frames(frames, self.settings.max_output_side)
        avatar = V.restore(frames, boxes, fps, "registered", kind)
        if clock is not None:
            clock.lap("decode")
        return avatar

    def run(
        self,
        avatar: V.Avatar | bytes,
        audio: bytes | A.Audio,
        options: Options,
        deadline: float | None = None,
        progress: Progress | None = None,
        video: bool | None = None,
        clock: Clock | None = None,
    ) -> Result:
        """One clip: avatar (prepared, or media bytes: `video` None = told by the bytes) + audio → MP4.

        `deadline` is a time.monotonic() instant; `progress(done, total)` is called per batch; `clock`
        may carry stages timed before (a registered avatar's decode)."""
        clock = clock or Clock()
        check = self._deadline(deadline)
        if isinstance(avatar, bytes):
            avatar = self.prepare(avatar, options, video, clock)
        sound = audio if isinstance(audio, A.Audio) else A.decode_audio(audio, self.settings.max_audio_seconds)
        clock.lap("decode")
        fps = options.fps_or(avatar.fps)
        n_frames = A.frame_count(sound.samples.shape[0], sound.sample_rate, fps)
        mels = A.mel_chunks(A.melspectrogram(A.to_16k_mono(sound)), n_frames, fps)
        clock.lap("mel")
        check()
        s = self.settings
        writer = Mp4Writer(avatar.width, avatar.height, fps, s.x264_preset, s.x264_crf, s.x264_params)
        try:
            writer.add_audio(sound)
            clock.lap("audio")
            self._render(avatar, mels, options, writer, clock, check, progress)
            mp4 = writer.finish()
        except BaseException:
            writer.abort()
            raise
        clock.lap("encode")
        end = avatar.end_position(n_frames, options.loop, options.start_frame)
        first = avatar.boxes[int(avatar.sequence(1, options.loop, options.start_frame)[0])]
        return Result(mp4, sound.duration_s, fps, n_frames, avatar.width, avatar.height, first, avatar.face_source, clock.ms, end)

    def _deadline(self, deadline: float | None) -> Callable[[], None]:
        def check() -> None:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded(f"the request took longer than {self.settings.request_timeout_s:g} s and was stopped")

        return check

    def _render(
        self,
        avatar: V.Avatar,
        mels: np.ndarray,
        options: Options,
        writer: Mp4Writer,
        clock: Clock,
        check: Callable[[], None],
        progress: Progress | None,
    ) -> None:
        """The one render loop: per output frame, the avatar's source frame k gets the next mouth."""
        index = avatar.sequence(len(mels), options.loop, options.start_frame)
        if avatar.still:
            mouths_in = self.generator.run(mels, avatar.faces[0], check)
        else:
            mouths_in = self.clip_generator().run(mels, avatar.faces, check, index=index)
        paster, shown = None, -1
        for mouths in mouths_in:
            clock.lap("infer")  # time spent waiting for the generator, not overlapped by the loop below
            for mouth in mouths:
                k = int(index[writer.frames])
                if k != shown:  # a new background frame: a fresh buffer, converted whole by the writer
                    paster, shown = Paster(avatar.frames[k], avatar.boxes[k], options.paste), k
                    dirty = None
                else:  # same background: only the mouth box changed since the last frame
                    dirty = paster.box
                frame = paster.paste(mouth)
                clock.lap("paste")
                writer.write(frame, dirty=dirty)
                clock.lap("encode")
            if progress is not None:
                progress(writer.frames, len(mels))
