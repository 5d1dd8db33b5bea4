"""This worker's memory budget (WORKER_MEMORY_MB): work is admitted only when its estimated footprint fits.

What the kernel counts against a container's limit, and kills a worker for (with every request it
holds), is mostly private memory: `RssAnon`, the heap, numpy buffers and the encoders' frames. Not
the page cache of mapped frame files (wav2lip_core/frames.py), which every worker shares and the kernel reclaims.
So before a request decodes anything, its footprint is estimated from header facts (frame size,
frames, audio length) and compared with what is left of the budget: `503 memory_budget` with
`Retry-After` when running work holds the memory now, `422 exceeds_memory_budget` when this
request could never fit (the message says what to change). A job waits instead, as it waits for the
cores, until the memory is free, it is cancelled, or its deadline passes. The estimate is a sum of measured parts
(`make bench-footprint`, bench/results/footprint.json: each kind of work's peak in process beside its
estimate; `make bench-memory` for whole workloads through the server); the budget's default is a share
of the machine's (or the container's) memory per worker (wav2lip_core/config.py).

After large work glibc is asked to hand the freed heap back (`malloc_trim(0)`): it keeps what a
thread's arena once held otherwise, and a worker would stay at its largest request's size.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge

from wav2lip_core.errors import LimitExceeded, MemoryBusy

log = logging.getLogger(__name__)

MB = 1024 * 1024
# Each part measured in process (bench/footprint.py): a render's peak private memory over the idle worker's, rounded up:
RENDER_FIXED = 16 * MB  # a render's own besides frames: the encoders' state, mel windows, bookkeeping (measured 3–5 MB)
FRAME_BUFFERS = 12.0  # frame-sized (w × h × 3) buffers a render holds: the pasted copy, I420, x264's pictures (measured 11)
DECODER_BUFFERS = 8.0  # frame-sized buffers per open video decoder: its reference frames, BGR conversion (measured 7–7.7)
AUDIO_COPIES = 3  # float32 copies of the decoded audio: the samples, the AAC track's planar copy, resampling (measured 2.5)
MP4_BYTES_PER_PIXEL = 0.02  # a whole answer's MP4 per pixel and frame (measured 0.005 at 1080p, 0.011 at 512²: noise mouths)
MP4_COPIES = 4  # the whole MP4: read from its file, base64, the JSON body, the response
CLIP_GENERATOR = 80 * MB  # a worker's first video avatar compiles the whole generator network (measured ~70 MB)
TRIM_ABOVE = 32 * MB  # after work this large, malloc_trim(0): 1–2.5 ms, returns the 10–45 MB a render leaves in glibc's arenas
RETRY_SMOOTHING = 0.2  # weight of the newest hold time in the Retry-After estimate
WAIT_S = 0.1  # a job waiting for memory tries again at least this often (and whenever work ends)

BUDGET = Gauge("lipsync_memory_budget_bytes", "Worker memory budget (WORKER_MEMORY_MB)", multiprocess_mode="liveall")
PRIVATE = Gauge("lipsync_memory_private_bytes", "Worker private memory (RssAnon)", multiprocess_mode="liveall")
RESERVED = Gauge("lipsync_memory_reserved_bytes", "Estimated footprint of the work a worker runs", multiprocess_mode="liveall")
REFUSED = Counter("lipsync_memory_refused_total", "Work refused by the memory budget, by error code", ["code"])

_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's; absent elsewhere (musl, macOS)


def private_bytes(pid: int | str = "self") -> int:
    """Private resident memory (RssAnon) of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no RssAnon in /proc/{pid}/status (Linux ≥ 4.5 reports it)")


def trim() -> None:
    """Hand the heap's free pages back to the system (glibc); nothing elsewhere."""
    if _malloc_trim is not None:
        _malloc_trim(0)


@dataclass(frozen=True)
class Work:
    """What a piece of work will hold, from header facts only (nothing is decoded yet)."""

    width: int  # the rendered frame, after MAX_OUTPUT_SIDE
    height: int
    frames: int = 0  # frames made (output)
    audio_values: int = 0  # decoded audio samples × channels
    decoders: int = 0  # video decoders open while it renders (a dub: 2) or, with `renders` False, while it registers (1)
    whole: bool = False  # the MP4 kept until its end (an answer, a job, an idle loop), not streamed
    renders: bool = True  # False: a registration (decoding and detection only)
    compiles: bool = False  # the worker's first video avatar: the whole generator is compiled on the way

    def bytes(self) -> int:
        """The estimated private memory this work adds to a worker at its peak."""
        frame = self.width * self.height * 3
        buffers = FRAME_BUFFERS * self.renders + DECODER_BUFFERS * self.decoders
        mp4 = self.frames * self.width * self.height * MP4_BYTES_PER_PIXEL * MP4_COPIES if self.whole else 0
        audio = self.audio_values * 4 * AUDIO_COPIES
        return int(RENDER_FIXED + frame * buffers + audio + mp4 + CLIP_GENERATOR * self.compiles)

    def hint(self) -> str:
        """What to change so that it needs less."""
        parts = ["a shorter clip or audio"] if self.whole or self.audio_values else []
        return ", ".join([*parts, f"a lower resolution than {self.width}×{self.height} (or MAX_OUTPUT_SIDE)"])


class Budget:
    """Reservations against `limit` bytes of private memory; refusals are typed (memory_budget / exceeds_memory_budget)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.reserved = 0
        self._running = 0
        self._idle = private_bytes()  # private memory with no work running: the models, the caches
        self._recent_s = 5.0  # how long work holds its reservation, smoothed: the Retry-After
        self._cond = threading.Condition()
        BUDGET.set(limit)

    def reserve(self, work: Work, what: str, wait: Callable[[], None] | None = None) -> Reservation:
        """Reserve `work`'s footprint, or raise the refusal that says why and what to change. With `wait` (background
        work: a job), work that fits once running work ends waits for it, calling `wait()` between tries (it raises to stop)."""
        need = work.bytes()
        while True:
            with self._cond:
                refusal = self._refusal(need, what, work)
                if refusal is None:
                    self.reserved += need
                    self._running += 1
                    self.report()
                    return Reservation(self, need)
                if wait is None or isinstance(refusal, LimitExceeded):
                    REFUSED.labels(code=refusal.code).inc()
                    raise refusal
                self._cond.wait(WAIT_S)
            wait()

    def _refusal(self, need: int, what: str, work: Work) -> LimitExceeded | MemoryBusy | None:
        """None if `need` fits now; else why not (the lock is held)."""
        now = private_bytes()
        if not self._running:
            self._idle = now
        if self._idle + need > self.limit:
            return LimitExceeded(self._message(what, need, self._idle, work), code="exceeds_memory_budget")
        used = max(now, self._idle + self.reserved)
        if used + need <= self.limit:
            return None
        after = max(1, math.ceil(self._recent_s))
        return MemoryBusy(f"{self._message(what, need, used, work)}; other work holds the rest: retry in {after} s", retry_after=after)

    def _message(self, what: str, need: int, used: int, work: Work) -> str:
        return (f"{what} needs ~{need / MB:.0f} MB of memory; {max(0, self.limit - used) / MB:.0f} MB of this worker's "
                f"{self.limit / MB:.0f} MB (WORKER_MEMORY_MB) is free: send {work.hint()}, or give each worker more memory "
                "(WORKER_MEMORY_MB, fewer WEB_CONCURRENCY)")  # fmt: skip

    def release(self, need: int, held_s: float) -> None:
        with self._cond:
            self.reserved -= need
            self._running -= 1
            self._recent_s += RETRY_SMOOTHING * (held_s - self._recent_s)
            last = not self._running
            self._cond.notify_all()  # waiting jobs try again
        if last and need >= TRIM_ABOVE:
            trim()
        self.report()

    def report(self, now: int | None = None) -> int:
        """Private memory now (read, unless given), and the gauges set: for /metrics and /health."""
        now = private_bytes() if now is None else now
        PRIVATE.set(now)
        RESERVED.set(self.reserved)
        return now

    def describe(self) -> dict[str, float]:
        """For /health (the gauges are refreshed too): budget, private memory now and at idle, reserved, in MB."""
        now = self.report()
        return {"budget_mb": round(self.limit / MB), "private_mb": round(now / MB, 1), "idle_private_mb": round(self._idle / MB, 1),
                "reserved_mb": round(self.reserved / MB, 1), "running": self._running}  # fmt: skip


class Reservation:
    """A reservation held until `release()` (idempotent), or for a `with` block."""

    def __init__(self, budget: Budget, need: int):
        self.budget, self.need = budget, need
        self._t0 = time.monotonic()
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self.budget.release(self.need, time.monotonic() - self._t0)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
