"""Audio: encoded bytes → samples → 16 kHz mono → Wav2Lip mel spectrogram → per-frame chunks.

Decoding tries libsndfile first (wav/flac/ogg/mp3, fast, header gives the duration before any
decoding) and falls back to PyAV's FFmpeg for the rest (opus, webm, m4a/aac, …). Resampling uses
soxr at "HQ", as `librosa.load(path, sr=16000)` does in the original `inference.py`.
The mel spectrogram re-implements Wav2Lip's `audio.py` + `hparams.py` in numpy; the tests check it
against librosa.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from functools import lru_cache

import av
import numpy as np
import soundfile as sf
import soxr

from .errors import BadRequest, LimitExceeded, UnsupportedMedia

SAMPLE_RATE = 16_000  # Wav2Lip hparams.sample_rate
N_FFT = 800  # 50 ms window
HOP = 200  # 12.5 ms hop → 80 mel columns per second
WIN = 800
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0  # symmetric normalisation to [-4, 4], clipped
MEL_STEP = 16  # 16 mel columns = 0.2 s of audio per video frame
MEL_PER_SECOND = SAMPLE_RATE / HOP  # 80.0


@dataclass
class Audio:
    """Decoded audio at its native rate: `samples` is (n, channels ≤ 2) float32 in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def decode_audio(data: bytes, max_seconds: float) -> Audio:
    """Decode any supported container/codec; refuse empty, undecodable or over-long audio."""
    if not data:
        raise BadRequest("audio is empty", code="empty_audio")
    try:
        audio = _decode_soundfile(data, max_seconds)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        audio = None  # not a format libsndfile knows: let FFmpeg try
    if audio is None:
        audio = _decode_pyav(data, max_seconds)
    return checked(audio, max_seconds)


@dataclass(frozen=True)
class Probe:
    """What an audio file's header says, before any sample is decoded."""

    seconds: float
    sample_rate: int
    channels: int


def probe_audio(data: bytes, max_seconds: float) -> Probe:
    """Duration, rate and channels from the header (libsndfile's, else FFmpeg's); a header that does not tell
    (or does not parse: decoding will say why) gives the most that decoding would take: `max_seconds` of 48 kHz stereo."""
    with contextlib.suppress(sf.LibsndfileError, RuntimeError, TypeError, ValueError):  # not a libsndfile format: FFmpeg's turn
        info = sf.info(io.BytesIO(data))
        if info.frames > 0:
            return Probe(min(info.frames / info.samplerate, max_seconds), int(info.samplerate), info.channels)
    # unreadable: decode_audio's own error says why
    with contextlib.suppress(av.FFmpegError, ValueError, IndexError), av.open(io.BytesIO(data), metadata_errors="ignore") as container:
        stream = container.streams.audio[0]
        rate = stream.rate or stream.codec_context.sample_rate
        if container.duration and rate:
            return Probe(min(container.duration / av.time_base, max_seconds), int(rate), stream.channels or 2)
    return Probe(max_seconds, 48000, 2)


def checked(audio: Audio, max_seconds: float) -> Audio:
    """Refuse empty, over-long or non-finite audio; mix more than two channels down to mono."""
    if audio.samples.ndim != 2:
        raise BadRequest(f"audio samples must be (n, channels), got shape {audio.samples.shape}", code="bad_audio")
    if audio.duration_s > max_seconds:
        raise _too_long(audio.duration_s, max_seconds)
    if audio.samples.shape[0] == 0:
        raise BadRequest("audio has no samples", code="empty_audio")
    if audio.samples.shape[1] > 2:  # surround (5.1 AAC, multichannel WAV): the MP4's AAC track is mono or stereo
        audio = Audio(audio.samples.mean(axis=1, keepdims=True, dtype=np.float32), audio.sample_rate)
    if not np.isfinite(audio.samples).all():
        raise UnsupportedMedia("audio contains NaN or infinite samples", code="bad_audio")
    return audio


def _too_long(seconds: float, max_seconds: float) -> LimitExceeded:
    return LimitExceeded(f"audio is {seconds:.1f} s long; the limit is {max_seconds:g} s", code="audio_too_long")


def _decode_soundfile(data: bytes, max_seconds: float) -> Audio:
    with sf.SoundFile(io.BytesIO(data)) as f:
        if f.frames > 0 and f.frames / f.samplerate > max_seconds:
            raise _too_long(f.frames / f.samplerate, max_seconds)
        samples = f.read(dtype="float32", always_2d=True)
        return Audio(samples, int(f.samplerate))


def _decode_pyav(data: bytes, max_seconds: float) -> Audio:
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise UnsupportedMedia("the audio file has no audio track", code="no_audio_track")
            stream = container.streams.audio[0]
            rate = stream.rate or stream.codec_context.sample_rate
            if not rate:
                raise UnsupportedMedia("the audio track has no sample rate", code="bad_audio")
            limit = int(max_seconds * rate) + 1
            to_float = av.AudioResampler(format="fltp")  # any sample format → planar float32
            chunks, total, first = [], 0, None
            for frame in container.decode(stream):
                # The resampler passes frames through untouched when the first one needs no conversion,
                # so a stream that changes layout or rate (concatenated ADTS, chained Ogg) would mix them.
                if first is None:
                    first = (frame.layout.name, frame.sample_rate)
                    rate = frame.sample_rate or rate  # the decoder's rate (HE-AAC doubles the container's)
                    limit = int(max_seconds * rate) + 1
                elif (frame.layout.name, frame.sample_rate) != first:
                    raise UnsupportedMedia(
                        f"the audio changes from {first[0]} {first[1]} Hz to {frame.layout.name} {frame.sample_rate} Hz mid-stream",
                        code="bad_audio",
                    )
                for out in to_float.resample(frame):
                    pcm = out.to_ndarray()  # (channels, n)
                    chunks.append(pcm.T)
                    total += pcm.shape[1]
                if total > limit:
                    raise _too_long(total / rate, max_seconds)
            chunks += [out.to_ndarray().T for out in to_float.resample(None)]  # flush
    except av.FFmpegError as e:
        raise UnsupportedMedia(f"could not decode the audio: {e}", code="bad_audio") from e
    if not chunks:
        raise BadRequest("audio has no samples", code="empty_audio")
    return Audio(np.concatenate(chunks, axis=0), int(rate))


def to_16k_mono(audio: Audio) -> np.ndarray:
    """Mix to mono (channel mean) and resample to 16 kHz with soxr HQ, like `librosa.load(sr=16000)`."""
    mono = audio.samples.mean(axis=1, dtype=np.float32)
    if audio.sample_rate == SAMPLE_RATE:
        return mono
    n_out = math.ceil(mono.shape[0] * SAMPLE_RATE / audio.sample_rate)
    out = soxr.resample(mono, audio.sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    # librosa.util.fix_length: trim or zero-pad to ceil(n · ratio)
    return out[:n_out] if out.shape[0] >= n_out else np.pad(out, (0, n_out - out.shape[0]))


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's auditory-toolbox mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = np.log(6.4) / 27.0
    lin = hz / f_sp
    return np.where(hz >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, lin)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """(80, 401) triangular filters with Slaney area normalisation (librosa.filters.mel defaults)."""
    fft_freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)  # librosa stores the basis as float32


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    n = np.arange(WIN)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / WIN)  # periodic Hann, scipy get_window("hann")


def _emphasised(wav_16k: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) of the signal as the STFT sees it, in float64: pre-emphasised
    (scipy.signal.lfilter([1, -k], [1], y)) and padded with n_fft // 2 zeros on both sides
    (librosa.stft(center=True), pad_mode "constant" since 0.10)."""
    lo, hi = start - N_FFT // 2, stop - N_FFT // 2  # in the unpadded signal
    a, b = max(lo, 0), min(hi, len(wav_16k))
    y = np.asarray(wav_16k[max(a - 1, 0) : b], dtype=np.float64)
    emphasised = y[1:] - PREEMPHASIS * y[:-1] if a > 0 else np.append(y[:1], y[1:] - PREEMPHASIS * y[:-1])
    return np.pad(emphasised, (a - lo, max(0, hi - max(b, a))))


def _columns(wav_16k: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Mel columns [start, stop): each is its own 800-sample window, 200 samples after the last."""
    signal = _emphasised(wav_16k, start * HOP, (stop - 1) * HOP + N_FFT)
    frames = np.lib.stride_tricks.sliding_window_view(signal, N_FFT)[::HOP]
    magnitude = np.abs(np.fft.rfft(frames * _window(), axis=1))  # (T, 401)
    mel = mel_basis() @ magnitude.T  # (80, T)
    min_level = np.exp(MIN_LEVEL_DB / 20.0 * np.log(10.0))
    db = 20.0 * np.log10(np.maximum(min_level, mel)) - REF_LEVEL_DB
    norm = (2 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    return np.clip(norm, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def _n_columns(n_samples: int) -> int:
    return 1 + n_samples // HOP


def melspectrogram(wav_16k: np.ndarray) -> np.ndarray:
    """Wav2Lip's `audio.melspectrogram`: (80, 1 + len // 200) float32 in [-4, 4], never NaN."""
    return _columns(wav_16k, 0, _n_columns(len(wav_16k)))


def frame_count(n_samples: int, sample_rate: int, fps: float) -> int:
    """Video frames that cover the whole audio: ceil(duration × fps), at least one."""
    return max(1, math.ceil(n_samples * fps / sample_rate - 1e-9))


def chunk_starts(n_frames: int, n_mel: int, fps: float) -> np.ndarray:
    """Mel column where frame i's 16-column window starts: int(i · 80 / fps), as the original.

    Past the end of the spectrogram the original uses the last 16 columns; so do we, for every frame
    the original would have dropped.
    """
    mult = 80.0 / fps  # computed as in inference.py so float rounding agrees
    starts = np.array([int(i * mult) for i in range(n_frames)], dtype=np.int64)
    return np.minimum(starts, max(0, n_mel - MEL_STEP))


def mel_chunks(mel: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """(n_frames, 80, 16) float32 windows; audio shorter than 0.2 s is padded with silence (−4)."""
    if mel.shape[1] < MEL_STEP:
        mel = np.pad(mel, ((0, 0), (0, MEL_STEP - mel.shape[1])), constant_values=-MAX_ABS_VALUE)
    return _windows(mel, chunk_starts(n_frames, mel.shape[1], fps))


def _windows(mel: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(len(starts), 80, 16): the 16 columns from each start."""
    windows = np.lib.stride_tricks.sliding_window_view(mel, MEL_STEP, axis=1)  # (80, T-15, 16)
    return np.ascontiguousarray(windows[:, starts].transpose(1, 0, 2))


class MelWindows:
    """`mel_chunks(melspectrogram(wav), n_frames, fps)`, computed a block of columns at a time as
    frames are asked for (`len()`, slices): the first batch never waits for a long clip's whole
    spectrogram, and the working arrays stay small."""

    BLOCK = 160  # columns computed at once: 2 s of audio

    def __init__(self, wav_16k: np.ndarray, n_frames: int, fps: float):
        self._wav = wav_16k
        self._total = _n_columns(len(wav_16k))
        width = max(self._total, MEL_STEP)  # shorter than 0.2 s: padded with silence (−4)
        self._mel = np.full((N_MELS, width), -MAX_ABS_VALUE, np.float32)
        self._done = 0  # columns computed so far
        self._starts = chunk_starts(n_frames, width, fps)

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, frames: slice) -> np.ndarray:
        """(n, 80, 16) float32 windows of the frames in `frames`."""
        starts = self._starts[frames]
        if len(starts):
            self._compute(int(starts.max()) + MEL_STEP)
        return _windows(self._mel, starts)

    def _compute(self, upto: int) -> None:
        upto = min(self._total, max(upto, self._done + self.BLOCK))
        if upto > self._done:
            self._mel[:, self._done : upto] = _columns(self._wav, self._done, upto)
            self._done = upto
