"""Wav2Lip generator on OpenVINO: batches of (mel, face) → 96×96 mouth crops, double-buffered.

Two infer requests alternate, so while the caller pastes and encodes batch k the CPU plugin is
already computing batch k+1. The IR is compiled once per process with a static batch shape.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import openvino as ov

from .compose import to_mouths

log = logging.getLogger(__name__)


def cpu_properties(core: ov.Core, precision: str, threads: int) -> dict[str, object]:
    """CPU plugin settings: explicit threads, no pinning (several workers share the cores)."""
    if precision == "auto":
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        precision = "bf16" if "BF16" in caps else "f32"
    return {
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": precision,
        "ENABLE_CPU_PINNING": False,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }


class Generator:
    """The compiled generator; `run()` streams mouths for a sequence of mel chunks."""

    def __init__(self, compiled: ov.CompiledModel, batch: int, properties: dict[str, object]):
        self.compiled = compiled
        self.batch = batch
        self.properties = properties

    @classmethod
    def load(cls, core: ov.Core, xml: Path, batch: int, properties: dict[str, object]) -> Generator:
        """Read the IR, fix its batch, compile it with `properties`."""
        model = core.read_model(xml)
        model.reshape({"mel": [batch, 1, 80, 16], "face": [batch, 6, 96, 96]})
        compiled = core.compile_model(model, "CPU", properties)
        actual = {k: str(compiled.get_property(k)) for k in ("INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT", "NUM_STREAMS")}
        log.info("generator compiled: batch %d, %s", batch, actual)
        return cls(compiled, batch, properties)

    @property
    def precision(self) -> str:
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def run(self, mels: np.ndarray, face: np.ndarray, check: Callable[[], None] = lambda: None) -> Iterator[np.ndarray]:
        """Yield (n, 96, 96, 3) uint8 BGR mouths for mels (N, 80, 16) and one face input (6, 96, 96).

        `check` is called before each batch is submitted (the deadline hook); it may raise.
        """
        faces = np.ascontiguousarray(np.broadcast_to(face, (self.batch, *face.shape)))
        requests = [self.compiled.create_infer_request() for _ in range(2)]
        pending: deque[tuple[ov.InferRequest, int]] = deque()
        try:
            for k, start in enumerate(range(0, len(mels), self.batch)):
                check()
                chunk = mels[start : start + self.batch]
                n = len(chunk)
                if n < self.batch:  # static shape: pad the last batch with copies of its last chunk
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - n, axis=0)])
                request = requests[k % 2]
                request.start_async({"mel": chunk[:, None], "face": faces})
                pending.append((request, n))
                if len(pending) == 2:
                    yield self._take(*pending.popleft())
            while pending:
                yield self._take(*pending.popleft())
        finally:
            for request, _ in pending:  # abandoned (error or deadline): let the CPU finish cleanly
                request.wait()

    @staticmethod
    def _take(request: ov.InferRequest, n: int) -> np.ndarray:
        request.wait()
        return to_mouths(request.get_output_tensor(0).data[:n])
