"""Wav2Lip's published audio front end without torch: `audio.melspectrogram` and `inference.py`'s chunking.

Shared by the PyTorch reference (`harness/reference.py`) and the OpenVINO peers (`harness/peers.py`),
whose processes must not import torch.
"""

from __future__ import annotations

import librosa
import numpy as np
import scipy.signal


def reference_mel(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip audio.melspectrogram with librosa, as published (hparams: 800/200/800, 80 mels 55–7600 Hz)."""
    y = scipy.signal.lfilter([1, -0.97], [1], wav)
    spec = np.abs(librosa.stft(y=y, n_fft=800, hop_length=200, win_length=800))
    mel = np.dot(librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600), spec)
    s = 20 * np.log10(np.maximum(np.exp(-100 / 20 * np.log(10)), mel)) - 20
    return np.clip((2 * 4.0) * ((s + 100) / 100) - 4.0, -4.0, 4.0)


def reference_chunks(mel: np.ndarray, fps: float) -> list[np.ndarray]:
    """inference.py's chunk loop, including its last chunk `mel[:, -16:]`."""
    chunks, mult, i = [], 80.0 / fps, 0
    while True:
        start = int(i * mult)
        if start + 16 > len(mel[0]):
            chunks.append(mel[:, len(mel[0]) - 16 :])
            return chunks
        chunks.append(mel[:, start : start + 16])
        i += 1
