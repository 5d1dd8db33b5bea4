"""Prometheus metrics, correct under several gunicorn workers (prometheus_client multiprocess mode).

gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before any worker imports this module; without it
(a single process, tests) the default registry is used.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

if TYPE_CHECKING:
    from wav2lip_core.schema import Result

REQUESTS = Counter("lipsync_requests_total", "API requests by HTTP status", ["status"])
LATENCY = Histogram("lipsync_request_seconds", "API request latency", buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 300))
FRAMES = Counter("lipsync_frames_generated_total", "Video frames generated")
IN_FLIGHT = Gauge("lipsync_in_flight_requests", "Requests being computed", multiprocess_mode="livesum")
CACHE = Counter("lipsync_face_cache_total", "Face box lookups by outcome", ["outcome"])
FIRST_BYTE = Histogram(
    "lipsync_stream_first_byte_seconds", "Streams: request start to the first body byte", buckets=(0.05, 0.1, 0.2, 0.35, 0.5, 1, 2, 5, 10)
)
JOBS = Counter("lipsync_jobs_total", "Job runs by outcome (done, error, stopped, discarded, interrupted)", ["outcome"])
# For an autoscaler (docs/capacity.md): demand ÷ capacity is the share of real-time capacity the playing streams use.
CAPACITY_FPS = Gauge(
    "lipsync_stream_capacity_fps", "Frames/s (512² still) the streams of a worker may use together", multiprocess_mode="livesum"
)
DEMAND_FPS = Gauge("lipsync_stream_demand_fps", "Frames/s (512² still) the playing streams need", multiprocess_mode="livesum")
STREAMS = Counter("lipsync_streams_total", "Streamed replies by outcome (completed, aborted by the client, failed)", ["outcome"])


def observe(status: int, seconds: float) -> None:
    """Count one API response and its latency."""
    REQUESTS.labels(status=str(status)).inc()
    LATENCY.observe(seconds)


def record_result(result: Result) -> None:
    """Count the frames of a successful request and whether the face box came from the cache."""
    FRAMES.inc(result.frames)
    if result.face_source != "box":
        CACHE.labels(outcome="hit" if result.face_source == "cache" else "miss").inc()


def record_stream(outcome: str, frames_sent: int) -> None:
    """Count one stream's end and the frames that went out."""
    STREAMS.labels(outcome=outcome).inc()
    FRAMES.inc(frames_sent)


@contextmanager
def in_flight() -> Iterator[None]:
    IN_FLIGHT.inc()
    try:
        yield
    finally:
        IN_FLIGHT.dec()


def render() -> tuple[bytes, str]:
    """The exposition text of all workers (multiprocess) or of this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
