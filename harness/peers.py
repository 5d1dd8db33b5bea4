"""Other Wav2Lip servers on OpenVINO, transcribed so that the bench can time them beside ours.

`IntelWarm` is the Wav2Lip backend of Intel's digital-avatar reference use case: repository
intel/edge-developer-kit-reference-scripts, file
usecases/ai/digital-avatar/backend/wav2lip/wav2lip/ov_wav2lip.py (class `OVWav2Lip`; its audio.py is
Wav2Lip's own melspectrogram), for a still image and a given box, as its server holds it: warm (model
compiled, avatar read and cropped once), then one `inference(audio)` per request. A plain
transcription of what it does, not its code, on our converter's IR (`wav2lip.xml`: inputs `mel` and
`face`, output `mouth`; theirs are `audio_sequences` and `face_sequences`).

Kept on purpose, as they are what a request costs there:

- blocking calls to the compiled model, one per batch of 128 (no async infer requests, nothing
  overlapped); compiled with PERFORMANCE_HINT LATENCY and nothing else, so the CPU plugin picks the
  precision (bf16 where the CPU has it) and the threads;
- per chunk a copy of the full frame and the crop resized to 96²; per batch the mask and /255 in
  float64; the first batch made float32 (their torch.FloatTensor), the later ones handed to
  OpenVINO as transposed float64 arrays, as they are;
- every frame written to an AVI (DIVX, 25 fps) by cv2.VideoWriter, then the still frame once more
  (their loop for leftover avatar frames, which for a one-frame avatar writes it whenever more than
  one frame was generated), then `ffmpeg -y -i AUDIO -i result.avi -strict -2 -q:v 1 OUT.mp4` as a
  subprocess (libx264 and aac, ffmpeg's defaults).

Left out: face detection (the box is given), the compile cache folder (it changes only the warm-up's
compile), the audio duration (used for video avatars only), tqdm and torch.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import librosa
import numpy as np
import openvino as ov

from harness.wav2lip_audio import reference_chunks, reference_mel

BATCH = 128  # their wav2lip_batch_size
IMG_SIZE = 96
FPS = 25.0
SAMPLE_RATE = 16000
CONFIG = {"PERFORMANCE_HINT": "LATENCY"}  # their whole compile config
FFMPEG_TIMEOUT_S = 300.0

Box = tuple[int, int, int, int]  # x1, y1, x2, y2, x2/y2 exclusive (theirs: y1, y2, x1, x2)


@dataclass
class Batch:
    """One datagen batch, as their datagen yields it."""

    faces: np.ndarray  # (n, 96, 96, 6) float64 in 0–1: the crop with its lower half zeroed, then the crop (BGR)
    mels: np.ndarray  # (n, 80, 16, 1)
    frames: list[np.ndarray]  # a copy of the full frame per chunk, painted in place
    coords: list[tuple[int, int, int, int]]  # y1, y2, x1, x2 per frame


def _batch(faces: list[np.ndarray], mels: list[np.ndarray], frames: list[np.ndarray], coords: tuple[int, int, int, int]) -> Batch:
    img = np.asarray(faces)
    masked = img.copy()
    masked[:, IMG_SIZE // 2 :] = 0
    mel = np.asarray(mels)
    return Batch(np.concatenate((masked, img), axis=3) / 255.0, mel.reshape(len(mel), mel.shape[1], mel.shape[2], 1), frames,
                 [coords] * len(frames))  # fmt: skip


def datagen(frame: np.ndarray, face: np.ndarray, coords: tuple[int, int, int, int], chunks: Sequence[np.ndarray],
            batch: int = BATCH) -> Iterator[Batch]:  # fmt: skip
    """Their datagen for a still avatar: per chunk a frame copy and the crop resized; the mask and /255 per batch."""
    faces, mels, frames = [], [], []
    for chunk in chunks:
        frames.append(frame.copy())
        faces.append(cv2.resize(face, (IMG_SIZE, IMG_SIZE)))
        mels.append(chunk)
        if len(faces) >= batch:
            yield _batch(faces, mels, frames, coords)
            faces, mels, frames = [], [], []
    if faces:
        yield _batch(faces, mels, frames, coords)


def written_frames(generated: int) -> int:
    """Frames in their AVI for a still avatar: the generated ones, then the still once more unless exactly one was made."""
    return generated + (generated != 1)


class IntelWarm:
    """Intel's digital-avatar OVWav2Lip, warm, on a still image with a given box; its files in a temporary folder.

    `inference(audio)` is one request: the MP4's path, kept until the next `close()`.
    """

    def __init__(self, ir_dir: Path, image: Path, box: Box) -> None:
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(ir_dir / "wav2lip.xml"), "CPU", CONFIG)
        self.frame = cv2.imread(str(image))
        if self.frame is None:
            raise ValueError(f"cv2.imread could not read {image}")
        x1, y1, x2, y2 = box
        self.coords = (y1, y2, x1, x2)
        self.face = self.frame[y1:y2, x1:x2]
        self.workdir = Path(tempfile.mkdtemp(prefix="wav2lip-peer-intel-"))
        (self.workdir / "temp").mkdir()
        (self.workdir / "results").mkdir()
        self.generated = self.written = 0  # of the last request

    @property
    def precision(self) -> str:
        """The inference precision the CPU plugin compiled the generator at."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def inference(self, audio: Path) -> Path:
        """One request: mel, datagen, a blocking call per batch, frames into the AVI, ffmpeg muxes the MP4."""
        out = self.workdir / "results" / f"{uuid.uuid4()}.mp4"
        wav = librosa.load(str(audio), sr=SAMPLE_RATE)[0]
        chunks = reference_chunks(reference_mel(wav), FPS)
        avi = self.workdir / "temp" / "result.avi"
        writer, generated = None, 0
        for i, b in enumerate(datagen(self.frame, self.face, self.coords, chunks)):
            faces, mels = np.transpose(b.faces, (0, 3, 1, 2)), np.transpose(b.mels, (0, 3, 1, 2))
            if i == 0:
                faces, mels = np.ascontiguousarray(faces, np.float32), np.ascontiguousarray(mels, np.float32)
                writer = self._writer(avi)
            pred = self.compiled({"mel": mels, "face": faces})[0].transpose(0, 2, 3, 1) * 255.0
            for p, f, (y1, y2, x1, x2) in zip(pred, b.frames, b.coords, strict=True):
                f[y1:y2, x1:x2] = cv2.resize(p.astype(np.uint8), (x2 - x1, y2 - y1))
                writer.write(f)
                generated += 1
        if written_frames(generated) > generated:
            writer.write(self.frame)
        writer.release()
        self._mux(audio, avi, out)
        self.generated, self.written = generated, written_frames(generated)
        return out

    def _writer(self, avi: Path) -> cv2.VideoWriter:
        h, w = self.frame.shape[:2]
        writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"DIVX"), FPS, (w, h))
        if not writer.isOpened():
            raise RuntimeError(f"cv2.VideoWriter could not open {avi} (DIVX)")
        return writer

    @staticmethod
    def _mux(audio: Path, avi: Path, out: Path) -> None:
        """Their ffmpeg command (they send its output to /dev/null and ignore its status; a failure here raises)."""
        cmd = ["ffmpeg", "-y", "-i", str(audio), "-i", str(avi), "-strict", "-2", "-q:v", "1", str(out)]
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=FFMPEG_TIMEOUT_S, check=False)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"ffmpeg failed ({proc.returncode}):\n{proc.stderr[-2000:]}")

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> IntelWarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
