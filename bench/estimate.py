"""`TalkingHead.estimate_seconds()` against the measured `generate()` time (run by `bench._worker estimate`).

For 6.4 s (the test speech) and 30 s (tiled) of audio on a fresh TalkingHead: the estimate made
before the request (calibrated on first use), the request's wall time, and their ratio. The issue's
bound: the estimate within 30 % of the measured time.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import soundfile as sf

LENGTHS_S = (6.4, 30.0)


def tiled_wav(audio: Path, seconds: float) -> bytes:
    samples, rate = sf.read(audio, dtype="int16")
    n = round(seconds * rate)
    buf = io.BytesIO()
    sf.write(buf, np.tile(samples, -(-n // len(samples)))[:n], rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def measure(ir: Path, image: Path, audio: Path) -> dict[str, object]:
    from wav2lip_core import TalkingHead

    t0 = time.perf_counter()
    head = TalkingHead.load(ir)
    load_s = time.perf_counter() - t0
    avatar = head.prepare_avatar(image)
    t0 = time.perf_counter()
    head.estimate_seconds(1.0, avatar.width, avatar.height)  # first call: calibration
    calibrate_s = time.perf_counter() - t0
    rows = []
    for seconds in LENGTHS_S:
        estimate = head.estimate_seconds(seconds, avatar.width, avatar.height)
        wav = tiled_wav(audio, seconds)
        t0 = time.perf_counter()
        result = head.generate(wav, avatar)
        wall = time.perf_counter() - t0
        rows.append({"audio_s": seconds, "frames": result.frames, "estimate_s": estimate, "measured_s": wall, "ratio": estimate / wall})
    return {"load_s": load_s, "calibrate_s": calibrate_s, "cost_model": head.info()["cost_model"], "points": rows}
