"""Frames + audio → H.264 (yuv420p) / AAC in MP4, in memory, with PyAV (no temp files, no ffmpeg).

Frames are encoded as they are made: nothing holds the whole clip.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

from .audio import Audio

# The AAC encoder's 1024-sample priming counts in the track's duration: at >= 32 kHz it is <= 32 ms,
# so the audio and video durations stay within one frame; lower rates are resampled to 48 kHz.
AAC_RATES = (32000, 44100, 48000, 64000, 88200, 96000)
AAC_FRAME = 1024  # samples per AAC frame


class Mp4Writer:
    """Open with the frame size, rate and audio; `write()` BGR frames; `finish()` returns the MP4 bytes."""

    def __init__(self, width: int, height: int, fps: float, audio: Audio, preset: str = "veryfast", crf: int = 18, threads: int = 0):
        if width % 2 or height % 2:
            raise ValueError(f"H.264 yuv420p needs even sides, got {width}×{height}")
        self.buffer = io.BytesIO()
        self.container = av.open(self.buffer, mode="w", format="mp4")
        rate = Fraction(fps).limit_denominator(1001)
        self.video = self.container.add_stream("libx264", rate=rate)
        self.video.width, self.video.height, self.video.pix_fmt = width, height, "yuv420p"
        self.video.codec_context.time_base = 1 / rate
        self.video.options = {"preset": preset, "crf": str(crf), "threads": str(threads)}
        self.frames = 0
        self._encode_audio(audio)

    def _encode_audio(self, audio: Audio) -> None:
        channels = min(2, audio.samples.shape[1])
        samples = audio.samples if audio.samples.shape[1] == channels else audio.samples.mean(axis=1, keepdims=True)
        rate = audio.sample_rate if audio.sample_rate in AAC_RATES else 48000
        stream = self.container.add_stream("aac", rate=rate, layout="stereo" if channels == 2 else "mono")
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

    def write(self, bgr: np.ndarray) -> None:
        """Encode one BGR uint8 frame of the declared size."""
        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
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
