"""Measurements that run in their own process, started by `bench/run.py`; one JSON object on stdout.

    python -m bench._worker reference CKPT IMAGE AUDIO X1 Y1 X2 Y2
    python -m bench._worker model-only IR_DIR IMAGE AUDIO X1 Y1 X2 Y2
    python -m bench._worker estimate IR_DIR IMAGE AUDIO
    python -m bench._worker intel-warm IR_DIR IMAGE AUDIO X1 Y1 X2 Y2

A process each, so that torch never shares a process (or its thread pools) with OpenVINO and each
stage's peak RSS (VmHWM) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.gunicorn import status_kb

if TYPE_CHECKING:  # imports openvino: not in the reference's process
    from harness.peers import IntelWarm

REPEATS = {"auto": 5, "int8": 5, "f32": 1}  # timed passes over the clip after one warm-up pass (median); f32 is 2–7× slower
DETECT_REPEATS = 5  # back-to-back detector calls (the served ones follow each timed generator pass)
PEER_REPEATS = 5  # timed requests to a peer after one warm-up request (median)


def vmhwm_mb() -> float:
    """This process's peak resident set (VmHWM) in MB."""
    return status_kb("self", "VmHWM") / 1024


def cores() -> int:
    return len(os.sched_getaffinity(0))


def reference(ckpt: Path, image: Path, audio: Path, box: tuple[int, int, int, int]) -> dict[str, object]:
    """The PyTorch eager baseline, cold: `timed_reference` loads the model itself, as inference.py does."""
    t0 = time.perf_counter()
    import torch

    from harness.reference import load_checkpoint, timed_reference

    torch.set_num_threads(cores())
    import_s = time.perf_counter() - t0
    result = timed_reference(ckpt, image, audio, box)
    t1 = time.perf_counter()
    load_checkpoint(ckpt)  # timed separately (after the run, file in page cache) to split load from compute
    load_s = time.perf_counter() - t1
    return {
        "seconds": result["seconds"],
        "frames": result["frames"],
        "model_load_s": load_s,
        "import_s": import_s,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": 128,
        "peak_rss_mb": vmhwm_mb(),
    }


def _ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def _one_precision(ir: Path, precision: str, frame: np.ndarray, mels: np.ndarray, face: np.ndarray) -> tuple[dict, list[np.ndarray]]:
    """Compile as the server does at `precision`; time passes over the clip, and the detector after each."""
    from wav2lip_core import Options, TalkingHead
    from wav2lip_core.config import Settings
    from wav2lip_core.detect import FaceFinder

    settings = replace(Settings(), models_dir=ir, cache_dir=None, precision=precision)
    t0 = time.perf_counter()
    lipsync = TalkingHead.load(settings=settings).lipsync
    compile_s = time.perf_counter() - t0
    gen = lipsync.generator
    finder = FaceFinder(lipsync.finder.detector, settings.detect_max_side, cache_size=0)  # no cache, downscaling as served
    detect = lambda: finder.find(frame, Options().pads)
    mouths = list(gen.run(mels, face))  # warm-up pass, also the crops compared across precisions
    times, detect_after = [], []
    for _ in range(REPEATS[precision]):
        times.append(_ms(lambda: sum(1 for _ in gen.run(mels, face))) / 1000)
        detect_after.append(_ms(detect))
    sec = statistics.median(times)
    result = {"precision": gen.precision, "batch": gen.batch, "threads": settings.threads(), "compile_s": compile_s,
              "seconds": sec, "fps": len(mels) / sec, "runs_s": times}  # fmt: skip
    back_to_back = [_ms(detect) for _ in range(DETECT_REPEATS)]
    result["detector"] = {"name": finder.detector.name, "ms": statistics.median(detect_after),
                          "ms_back_to_back": statistics.median(back_to_back), "box": list(detect()[0])}  # fmt: skip
    return result, mouths


def model_only(ir: Path, image: Path, audio: Path, box: tuple[int, int, int, int]) -> dict[str, object]:
    """The served generator alone (compiled by TalkingHead.load with the server's defaults) at auto, int8 and f32 precision,
    and the drift between them on the generated crops.

    Also the detector's own time on a new avatar: back to back, and once after each generator pass,
    which is how a server calls it (its threads have gone idle meanwhile).
    """
    import openvino as ov

    from wav2lip_core import audio as A
    from wav2lip_core.compose import face_input
    from wav2lip_core.config import Settings
    from wav2lip_core.image import decode_image
    from wav2lip_core.quantize import drift

    frame = decode_image(image.read_bytes(), Settings().max_image_pixels)
    sound = A.decode_audio(audio.read_bytes(), 600)
    mels = A.mel_chunks(A.melspectrogram(A.to_16k_mono(sound)), A.frame_count(sound.samples.shape[0], sound.sample_rate, 25.0), 25.0)
    face = face_input(frame, box)
    served, served_mouths = _one_precision(ir, "auto", frame, mels, face)
    int8, int8_mouths = _one_precision(ir, "int8", frame, mels, face)
    f32, f32_mouths = _one_precision(ir, "f32", frame, mels, face)
    for r in (int8, f32):
        del r["detector"]  # the detector is compiled f32 whatever the generator's precision
    mouths = lambda m: np.concatenate(m)
    return {
        "frames": len(mels), "openvino": ov.get_version(), "cores": cores(), "served": served, "int8": int8, "f32": f32,
        "detector": served.pop("detector"), "drift_served_vs_f32": drift(mouths(served_mouths), mouths(f32_mouths)),
        "drift_int8_vs_f32": drift(mouths(int8_mouths), mouths(f32_mouths)),
        "drift_int8_vs_served": drift(mouths(int8_mouths), mouths(served_mouths)), "peak_rss_mb": vmhwm_mb(),
    }  # fmt: skip


def mp4_frames(path: Path) -> int:
    """Video frames in an MP4, decoded with PyAV."""
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _checked_request(peer: IntelWarm, audio: Path) -> tuple[float, int]:
    """One timed request to the peer, and its MP4's frames (then removed); raises unless it holds every frame written."""
    t0 = time.perf_counter()
    mp4 = peer.inference(audio)
    seconds = time.perf_counter() - t0
    frames = mp4_frames(mp4)
    if frames != peer.written:
        raise RuntimeError(f"{mp4.name}: {frames} video frames, expected {peer.written} ({peer.generated} generated + the still)")
    mp4.unlink()
    return seconds, frames


def intel_warm(ir: Path, image: Path, audio: Path, box: tuple[int, int, int, int]) -> dict[str, object]:
    """Intel's digital-avatar OpenVINO backend (harness/peers.py), warm: built once, one warm-up request, then the median."""
    import openvino as ov

    from harness.peers import BATCH, IntelWarm

    t0 = time.perf_counter()
    with IntelWarm(ir, image, box) as peer:
        warm_s = time.perf_counter() - t0
        first, _ = _checked_request(peer, audio)
        runs = [_checked_request(peer, audio) for _ in range(PEER_REPEATS)]
        times = [sec for sec, _ in runs]
        result = {"seconds": statistics.median(times), "runs_s": times, "first_request_s": first, "warm_s": warm_s,
                  "frames": peer.generated, "mp4_frames": runs[-1][1], "precision": peer.precision, "batch": BATCH,
                  "threads": peer.compiled.get_property("INFERENCE_NUM_THREADS"), "openvino": ov.get_version()}  # fmt: skip
    return result | {"peak_rss_mb": vmhwm_mb()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("reference", "model-only", "intel-warm"):
        s = sub.add_parser(name)
        s.add_argument("model", type=Path, help="checkpoint (reference) or IR folder (model-only, intel-warm)")
        s.add_argument("image", type=Path)
        s.add_argument("audio", type=Path)
        s.add_argument("box", type=int, nargs=4, metavar="X1 Y1 X2 Y2")
    e = sub.add_parser("estimate", help="TalkingHead.estimate_seconds vs the measured generate time")
    for name in ("model", "image", "audio"):
        e.add_argument(name, type=Path)
    args = p.parse_args(argv)
    if args.cmd == "reference":
        result = reference(args.model, args.image, args.audio, tuple(args.box))
    elif args.cmd == "estimate":
        from bench.estimate import measure

        result = measure(args.model, args.image, args.audio)
    elif args.cmd == "intel-warm":
        result = intel_warm(args.model, args.image, args.audio, tuple(args.box))
    else:
        result = model_only(args.model, args.image, args.audio, tuple(args.box))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
