"""Admission control for one worker: a few requests compute, a few wait, the rest get 503 at once.

A request over the limit is refused before it queues, so a burst cannot pile up behind a slow
generation; its `Busy` error carries a Retry-After estimated from recent request times.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import Busy

_FIRST_ESTIMATE_S = 5.0  # Retry-After before any request has finished
_SMOOTHING = 0.2  # weight of the newest request time in the moving average


class Gate:
    """At most `running` requests compute and `queued` wait; anyone beyond gets `Busy` at once."""

    def __init__(self, running: int, queued: int, wait_s: float):
        self._slots = threading.BoundedSemaphore(running)
        self._admitted = 0
        self._limit = running + queued
        self._wait_s = wait_s
        self._lock = threading.Lock()
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
        with self._lock:
            if self._admitted >= self._limit:
                raise self._busy(f"{self._admitted} requests in progress or queued")
            self._admitted += 1
        try:
            queued = time.monotonic()
            if not self._slots.acquire(timeout=self._wait_s):
                raise self._busy(f"waited {self._wait_s:g} s for a free slot")
            t0 = time.monotonic()
            try:
                yield t0 - queued
            finally:
                self._slots.release()
                with self._lock:
                    self._recent_s += _SMOOTHING * (time.monotonic() - t0 - self._recent_s)
        finally:
            with self._lock:
                self._admitted -= 1
