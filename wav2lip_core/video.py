"""Frames + audio → H.264 (yuv420p) / AAC in MP4, in memory, with PyAV (no temp files, no ffmpeg).

Frames are encoded as they are made: nothing holds the whole clip.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import cv2
import numpy as np

from .audio import Audio

# The AAC encoder's 1024-sample priming counts in the track's duration: at >= 32 kHz it is <= 32 ms,
# so the audio and video durations stay within one frame; lower rates are resampled to 48 kHz.
AAC_RATES = (32000, 44100, 48000, 64000, 88200, 96000)
AAC_FRAME = 1024  # samples per AAC frame


def _planes(i420: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y, U and V planes of an OpenCV/FFmpeg I420 buffer."""
    flat = i420.reshape(-1)
    n = h * w
    return flat[:n].reshape(h, w), flat[n : n + n // 4].reshape(h // 2, w // 2), flat[n + n // 4 :].reshape(h // 2, w // 2)


class Mp4Writer:
    """Open with the frame size and rate; `add_audio()` the track; `write()` BGR frames; `finish()` returns the MP4."""

    def __init__(self, width: int, height: int, fps: float, preset: str = "veryfast", crf: int = 18, params: str = "", threads: int = 1):
        if width % 2 or height % 2:
            raise ValueError(f"H.264 yuv420p needs even sides, got {width}×{height}")
        self.buffer = io.BytesIO()
        self.container = av.open(self.buffer, mode="w", format="mp4")
        rate = Fraction(fps).limit_denominator(1001)
        self.video = self.container.add_stream("libx264", rate=rate)
        self.video.width, self.video.height, self.video.pix_fmt = width, height, "yuv420p"
        self.video.codec_context.time_base = 1 / rate
        # one encoder thread: the generator already uses every core, more threads would only contend
        self.video.options = {"preset": preset, "crf": str(crf), "threads": str(threads)} | ({"x264-params": params} if params else {})
        self.frames = 0
        self._yuv: np.ndarray | None = None  # the last frame as I420, (h * 3 / 2, w)

    def add_audio(self, audio: Audio) -> None:
        """Encode the whole audio track to AAC (call once, before or between frames)."""
        samples = audio.samples  # mono or stereo (decode_audio mixes more channels down)
        channels = samples.shape[1]
        if channels > 2:
            raise ValueError(f"expected mono or stereo audio, got {channels} channels")
        rate = audio.sample_rate if audio.sample_rate in AAC_RATES else 48000
        stream = self.container.add_stream("aac", rate=rate, layout="stereo" if channels == 2 else "mono")
        stream.options = {"aac_coder": "fast"}  # 4× faster than the default two-loop search; speech sounds the same
        resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=rate)
        planar = np.ascontiguousarray(samples.T, dtype=np.float32)
        for start in range(0, planar.shape[1], AAC_FRAME * 16):
            frame = av.AudioFrame.from_ndarray(planar[:, start : start + AAC_FRAME * 16], format="fltp", layout=stream.layout)
            frame.sample_rate = audio.sample_rate
            for out in resampler.resample(frame):
                self.container.mux(stream.encode(out))
        for out in resampler.resample(None):
            self.container.mux(stream.encode(out))
        self.container.mux(stream.encode(None))

    def write(self, bgr: np.ndarray, dirty: tuple[int, int, int, int] | None = None) -> None:
        """Encode one BGR uint8 frame; if only `dirty` (x1, y1, x2, y2) changed since the last one,
        only that region is colour-converted (a still avatar: the mouth box)."""
        h, w = bgr.shape[:2]
        if dirty is None or self._yuv is None:
            self._yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)  # BT.601 limited range, as swscale
        else:
            x1, y1, x2, y2 = dirty
            x1, y1, x2, y2 = x1 & ~1, y1 & ~1, min(w, (x2 + 1) & ~1), min(h, (y2 + 1) & ~1)  # whole chroma blocks
            part = cv2.cvtColor(np.ascontiguousarray(bgr[y1:y2, x1:x2]), cv2.COLOR_BGR2YUV_I420).ravel()
            ph, pw = y2 - y1, x2 - x1
            n = ph * pw
            y_plane, u_plane, v_plane = _planes(self._yuv, h, w)
            y_plane[y1:y2, x1:x2] = part[:n].reshape(ph, pw)
            u_plane[y1 // 2 : y2 // 2, x1 // 2 : x2 // 2] = part[n : n + n // 4].reshape(ph // 2, pw // 2)
            v_plane[y1 // 2 : y2 // 2, x1 // 2 : x2 // 2] = part[n + n // 4 :].reshape(ph // 2, pw // 2)
        frame = av.VideoFrame.from_ndarray(self._yuv, format="yuv420p")
        frame.pts = self.frames
        self.frames += 1
        self.container.mux(self.video.encode(frame))

    def finish(self) -> bytes:
        """Flush the encoder, write the index and return the file."""
        self.container.mux(self.video.encode(None))
        self.container.close()
        return self.buffer.getvalue()

    def abort(self) -> None:
        """Release the encoder without producing a file."""
        self.container.close()
