"""Frames + audio → H.264 (yuv420p) / AAC in MP4 with PyAV (no ffmpeg process).

Frames are encoded as they are made: nothing holds the whole clip. The audio track is encoded a
little ahead of the video, so a fragmented MP4 (`fragmented=True`: a `moov` without samples, then
a `moof`+`mdat` per frame, for streaming) carries the sound of each frame with it; `take()` hands
out the bytes written so far. A whole file is `+faststart` (the `moov` before the samples: a
`<video src>` plays and seeks it before it has all of it); FFmpeg moves the `moov` by reading the
file back, so a whole file is written to a temporary file, read, and removed. Both layouts hold the
same H.264 and AAC packets. x264 runs with no
B-frames and no lookahead (config.py's X264_PARAMS): a frame's packet leaves the encoder at once.
"""

from __future__ import annotations

import math
import os
import tempfile
from fractions import Fraction

import av
import cv2
import numpy as np

from .audio import Audio

# The AAC encoder's 1024-sample priming counts in the track's duration: at >= 32 kHz it is <= 32 ms,
# so the audio and video durations stay within one frame; lower rates are resampled to 48 kHz.
AAC_RATES = (32000, 44100, 48000, 64000, 88200, 96000)
AAC_FRAME = 1024  # samples per AAC frame
AUDIO_CHUNK = AAC_FRAME * 4  # samples encoded at a time
AUDIO_LEAD_S = 0.25  # audio encoded this far ahead of the video: covers the AAC encoder's delay
# A fragment per frame; the moov written with the first one (delay_moov), so it carries the edit list that
# starts the audio after the AAC encoder's priming: both tracks keep the whole file's timeline, frame k at k/fps.
FRAGMENTED = {"movflags": "delay_moov+default_base_moof+skip_trailer", "frag_duration": "1"}
WHOLE = {"movflags": "+faststart"}


def _planes(i420: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y, U and V planes of an OpenCV/FFmpeg I420 buffer."""
    flat = i420.reshape(-1)
    n = h * w
    return flat[:n].reshape(h, w), flat[n : n + n // 4].reshape(h // 2, w // 2), flat[n + n // 4 :].reshape(h // 2, w // 2)


class _Chunks:
    """A write-only, unseekable file for PyAV: the muxer's bytes, collected until taken."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


class _AudioTrack:
    """The whole audio, encoded to AAC chunk by chunk as the video asks for it."""

    def __init__(self, container: av.container.OutputContainer, audio: Audio):
        self.container = container
        samples = audio.samples  # mono or stereo (decode_audio mixes more channels down)
        channels = samples.shape[1]
        if channels > 2:
            raise ValueError(f"expected mono or stereo audio, got {channels} channels")
        self.rate = audio.sample_rate
        out_rate = audio.sample_rate if audio.sample_rate in AAC_RATES else 48000
        self.stream = container.add_stream("aac", rate=out_rate, layout="stereo" if channels == 2 else "mono")
        self.stream.options = {"aac_coder": "fast"}  # 4× faster than the default two-loop search; speech sounds the same
        self.resampler = av.AudioResampler(format="fltp", layout=self.stream.layout, rate=out_rate)
        self.planar = np.ascontiguousarray(samples.T, dtype=np.float32)
        self.position = 0  # input samples encoded so far
        self.samples_out = 0  # samples handed to the encoder, at its rate
        self.flushed = False

    def encode_until(self, seconds: float) -> None:
        """Encode whole chunks until `seconds` of audio are in."""
        self._encode_to(min(self.planar.shape[1], math.ceil(seconds * self.rate)))

    def _encode_to(self, end: int) -> None:
        while self.position < end:
            chunk = self.planar[:, self.position : self.position + AUDIO_CHUNK]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self.stream.layout)
            frame.sample_rate = self.rate
            self.position += AUDIO_CHUNK
            self._mux(self.resampler.resample(frame))

    def finish(self) -> None:
        self._encode_to(self.planar.shape[1])
        if not self.flushed:
            self._mux(self.resampler.resample(None))
            self.container.mux(self.stream.encode(None))
            self.flushed = True

    def _mux(self, frames: list[av.AudioFrame]) -> None:
        for out in frames:  # timestamps counted in output samples: the muxer never has to guess them
            out.pts, out.time_base = self.samples_out, Fraction(1, out.sample_rate)
            self.samples_out += out.samples
            self.container.mux(self.stream.encode(out))


class Mp4Writer:
    """Open with the frame size and rate; `add_audio()` the track; `write()` BGR frames; `finish()` returns the MP4
    (fragmented: `take()` returns the bytes so far, `finish()` the rest)."""

    def __init__(
        self, width: int, height: int, fps: float, preset: str = "veryfast", crf: int = 18, params: str = "", threads: int = 1,
        fragmented: bool = False,
    ):  # fmt: skip
        if width % 2 or height % 2:
            raise ValueError(f"H.264 yuv420p needs even sides, got {width}×{height}")
        self.sink: _Chunks | None = _Chunks() if fragmented else None
        self.path: str | None = None
        if self.sink is not None:
            self.container = av.open(self.sink, mode="w", format="mp4", options=FRAGMENTED)
        else:  # faststart reopens the file by name to move the moov: a real file, removed by finish() / abort()
            fd, self.path = tempfile.mkstemp(prefix="wav2lip-", suffix=".mp4")
            os.close(fd)
            self.container = av.open(self.path, mode="w", format="mp4", options=WHOLE)
        rate = Fraction(fps).limit_denominator(1001)
        self.fps = float(rate)
        self.video = self.container.add_stream("libx264", rate=rate)
        self.video.width, self.video.height, self.video.pix_fmt = width, height, "yuv420p"
        self.video.codec_context.time_base = 1 / rate
        # one encoder thread: the generator already uses every core, more threads would only contend
        self.video.options = {"preset": preset, "crf": str(crf), "threads": str(threads)} | ({"x264-params": params} if params else {})
        self.frames = 0
        self.audio: _AudioTrack | None = None
        self._yuv: np.ndarray | None = None  # the last frame as I420, (h * 3 / 2, w)

    def add_audio(self, audio: Audio) -> None:
        """The audio track (call once, before the first frame); encoded as the frames go in."""
        self.audio = _AudioTrack(self.container, audio)
        self.audio.encode_until(AUDIO_LEAD_S)

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
        if self.audio is not None:
            self.audio.encode_until(self.frames / self.fps + AUDIO_LEAD_S)
        self.container.mux(self.video.encode(frame))

    def codecs(self) -> str:
        """The RFC 6381 codecs of this file (`avc1.PPCCLL, mp4a.40.2`), for Media Source Extensions; after the first frame."""
        sps = _sps(bytes(self.video.codec_context.extradata or b""))
        return f"avc1.{sps[0]:02x}{sps[1]:02x}{sps[2]:02x}" + (", mp4a.40.2" if self.audio is not None else "")  # AAC LC

    def take(self) -> bytes:
        """A fragmented file's bytes written since the last call."""
        if self.sink is None:
            raise TypeError("take() is for a fragmented writer")
        return self.sink.take()

    def finish(self) -> bytes:
        """Flush the encoders and close: the whole file, or a fragmented file's last bytes."""
        if self.audio is not None:
            self.audio.finish()
        self.container.mux(self.video.encode(None))
        self.container.close()
        if self.sink is not None:
            return self.sink.take()
        try:
            with open(self.path, "rb") as f:  # type: ignore[arg-type]
                return f.read()
        finally:
            self._remove()

    def abort(self) -> None:
        """Release the encoders without producing a file."""
        try:
            self.container.close()
        finally:
            self._remove()

    def _remove(self) -> None:
        if self.path is not None:
            os.unlink(self.path)
            self.path = None


def _sps(extradata: bytes) -> bytes:
    """profile_idc, constraint flags, level_idc of the H.264 sequence parameter set in `extradata`
    (avcC, as the MP4 muxer stores it, or Annex B start codes, as libx264 hands it over)."""
    if extradata[:1] == b"\x01" and len(extradata) >= 4:  # avcC: version 1, then the three bytes
        return extradata[1:4]
    for start in (i for i in range(len(extradata) - 4) if extradata[i : i + 3] == b"\x00\x00\x01"):
        if extradata[start + 3] & 0x1F == 7:  # NAL type 7: SPS
            return extradata[start + 4 : start + 7]
    raise ValueError("no H.264 sequence parameter set in the encoder's extradata")
