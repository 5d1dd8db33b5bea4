"""The scheduler's line (who computes next) and stream admission by real-time capacity: exact invariants, no timing."""

from __future__ import annotations

import threading
import time

import pytest

from lipsync_server.gate import Capacity
from wav2lip_core.errors import Busy, ClientGone
from wav2lip_core.scheduler import PLAYER_BUFFER_S, URGENT_S, Pace, Scheduler


def queue_up(scheduler: Scheduler, entries: list[tuple[str, Pace, int]]) -> tuple[list[str], list[threading.Thread]]:
    """Each entry waits for a turn in its own thread (in list order); `granted` lists names as turns are given."""
    granted: list[str] = []
    threads = []
    for name, pace, frame in entries:

        def wait(name: str = name, pace: Pace = pace, frame: int = frame) -> None:
            turn = scheduler.turn(pace, frame)
            granted.append(name)
            time.sleep(0.01)
            turn.release()

        t = threading.Thread(target=wait)
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 5
        while scheduler.describe()["waiting"] < len(threads) and time.monotonic() < deadline:
            time.sleep(0.001)
    return granted, threads


def test_the_line_urgent_streams_then_whole_then_ahead_streams_then_jobs() -> None:
    scheduler = Scheduler(slots=1)
    blocker = scheduler.turn(Pace(), 0)  # the only slot: everyone below waits
    now = time.monotonic()
    playing = Pace("stream", fps=25.0, started=now - PLAYER_BUFFER_S)  # frame k due at now + k/25
    ahead_frame = int((URGENT_S + 1.0) * 25)  # due 2 s from now: working ahead
    granted, threads = queue_up(scheduler, [
        ("job", Pace("job"), 0),
        ("ahead", playing, ahead_frame),
        ("whole-old", Pace(arrival=now - 1.0), 0),
        ("whole-new", Pace(arrival=now), 0),
        ("urgent-late", playing, 10),  # due in 0.4 s
        ("new-stream", Pace("stream"), 0),  # its first batch: due at its arrival, i.e. now
    ])  # fmt: skip
    blocker.release()
    for t in threads:
        t.join(5)
    assert granted == ["new-stream", "urgent-late", "whole-old", "whole-new", "ahead", "job"]


def test_a_waiter_whose_check_raises_leaves_the_line_and_no_slot_leaks() -> None:
    scheduler = Scheduler(slots=1)
    blocker = scheduler.turn(Pace(), 0)
    gone = threading.Event()

    def check() -> None:
        if gone.is_set():
            raise ClientGone("left")

    errors: list[BaseException] = []

    def wait() -> None:
        with pytest.raises(ClientGone) as raised:
            scheduler.turn(Pace("stream"), 0, check)
        errors.append(raised.value)

    waiter = threading.Thread(target=wait)
    waiter.start()
    gone.set()
    waiter.join(5)
    assert len(errors) == 1 and scheduler.describe()["waiting"] == 0
    blocker.release()
    blocker.release()  # idempotent: the slot is counted once
    assert scheduler.describe() == {"slots": 1, "computing": 0, "waiting": 0, "renders": 0}
    scheduler.turn(Pace(), 0).release()


def test_renders_that_overlap_are_marked_shared() -> None:
    scheduler = Scheduler(slots=2)
    alone, first, second = Pace(), Pace(), Pace()
    scheduler.join(alone)
    scheduler.leave(alone)
    scheduler.join(first)
    scheduler.join(second)
    scheduler.leave(first)
    scheduler.leave(second)
    assert (alone.shared, first.shared, second.shared) == (False, True, True) and scheduler.active == 0


def test_capacity_admits_while_the_streams_fit_then_retry_after_names_the_first_to_end() -> None:
    capacity = Capacity(limit=0.9, max_streams=8)
    with capacity.seat(0.3, 5.0), capacity.seat(0.3, 20.0):
        with capacity.seat(0.3, 60.0):
            with pytest.raises(Busy, match="3 streams use 90%") as refused, capacity.seat(0.3, 1.0):
                pass
            assert refused.value.retry_after == 5  # when the 5 s stream ends, 0.3 is free again
            assert capacity.streams == 3 and capacity.load == pytest.approx(0.9)
        assert capacity.streams == 2
    assert capacity.streams == 0 and capacity.load == 0


def test_capacity_resize_refuses_a_stream_that_turns_out_heavier() -> None:
    capacity = Capacity(limit=1.0, max_streams=8)
    with capacity.seat(0.6, 30.0), capacity.seat(0.2, 10.0) as seat:
        with pytest.raises(Busy):
            capacity.resize(seat, 0.5, 10.0)
        capacity.resize(seat, 0.4, 12.0)
        assert capacity.load == pytest.approx(1.0)


def test_a_stream_alone_is_admitted_however_heavy_and_a_second_one_is_not() -> None:
    capacity = Capacity(limit=0.85, max_streams=8)
    with capacity.seat(1.2, 5.0):  # slower than real time on this machine: it plays late, as it would anyway
        with pytest.raises(Busy) as refused, capacity.seat(0.1, 1.0):
            pass
        assert refused.value.retry_after == 5


def test_max_streams_bounds_the_count_whatever_the_load() -> None:
    capacity = Capacity(limit=1.0, max_streams=1)
    with capacity.seat(0.01, 3.0), pytest.raises(Busy, match="MAX_STREAMS") as refused, capacity.seat(0.01, 1.0):
        pass
    assert refused.value.retry_after == 3
