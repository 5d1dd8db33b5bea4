"""Command line: lip-sync one avatar to one audio file.

    python -m wav2lip_core --face avatar.jpg --audio speech.wav --out out.mp4 [--fps 25]
        [--box x1 y1 x2 y2] [--pads t b l r] [--paste box|feather]

The IR is read from $MODELS_DIR (default ir_models/); every other setting from the environment too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from .avatar import VIDEO_SUFFIXES, decode_video
from .config import Settings
from .errors import LipSyncError
from .pipeline import DEFAULT_PADS, LipSync, Options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wav2lip_core", description="Lip-sync an avatar image to speech (Wav2Lip on OpenVINO).")
    parser.add_argument(
        "--face", type=Path, required=True, help="avatar image (jpg, png, webp, bmp) or a short clip (mp4, webm, …) to loop"
    )
    parser.add_argument("--audio", type=Path, required=True, help="speech: wav, mp3, ogg, opus, flac, webm or m4a")
    parser.add_argument("--out", type=Path, required=True, help="output .mp4")
    parser.add_argument("--fps", type=float, help="output frame rate (default: 25 for an image, the clip's own for a video)")
    parser.add_argument(
        "--box", type=int, nargs=4, metavar=("X1", "Y1", "X2", "Y2"), help="face box in pixels (x2, y2 exclusive); skips detection"
    )
    parser.add_argument("--pads", type=int, nargs=4, metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"), default=list(DEFAULT_PADS))
    parser.add_argument("--paste", choices=["box", "feather"], default="box")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        image, audio = args.face.read_bytes(), args.audio.read_bytes()
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        lipsync = LipSync.load(Settings.from_env())
        is_video = args.face.suffix.lower() in VIDEO_SUFFIXES
        fps = args.fps or (decode_video(image, lipsync.settings.max_image_pixels)[1] if is_video else 25.0)
        options = Options(fps=fps, pads=tuple(args.pads), box=tuple(args.box) if args.box else None, paste=args.paste)
        with tqdm(unit="frame", desc="lip-sync") as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            run = lipsync.run_video if is_video else lipsync.run
            result = run(image, audio, options, progress=progress)
    except (LipSyncError, ValueError) as e:
        print(f"error: {getattr(e, 'message', e)}", file=sys.stderr)
        return 2
    args.out.write_bytes(result.mp4)
    timings = ", ".join(f"{k} {v:.0f} ms" for k, v in result.timings_ms.items())
    print(f"wrote {args.out}: {result.frames} frames, {result.width}×{result.height}, face box {list(result.face_box)} ({timings})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
