"""Admission control for one worker: a few requests compute, a few wait, the rest get 503 at once.

A request over the limit is refused before it queues, so a burst cannot pile up behind a slow
generation; its `Busy` error carries a Retry-After estimated from recent request times.

Background work (async jobs) takes a slot only while no request waits for one, and gives it up
between batches as soon as one does (`pause`): a job never delays an interactive request by more
than the batch it is computing, and it has the cores to itself when nobody is waiting.
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
        self._running = running
        self._limit = running + queued
        self._wait_s = wait_s
        self._held = 0  # slots held, by requests and background work
        self._admitted = 0  # requests computing or waiting
        self._waiting = 0  # requests waiting for a slot: background work gives way to them
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
            self._waiting += 1
            queued = time.monotonic()
            free = self._cond.wait_for(lambda: self._held < self._running, timeout=self._wait_s)
            self._waiting -= 1
            if not free:
                self._admitted -= 1
                self._cond.notify_all()  # background work may go on
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

    @contextmanager
    def background(self) -> Iterator[None]:
        """Hold a slot for background work, taken only when no request waits; call `pause()` between steps."""
        self._take_background()
        try:
            yield
        finally:
            with self._cond:
                self._held -= 1
                self._cond.notify_all()

    def pause(self) -> None:
        """Inside `background()`: if a request waits, let it have the slot and take it back after. Cheap otherwise."""
        if not self._waiting:  # read without the lock: a hint, checked again below
            return
        with self._cond:
            self._held -= 1
            self._cond.notify_all()
        self._take_background()

    def _take_background(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._waiting == 0 and self._held < self._running)
            self._held += 1
