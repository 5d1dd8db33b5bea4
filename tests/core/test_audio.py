"""Audio: decoding of every supported format, the mel spectrogram against librosa, chunk indexing."""

from __future__ import annotations

import io
import math

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile as sf
from helpers import encode_audio

from harness.reference import reference_chunks
from wav2lip_core import audio as A
from wav2lip_core.errors import BadRequest, LimitExceeded, UnsupportedMedia


def librosa_mel(wav: np.ndarray) -> np.ndarray:
    """Independent implementation: Wav2Lip's audio.py formula on librosa's stft and mel filters."""
    spec = np.abs(librosa.stft(y=scipy.signal.lfilter([1, -0.97], [1], wav), n_fft=800, hop_length=200, win_length=800))
    mel = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600) @ spec
    db = 20 * np.log10(np.maximum(1e-5, mel)) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


def test_mel_matches_librosa_on_speech(assets) -> None:
    wav = librosa.load(str(assets / "speech.wav"), sr=16000)[0]
    ours = A.melspectrogram(wav)
    ref = librosa_mel(wav)
    assert ours.shape == ref.shape == (80, 1 + len(wav) // 200)
    assert np.abs(ours - ref).max() < 1e-4
    assert ours.min() >= -4 and ours.max() <= 4 and ours.std() > 0.5  # real speech spans the range


def test_silence_gives_floor_not_nan() -> None:
    mel = A.melspectrogram(np.zeros(16000, np.float32))
    assert not np.isnan(mel).any()
    assert np.all(mel == -4.0)


@pytest.mark.parametrize("fps", [25.0, 30.0, 24.0, 29.97, 60.0, 1.0])
def test_chunks_match_the_original_loop(fps: float) -> None:
    mel = np.random.default_rng(0).uniform(-4, 4, (80, 517)).astype(np.float32)
    ref = reference_chunks(mel, fps)
    n = A.frame_count(516 * 200, 16000, fps)  # more frames than the original's loop gives
    ours = A.mel_chunks(mel, n, fps)
    assert ours.shape == (n, 80, 16)
    for i, chunk in enumerate(ref[:n]):  # every frame both make is identical
        np.testing.assert_array_equal(ours[i], chunk)
    for i in range(len(ref), n):  # frames the original drops reuse its last window
        np.testing.assert_array_equal(ours[i], mel[:, -16:])


def test_chunk_start_is_int_of_i_times_80_over_fps() -> None:
    starts = A.chunk_starts(10, 10_000, 30.0)
    assert list(starts) == [int(i * (80.0 / 30.0)) for i in range(10)]


@pytest.mark.parametrize(
    ("n", "rate", "fps", "frames"), [(102400, 16000, 25, 160), (160, 16000, 25, 1), (44101, 44100, 25, 26), (1, 8000, 60, 1)]
)
def test_frames_cover_the_whole_audio(n: int, rate: int, fps: float, frames: int) -> None:
    got = A.frame_count(n, rate, fps)
    assert got == frames == math.ceil(n * fps / rate)
    assert (got - 1) / fps < n / rate <= got / fps


@pytest.mark.parametrize(("n", "fps", "batch"), [(1, 25, 4), (3199, 25, 4), (102_400, 25, 4), (160_000, 29.97, 7), (961_234, 25, 16)])
def test_mel_windows_computed_as_asked_equal_the_whole_spectrogram(n: int, fps: float, batch: int) -> None:
    """A streamed reply's mel, a block of columns at a time as batches ask for it, is the whole one's, bit for bit."""
    wav = (np.random.default_rng(n).uniform(-0.4, 0.4, n)).astype(np.float32)
    frames = A.frame_count(n, 16000, fps)
    whole = A.mel_chunks(A.melspectrogram(wav), frames, fps)
    lazy = A.MelWindows(wav, frames, fps)
    assert len(lazy) == frames
    np.testing.assert_array_equal(np.concatenate([lazy[i : i + batch] for i in range(0, frames, batch)]), whole)


def test_short_audio_is_padded_to_one_window() -> None:
    chunks = A.mel_chunks(A.melspectrogram(np.zeros(160, np.float32)), 1, 25)
    assert chunks.shape == (1, 80, 16)


def _speech(assets) -> tuple[np.ndarray, int]:
    data, rate = sf.read(str(assets / "speech.wav"), dtype="float32", always_2d=True)
    return data, rate


@pytest.mark.parametrize(
    ("fmt", "codec"), [("flac", "flac"), ("ogg", "vorbis"), ("mp3", "libmp3lame"), ("webm", "libopus"), ("ipod", "aac")]
)
def test_formats_decode_to_the_same_speech(assets, fmt: str, codec: str) -> None:
    data, rate = _speech(assets)
    stereo44 = librosa.resample(np.repeat(data, 2, axis=1).T, orig_sr=rate, target_sr=44100).T.astype(np.float32)
    encoded = encode_audio(stereo44, 44100, fmt, codec)
    audio = A.decode_audio(encoded, max_seconds=60)
    assert audio.samples.shape[1] == 2
    assert abs(audio.duration_s - 6.4) < 0.1
    wav = A.to_16k_mono(audio)
    # lossy codecs shift and colour the signal a little; the loudness envelope must survive
    env = lambda w: np.convolve(np.abs(w[:99000]), np.ones(1600) / 1600, "valid")[::400]
    corr = np.corrcoef(env(wav), env(data[:, 0]))[0, 1]
    assert corr > 0.9, corr


def test_wav_header_duration_limit_checked_before_decoding(assets) -> None:
    with pytest.raises(LimitExceeded, match="limit is 2 s"):
        A.decode_audio((assets / "speech.wav").read_bytes(), max_seconds=2)


def test_limit_also_applies_to_ffmpeg_formats(assets) -> None:
    data, rate = _speech(assets)
    with pytest.raises(LimitExceeded):
        A.decode_audio(encode_audio(data, rate, "webm", "libopus"), max_seconds=2)


def test_empty_and_garbage_audio_are_refused() -> None:
    buf = io.BytesIO()
    sf.write(buf, np.zeros((0, 1), np.float32), 16000, format="WAV")
    with pytest.raises(BadRequest):
        A.decode_audio(buf.getvalue(), 60)
    with pytest.raises(BadRequest):
        A.decode_audio(b"", 60)
    with pytest.raises(UnsupportedMedia):
        A.decode_audio(b"this is a text file, not audio\n" * 20, 60)


def test_resampling_matches_librosa_load(assets) -> None:
    data, rate = _speech(assets)
    up = librosa.resample(data[:, 0], orig_sr=rate, target_sr=22050)
    buf = io.BytesIO()
    sf.write(buf, up, 22050, format="WAV", subtype="FLOAT")
    ours = A.to_16k_mono(A.decode_audio(buf.getvalue(), 60))
    buf.seek(0)
    ref = librosa.load(buf, sr=16000)[0]
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-5
