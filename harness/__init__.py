"""What the tests, `make bench` and `make load` share, so each exists once.

`gunicorn`: the one way to start the real server on a loopback port, wait until every worker is
ready, find its workers and their memory, and stop it. `checkpoints`: seeded random weights in the
published on-disk formats. `reference`: the original Wav2Lip `inference.py` in PyTorch eager, the
independent "before" for the tests' PSNR and the bench's speed-up (its audio front end, torch-free,
in `wav2lip_audio`). `peers`: other OpenVINO Wav2Lip servers, transcribed for the bench to time
beside ours. `cdp`: headless Chromium driven over the DevTools protocol; `page`: the browser page
served, opened and made to speak in it. None of it ships in the image.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: gunicorn.conf.py, app.py, convert_to_openvino.py
ASSETS = ROOT / "test_assets"
