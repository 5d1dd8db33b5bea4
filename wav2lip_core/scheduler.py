"""One place per process that decides what the cores compute next: every render asks it for a turn
before each generator batch.

The generator saturates every core with one batch at a time, so sharing the CPU among renders is
a question of *which render's batch goes next*. A render (whole answer, stream, job, dubbing)
carries a `Pace` that says when each of its frames is due; before each batch it asks `turn()`, and
the scheduler hands the next free slot to the waiting batch with the best claim, in this order:

1. **urgent stream batches**, earliest due first: a stream's frame k is due at its first byte +
   PLAYER_BUFFER_S + k / fps; its first batch is due at once (a new stream starts within about
   one batch time, whatever else runs). "Urgent" means due within URGENT_S.
2. **whole answers**, oldest first: they take what streams leave.
3. **streams working ahead** (due later than URGENT_S): spare time builds their lead.
4. **jobs**, oldest first: only when nothing else waits.

A slot is held from `start_async` until that batch's inference completes (OpenVINO's callback), so
a batch waits at most for the `slots` batches already computing. A waiting render polls its `check`
(deadline, client gone) every few ms: a gone client frees its place in the line at once.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["stream", "whole", "job"]
PLAYER_BUFFER_S = 0.2  # what a player holds before it starts playing: frame k is due at first byte + this + k / fps
URGENT_S = 1.0  # a stream batch due within this comes before whole answers; one due later works ahead
WAIT_POLL_S = 0.005  # a waiting batch runs its `check` this often
_CLASS = {"whole": 1, "job": 3}  # stream batches are class 0 (urgent) or 2 (ahead)


@dataclass(eq=False)
class Pace:
    """When a render's frames are due: what the scheduler orders batches by."""

    kind: Kind = "whole"
    fps: float = 25.0
    arrival: float = field(default_factory=time.monotonic)
    started: float | None = None  # a stream's first byte (monotonic): its playback clock starts here
    shared: bool = False  # another render was running at some point while this one was
    waited_s: float = 0.0  # time its batches spent waiting for a turn

    def due(self, frame: int) -> float:
        """The instant frame `frame` must be out: a stream's playback time; else the arrival (first come, first served)."""
        if self.kind != "stream" or self.started is None:
            return self.arrival
        return self.started + PLAYER_BUFFER_S + frame / self.fps

    def start_playback(self, at: float | None = None) -> None:
        """A stream's first byte has gone out: from now its frames are due at playback time."""
        self.started = time.monotonic() if at is None else at


@dataclass(eq=False)
class Turn:
    """One batch's slot: `release()` (idempotent) when its inference has completed or was cancelled."""

    scheduler: Scheduler
    released: bool = False

    def release(self) -> None:
        self.scheduler._release(self)


@dataclass(eq=False)
class _Waiter:
    pace: Pace
    frame: int
    seq: int
    granted: Turn | None = None

    def key(self, now: float) -> tuple[int, float, int]:
        if self.pace.kind == "stream":
            due = self.pace.due(self.frame)
            return (0 if due - now <= URGENT_S else 2, due, self.seq)
        return (_CLASS[self.pace.kind], self.pace.arrival, self.seq)


class Scheduler:
    """Hands out `slots` generator turns at a time to the waiting batch with the best claim (see the module doc)."""

    def __init__(self, slots: int):
        self.slots = slots
        self._free = slots
        self._waiting: list[_Waiter] = []
        self._active: set[Pace] = set()
        self._seq = itertools.count()
        self._cond = threading.Condition()

    def join(self, pace: Pace) -> None:
        """A render starts: from now on it is counted (and it and the others running are marked `shared`)."""
        with self._cond:
            if self._active:
                pace.shared = True
                for other in self._active:
                    other.shared = True
            self._active.add(pace)

    def leave(self, pace: Pace) -> None:
        """A render has ended (idempotent)."""
        with self._cond:
            self._active.discard(pace)

    @property
    def active(self) -> int:
        """Renders in progress."""
        return len(self._active)

    def turn(self, pace: Pace, frame: int, check: Callable[[], None] = lambda: None) -> Turn:
        """Wait for a slot for the batch that starts at `frame`; `check` runs while waiting (what it raises leaves the line)."""
        t0 = time.monotonic()
        with self._cond:
            waiter = _Waiter(pace, frame, next(self._seq))
            self._waiting.append(waiter)
            self._grant()
        try:
            while True:
                with self._cond:
                    if waiter.granted is None:
                        self._cond.wait(WAIT_POLL_S)
                    if waiter.granted is not None:
                        pace.waited_s += time.monotonic() - t0
                        return waiter.granted
                check()
        except BaseException:
            with self._cond:
                if waiter.granted is not None:  # granted just as check() raised: hand it on
                    self._release_locked(waiter.granted)
                else:
                    self._waiting.remove(waiter)
            raise

    def _grant(self) -> None:
        """Give free slots to the best waiters (lock held)."""
        now = time.monotonic()
        while self._free and self._waiting:
            best = min(self._waiting, key=lambda w: w.key(now))
            self._waiting.remove(best)
            self._free -= 1
            best.granted = Turn(self)
        self._cond.notify_all()

    def _release(self, turn: Turn) -> None:
        with self._cond:
            self._release_locked(turn)

    def _release_locked(self, turn: Turn) -> None:
        if turn.released:
            return
        turn.released = True
        self._free += 1
        self._grant()

    def describe(self) -> dict[str, int]:
        """Slots, slots computing, batches waiting and renders in progress: for /health."""
        with self._cond:
            return {"slots": self.slots, "computing": self.slots - self._free, "waiting": len(self._waiting), "renders": len(self._active)}
