"""The data path, top to bottom: avatar → audio → mel → one render loop (generator → paste → MP4).

`LipSync` receives compiled parts (from `runtime.Runtime`) and only runs them; `start()` does a
request's work before its first frame and may be called from several threads. The `Render` it gives
makes the clip: whole (`complete()`) or batch by batch for a stream (`batches()`). Still images and
clips share the same loop, deadline and progress: the avatar says, per output frame, which source
frame, box and face input.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import numpy as np

from . import audio as A
from . import avatar as V
from . import frames
from .compose import Paster
from .config import Settings
from .detect import FaceFinder
from .dubbing import streamed
from .errors import ClientGone, DeadlineExceeded
from .generator import Generator
from .image import decode_image
from .scheduler import Pace
from .schema import Options, Result
from .video import Mp4Writer

Progress = Callable[[int, int], None]  # (frames done, frames in total)
LOOPED_LIMIT = 'the limit for a looped video (MAX_AVATAR_SECONDS); send "loop": "none" to stream a long video straight through'


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

        A looped clip is decoded frame by frame into frame files in the temporary folder (TMPDIR), mapped,
        and unlinked at once: its frames are page cache, never this process's heap, and go when the Avatar
        does. A video played straight through (`loop: none`, dubbing) is streamed: any length up to
        MAX_VIDEO_SECONDS."""
        clock = clock or Clock()
        s = self.settings
        if not (video if video is not None else V.is_video(media)):
            frame = decode_image(media, s.max_image_pixels)
            clock.lap("decode")
            avatar = V.prepare(frame, options.fps_or(V.STILL_FPS), options, self.finder, s.max_output_side)
        elif options.loop == "none":
            avatar = streamed(media, options, self.finder, s.max_image_pixels, s.max_video_seconds, s.max_output_side)
        else:
            with frames.staged() as folder:
                avatar = self.build(media, options, folder)
        clock.lap("detect")  # a clip's decoding and detection interleave
        return avatar

    def build(self, media: bytes, options: Options, folder: Path) -> V.Avatar:
        """A looped clip decoded frame by frame into `folder`'s frame files, a face box found per frame, the face
        inputs written; returned mapped from them (never all its frames in memory)."""
        s = self.settings
        raw, fps, size = V.open_video(media, s.max_image_pixels, s.max_avatar_seconds, LOOPED_LIMIT)
        written = frames.teed(V.fitted(raw, s.max_output_side), folder)
        boxes, source = V.clip_boxes(written, size, options, self.finder, s.max_output_side)
        return self._mapped(folder, boxes, fps, source)

    def rebuild(self, media: bytes, boxes: list[V.Box], fps: float, folder: Path) -> V.Avatar:
        """A registered clip's frame files made again from its upload and stored boxes (no detection), mapped."""
        s = self.settings
        raw, _, _ = V.open_video(media, s.max_image_pixels, s.max_avatar_seconds, LOOPED_LIMIT)
        for _ in frames.teed(V.fitted(raw, s.max_output_side), folder):
            pass
        return self._mapped(folder, boxes, fps, "registered")

    @staticmethod
    def _mapped(folder: Path, boxes: list[V.Box], fps: float, source: str) -> V.Avatar:
        frames.write_faces(folder, boxes)
        mapped = frames.open_mapped(folder)
        if mapped is None:  # written just now by this process: unreadable means the disk failed
            raise OSError(f"the frame files just written to {folder} cannot be read back")
        return V.clip_avatar(mapped, boxes, fps, source)

    def restore_image(self, media: bytes, box: V.Box, fps: float) -> V.Avatar:
        """A registered image from its stored upload and box: decoded again (a few ms), never detected again."""
        frame = V.decode_still(media, self.settings.max_image_pixels, self.settings.max_output_side)
        return V.image_avatar(frame, box, fps, "registered")

    def start(
        self,
        avatar: V.Avatar | bytes,
        audio: bytes | A.Audio,
        options: Options,
        deadline: float | None = None,
        progress: Progress | None = None,
        video: bool | None = None,
        clock: Clock | None = None,
        fragmented: bool = False,
        gone: Callable[[], bool] | None = None,
        pace: Pace | None = None,
    ) -> Render:
        """Everything before the first frame (decode, detect, audio, the encoder) → a `Render`:
        `.complete()` makes the whole MP4, or `.batches()` makes it batch by batch (a stream).

        `avatar` is prepared, or media bytes (`video` None = told by the bytes); `deadline` is a
        time.monotonic() instant; `progress(done, total)` is called per batch; `clock` may carry stages
        timed before (a registered avatar's decode); `fragmented` makes a streamable MP4
        (`Render.writer.take()` after each batch); `gone()` True (a streamed reply's client has left)
        stops the work with `ClientGone`; `pace` says when its frames are due (scheduler.py; default: a whole answer)."""
        clock = clock or Clock()
        check = self.checker(deadline, gone)
        if isinstance(avatar, bytes):
            avatar = self.prepare(avatar, options, video, clock)
        sound = audio if isinstance(audio, A.Audio) else A.decode_audio(audio, self.settings.max_audio_seconds)
        clock.lap("decode")
        check()
        generator = self.generator if avatar.still else self.clip_generator()
        return Render(generator, avatar, sound, options, self.settings, clock, check, progress, fragmented, pace or Pace())

    def checker(self, deadline: float | None, gone: Callable[[], bool] | None) -> Callable[[], None]:
        """What the render loop and the generator call between steps: the deadline, and whether anyone still listens."""

        def check() -> None:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded(f"the request took longer than {self.settings.request_timeout_s:g} s and was stopped")
            if gone is not None and gone():
                raise ClientGone("the client closed the connection; the work was stopped")

        return check


class Render:
    """One clip being made. Its frame count, size and first face box are known before any frame is;
    `batches()` makes it (the one render loop), `finish()` closes the file, `close()` releases what is left."""

    def __init__(
        self,
        generator: Generator,
        avatar: V.Avatar,
        sound: A.Audio,
        options: Options,
        settings: Settings,
        clock: Clock,
        check: Callable[[], None],
        progress: Progress | None,
        fragmented: bool,
        pace: Pace,
    ):
        self.generator, self.avatar, self.sound, self.options = generator, avatar, sound, options
        self.clock, self.check, self.progress = clock, check, progress
        self.fps = options.fps_or(avatar.fps)
        self.frames = A.frame_count(sound.samples.shape[0], sound.sample_rate, self.fps)
        self.mels = A.MelWindows(A.to_16k_mono(sound), self.frames, self.fps)  # columns computed as batches need them
        clock.lap("mel")
        s = settings
        self.writer = Mp4Writer(avatar.width, avatar.height, self.fps, s.x264_preset, s.x264_crf, s.x264_params, fragmented=fragmented)
        self.writer.add_audio(sound)
        clock.lap("audio")
        self.end_frame = avatar.end_position(self.frames, options.loop, options.start_frame)
        self.face_box = avatar.boxes[int(avatar.sequence(1, options.loop, options.start_frame)[0])]
        self.pace = pace
        pace.fps = self.fps  # a stream's frames are due at this rate
        generator.scheduler.join(pace)
        self._open = True
        self._on_close: list[Callable[[], None]] = []

    def batches(self) -> Iterator[int]:
        """The one render loop: per output frame, the avatar's source frame k gets the next mouth.
        Yields the frames written after each batch."""
        avatar, writer, clock = self.avatar, self.writer, self.clock
        index = avatar.sequence(self.frames, self.options.loop, self.options.start_frame)
        if avatar.still:
            mouths_in = self.generator.run(self.mels, avatar.faces[0], self.check, pace=self.pace)
        else:
            mouths_in = self.generator.run(self.mels, avatar.faces, self.check, index=index, pace=self.pace)
        paster, shown = None, -1
        with closing(mouths_in):  # abandoned early (an error, a client gone): in-flight batches finish first
            for mouths in mouths_in:
                clock.lap("infer")  # time spent waiting for the generator, not overlapped by the loop below
                for mouth in mouths:
                    self.check()  # per frame too: a deadline or a gone client stops a large frame's paste and encode
                    k = int(index[writer.frames])
                    if k != shown:  # a new background frame: a fresh buffer, converted whole by the writer
                        paster, shown = Paster(avatar.frames[k], avatar.boxes[k], self.options.paste), k
                        dirty = None
                    else:  # same background: only the mouth box changed since the last frame
                        dirty = paster.box
                    frame = paster.paste(mouth)
                    clock.lap("paste")
                    writer.write(frame, dirty=dirty)
                    clock.lap("encode")
                if self.progress is not None:
                    self.progress(writer.frames, self.frames)
                yield writer.frames

    def complete(self) -> Result:
        """Make every frame and close the file: the whole MP4 and what it is."""
        try:
            for _ in self.batches():
                pass
            return self.result(self.finish())
        finally:
            self.close()

    def finish(self) -> bytes:
        """Close the file after the last batch: the whole MP4, or a fragmented one's last bytes."""
        data = self.writer.finish()
        self._open = False
        self.generator.scheduler.leave(self.pace)
        self.clock.lap("encode")
        return data

    def result(self, mp4: bytes) -> Result:
        """What was made (`mp4` is b"" for a stream, whose bytes went out as they were made)."""
        a = self.avatar
        return Result(mp4, self.sound.duration_s, self.fps, self.frames, a.width, a.height, self.face_box, a.face_source,
                      self.clock.ms, self.end_frame)  # fmt: skip

    def on_close(self, release: Callable[[], None]) -> None:
        """Call `release` when the render is closed (what its request reserved: memory.Reservation)."""
        self._on_close.append(release)

    def close(self) -> None:
        """Release the encoder if the file was not finished (an error, a deadline, a client gone), and what was reserved."""
        if self._open:
            self._open = False
            self.writer.abort()
        self.generator.scheduler.leave(self.pace)
        while self._on_close:
            self._on_close.pop()()
