"""Wav2Lip generator on OpenVINO: batches of (mel, face) → 96×96 mouth crops, double-buffered.

For a still avatar the face half of the network sees the same input for every frame, so the
converter also writes it split: `wav2lip_face` runs once per request and `wav2lip_decoder` gets the
seven face features (batch 1, broadcast inside the graph) with each mel batch — ~10 % less work per
frame than the whole network. Infer requests (streams + 1) rotate, so while the caller pastes and
encodes batch k the CPU plugin computes the next ones. Compiled once per process with a static batch.
Every batch waits for its turn from the process's `Scheduler` (scheduler.py): several renders share
the cores batch by batch, in the order of their `Pace`.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .compose import to_mouths
from .scheduler import Pace, Scheduler, Turn

if TYPE_CHECKING:
    import openvino as ov


class Mels(Protocol):
    """(N, 80, 16) mel windows: an array, or audio.MelWindows computing them as they are sliced."""

    def __len__(self) -> int: ...
    def __getitem__(self, frames: slice, /) -> np.ndarray: ...


WAIT_POLL_MS = 5  # while a batch computes, `check` runs this often
FEATURE_CACHE = 32  # still avatars whose face-encoder features are kept (7 arrays, 1.2 MB per avatar)


class Generator:
    """The compiled generator; `run()` streams mouths for a sequence of mel chunks."""

    def __init__(
        self,
        compiled: ov.CompiledModel,
        batch: int,
        face_encoder: ov.CompiledModel | None = None,
        int8: bool = False,
        scheduler: Scheduler | None = None,
    ):
        self.compiled = compiled  # the whole network (inputs mel, face) or the decoder (mel, feat0…6)
        self.batch = batch
        # shared by every generator of the process (Runtime): one line for the cores; alone, its own
        self.scheduler = scheduler or Scheduler(slots(compiled))
        self.face_encoder = face_encoder
        self.int8 = int8  # the quantised IR: INT8 convolutions, the rest at the compiled precision
        self._features: OrderedDict[bytes, dict[str, np.ndarray]] = OrderedDict()  # a repeated avatar skips the encoder
        self._lock = threading.Lock()
        self._idle: queue.SimpleQueue[list[ov.InferRequest]] = queue.SimpleQueue()  # request sets of finished runs

    @property
    def precision(self) -> str:
        """`bf16`, `f32`, … or, for the quantised IR, `int8` with its float parts' precision: `int8+bf16`."""
        float_part = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        return f"int8+{float_part}" if self.int8 else float_part

    @property
    def split(self) -> bool:
        return self.face_encoder is not None

    def _constant_inputs(self, face: np.ndarray) -> dict[str, np.ndarray]:
        """The inputs that are the same for every batch of a still avatar (face features: cached per face)."""
        if self.face_encoder is None:
            return {"face": np.ascontiguousarray(np.broadcast_to(face, (self.batch, *face.shape)))}
        key = hashlib.blake2b(np.ascontiguousarray(face).data, digest_size=16).digest()  # ~0.1 ms; the encoder ~8 ms
        with self._lock:
            if key in self._features:
                self._features.move_to_end(key)
                return self._features[key]
        feats = self.face_encoder.create_infer_request().infer({"face": face[None]})
        out = {port.get_any_name(): np.array(feats[port]) for port in self.face_encoder.outputs}
        with self._lock:
            self._features[key] = out
            while len(self._features) > FEATURE_CACHE:
                self._features.popitem(last=False)
        return out

    def run(
        self,
        mels: Mels,
        face: np.ndarray,
        check: Callable[[], None] = lambda: None,
        index: np.ndarray | None = None,
        pace: Pace | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield (n, 96, 96, 3) uint8 BGR mouths for mels (N, 80, 16) and one face input (6, 96, 96).

        A video avatar passes `face` (n_src, 6, 96, 96) and `index` (N,): frame i uses face[index[i]]
        (whole network only). `check` is called before each batch is submitted, while it waits for its
        turn and while one computes (the deadline and client hook: what it raises stops the run and
        cancels the batches in flight). `pace` orders this run's batches among the others (a whole answer by default).
        """
        if index is not None and self.face_encoder is not None:
            raise ValueError("per-frame faces need the whole network, not the split generator")
        pace = pace or Pace()
        constant = self._constant_inputs(face) if index is None else {}
        requests = self._requests()
        in_flight = len(requests)
        for request in requests:
            request.set_callback(_release, None)  # a batch's turn ends when its inference does, whoever reads it
            for name, value in constant.items():
                request.get_tensor(name).data[...] = value  # constant for the whole clip: set once per request
        pending: deque[tuple[ov.InferRequest, int, Turn]] = deque()
        try:
            for k, start in enumerate(range(0, len(mels), self.batch)):
                check()
                n = min(self.batch, len(mels) - start)
                inputs = {"mel": self._padded(mels[start : start + n])[:, None]}
                if index is not None:
                    inputs["face"] = self._padded(face[index[start : start + n]])
                request = requests[k % in_flight]
                pending.append((request, n, self._submit(request, inputs, pace, start, check)))
                if len(pending) == in_flight:
                    yield self._take(*pending[0], check)
                    pending.popleft()
            while pending:
                yield self._take(*pending[0], check)
                pending.popleft()
        finally:  # abandoned (an error, the deadline, a client gone): stop what is still computing, at once
            for request, _, _ in pending:
                request.cancel()
            for request, _, turn in pending:
                _wait_cancelled(request)
                turn.release()  # a cancelled inference calls no callback
            self._idle.put(requests)

    def _submit(self, request: ov.InferRequest, inputs: dict[str, np.ndarray], pace: Pace, frame: int, check: Callable[[], None]) -> Turn:
        """Wait for this batch's turn, then start it; the turn is released by the completion callback."""
        turn = self.scheduler.turn(pace, frame, check)
        try:
            request.start_async(inputs, turn)
        except BaseException:
            turn.release()
            raise
        return turn

    def _requests(self) -> list[ov.InferRequest]:
        """A set of infer requests for one run (every stream busy + one being consumed), reused from an
        earlier run when one is free: their buffers are allocated and touched already."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return [self.compiled.create_infer_request() for _ in range(slots(self.compiled))]

    def _padded(self, x: np.ndarray) -> np.ndarray:
        """Static shape: pad a last, short batch with copies of its last item."""
        if len(x) == self.batch:
            return x
        return np.concatenate([x, np.repeat(x[-1:], self.batch - len(x), axis=0)])

    @staticmethod
    def _take(request: ov.InferRequest, n: int, turn: Turn, check: Callable[[], None]) -> np.ndarray:
        """The batch's mouths; `check` runs every few ms while it computes (a deadline or a gone client stops it)."""
        while not request.wait_for(WAIT_POLL_MS):
            check()
        turn.release()  # the callback has (or is about to); idempotent
        return to_mouths(request.get_output_tensor(0).data[:n])


def slots(compiled: ov.CompiledModel) -> int:
    """Batches in flight that keep every stream of the CPU plugin busy: one computing per stream, one more being read."""
    return int(compiled.get_property("NUM_STREAMS")) + 1


def _release(turn: Turn) -> None:
    """OpenVINO's completion callback (its own thread): the batch's slot goes to the next in line."""
    turn.release()


def _wait_cancelled(request: ov.InferRequest) -> None:
    """Wait for a cancelled request to stop; OpenVINO reports the cancellation itself as an error."""
    try:
        request.wait()
    except RuntimeError as e:
        if "canceled" not in str(e):
            raise
