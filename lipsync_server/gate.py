"""Admission control for one worker: which requests may start at all (what computes next is wav2lip_core/scheduler.py's).

- Whole answers (and registrations): a few are admitted (`MAX_CONCURRENT`), a few wait (`MAX_QUEUE`),
  the rest get 503 at once, so a burst cannot pile up behind a slow generation; `Busy` carries a
  Retry-After estimated from recent request times (`Gate`).
- Streams: admitted while every admitted stream can keep real time (`Capacity`): each needs its
  frame rate × the measured cost of one of its frames (wav2lip_core/cost.py), in seconds of this worker's compute
  per second, and together they may use `STREAM_CAPACITY` of it. Beyond that: 503 at once, with a
  Retry-After that says when enough of the running streams will have ended.
- Jobs need no admission here: their batches come last in the scheduler's line.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from wav2lip_core.errors import Busy

_FIRST_ESTIMATE_S = 5.0  # Retry-After before any request has finished
_SMOOTHING = 0.2  # weight of the newest request time in the moving average


class Gate:
    """At most `running` requests compute and `queued` wait; anyone beyond gets `Busy` at once."""

    def __init__(self, running: int, queued: int, wait_s: float):
        self._running = running
        self._limit = running + queued
        self._wait_s = wait_s
        self._held = 0  # slots held
        self._admitted = 0  # requests computing or waiting
        self._cond = threading.Condition()
        self._recent_s = _FIRST_ESTIMATE_S  # moving average of the time a slot is held

    def retry_after(self) -> int:
        """Whole seconds a refused client should wait: the recent request time, at least 1."""
        return max(1, math.ceil(self._recent_s))

    def _busy(self, why: str) -> Busy:
        after = self.retry_after()
        return Busy(f"server busy: {why}; retry in {after} s", retry_after=after)

    @contextmanager
    def admit(self) -> Iterator[float]:
        """Hold a compute slot for the block, or raise `Busy` (at once when full, else after `wait_s`).
        Gives the seconds spent waiting for the slot."""
        with self._cond:
            if self._admitted >= self._limit:
                raise self._busy(f"{self._admitted} requests in progress or queued")
            self._admitted += 1
            queued = time.monotonic()
            free = self._cond.wait_for(lambda: self._held < self._running, timeout=self._wait_s)
            if not free:
                self._admitted -= 1
                raise self._busy(f"waited {self._wait_s:g} s for a free slot")
            self._held += 1
        t0 = time.monotonic()
        try:
            yield t0 - queued
        finally:
            with self._cond:
                self._held -= 1
                self._admitted -= 1
                self._recent_s += _SMOOTHING * (time.monotonic() - t0 - self._recent_s)
                self._cond.notify_all()


@dataclass(eq=False)
class Seat:
    """One admitted stream: its `load` (compute seconds per second) and when its playback ends (monotonic)."""

    load: float
    ends: float


class Capacity:
    """Streams are admitted while their summed load stays within `limit` (and there are fewer than `max_streams`)."""

    def __init__(self, limit: float, max_streams: int):
        self.limit = limit
        self.max_streams = max_streams
        self._seats: set[Seat] = set()
        self._lock = threading.Lock()

    @property
    def load(self) -> float:
        """What the admitted streams need, as a fraction of this worker's compute."""
        return sum(seat.load for seat in self._seats)

    @property
    def streams(self) -> int:
        return len(self._seats)

    @contextmanager
    def seat(self, load: float, seconds: float) -> Iterator[Seat]:
        """Hold a seat for a stream of `load` that plays `seconds`, or raise `Busy` at once; `resize()` it once known better."""
        with self._lock:
            self._check(load, None)
            seat = Seat(load, time.monotonic() + seconds)
            self._seats.add(seat)
        try:
            yield seat
        finally:
            with self._lock:
                self._seats.discard(seat)

    def resize(self, seat: Seat, load: float, seconds: float) -> None:
        """The stream's real load and length (known once its avatar and audio are decoded); `Busy` if it no longer fits."""
        with self._lock:
            self._check(load, seat)
            seat.load, seat.ends = load, time.monotonic() + seconds

    def _check(self, load: float, replacing: Seat | None) -> None:
        """`Busy` unless the stream fits beside the others; alone, a stream is always admitted (on a machine too
        slow for real time it plays late, as it would have anyway)."""
        others = [s for s in self._seats if s is not replacing]
        if len(others) >= self.max_streams:
            raise self._busy(others, load, f"{len(others)} streams are playing, the most this worker takes (MAX_STREAMS)")
        used = sum(s.load for s in others)
        if others and used + load > self.limit:
            raise self._busy(
                others, load, f"{len(others)} streams use {used:.0%} of this worker's real-time capacity; one more needs {load:.0%}"
            )

    def _busy(self, others: list[Seat], load: float, why: str) -> Busy:
        after = self._retry_after(others, load)
        return Busy(f"server busy: {why}; retry in {after} s", retry_after=after)

    def _retry_after(self, others: list[Seat], load: float) -> int:
        """Whole seconds until enough of the running streams have ended for this one to fit (at least 1)."""
        now, used, count = time.monotonic(), sum(s.load for s in others), len(others)
        for seat in sorted(others, key=lambda s: s.ends):
            used, count = used - seat.load, count - 1
            if (count == 0 or used + load <= self.limit) and count < self.max_streams:
                return max(1, math.ceil(seat.ends - now))
        return 1  # unreachable: with every other stream ended it fits

    def describe(self, frame_s: float) -> dict[str, object]:
        """For /health: streams, load, and the same in frames/s of a frame that costs `frame_s` (a 512² still)."""
        with self._lock:
            load, streams = self.load, self.streams
        return {
            "streams": streams, "max_streams": self.max_streams, "load": round(load, 3), "limit": self.limit,
            "capacity_fps": round(self.limit / frame_s, 1), "demand_fps": round(load / frame_s, 1),
        }  # fmt: skip
