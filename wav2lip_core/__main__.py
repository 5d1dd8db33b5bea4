"""Command line: lip-sync one avatar (image or short clip) to one audio file, without a server.

    python -m wav2lip_core --face test_assets/astronaut.jpg --audio test_assets/speech.wav --out out.mp4

The IR is read from --models (default: $MODELS_DIR or ir_models/); every other setting from the
environment, as the server does. The per-request options (--fps, --pads, --box, --paste, --loop, --start-frame)
come from the one request schema, `schema.Options`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from .api import TalkingHead
from .config import Settings
from .errors import LipSyncError
from .schema import Options, add_cli_arguments


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wav2lip_core", description="Lip-sync an avatar to speech (Wav2Lip on OpenVINO).")
    parser.add_argument("--face", type=Path, required=True, help="avatar image (jpg, png, webp, bmp) or a short clip (mp4, webm, …)")
    parser.add_argument("--audio", type=Path, required=True, help="speech: wav, mp3, ogg, opus, flac, webm or m4a")
    parser.add_argument("--out", type=Path, required=True, help="output .mp4")
    parser.add_argument("--models", type=Path, help="IR folder (default: $MODELS_DIR, else ir_models)")
    add_cli_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        options = Options.from_cli(args)
        head = TalkingHead.load(args.models, settings=Settings.from_env())
        with tqdm(unit="frame", desc="lip-sync") as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = head.render(args.audio, args.face, options, args.out, progress=progress)
    except (LipSyncError, ValueError, OSError) as e:
        print(f"error: {getattr(e, 'message', e)}", file=sys.stderr)
        return 2
    timings = ", ".join(f"{k} {v:.0f} ms" for k, v in result.timings_ms.items())
    print(f"wrote {args.out}: {result.frames} frames, {result.width}×{result.height}, face box {list(result.face_box)}, "
          f"end frame {result.end_frame} ({timings})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
