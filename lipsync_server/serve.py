"""What every route that computes shares (app.py's and the drop-in routes of compat.py): this worker's
registry, gate and settings; a whole answer or a registration computed inside the gate, a stream
admitted by real-time capacity, each counted; the MP4 as the answer, whole or streamed. Bodies are
read and validated before admission: an upload never holds a slot or a seat.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from functools import partial
from typing import Any

from flask import Response, current_app, g, request

from wav2lip_core.avatar import STILL_FPS
from wav2lip_core.config import Settings
from wav2lip_core.cost import REFERENCE_PIXELS, CostModel
from wav2lip_core.scheduler import Pace
from wav2lip_core.schema import Result

from . import metrics
from .gate import Capacity, Gate
from .payload import AvatarRequest, GenerateRequest
from .registry import Registry
from .stream import StreamBody, client_gone
from .web import check_body, log_fields

PROVISIONAL_SECONDS = 10.0  # a stream's length before its audio is decoded: only for a Retry-After meanwhile


def ready(body: bool = False) -> tuple[Registry, Gate, Settings]:
    """This worker's registry, gate and settings; with a `body` to come, its headers are checked first."""
    gate: Gate = current_app.extensions["gate"]
    settings: Settings = current_app.extensions["settings"]
    if body:
        check_body(settings.max_request_bytes)
    return current_app.extensions["models"].ready(retry_after=gate.retry_after()), gate, settings


def lipsync(req: GenerateRequest) -> Result:
    """Render one validated request inside the gate, under the request deadline; counted in the metrics and the access log."""
    registry, gate, settings = ready()
    with gate.admit() as waited, metrics.in_flight():
        result = registry.generate(req, deadline=time.monotonic() + settings.request_timeout_s)
    metrics.record_result(result)
    log_fields(frames=result.frames, face_source=result.face_source, wait_ms=round(waited * 1000, 1), timings_ms=timings(result))
    return result


def stream(req: GenerateRequest) -> Response:
    """A streamed reply: a seat is taken (or 503 at once) and the first batch made here; the body holds the seat
    until it ends or the client goes (stream.py). Logged and counted when the body is closed."""
    registry, _, settings = ready()
    capacity: Capacity = current_app.extensions["capacity"]
    cost = registry.head.cost
    hold = ExitStack()
    try:
        seat = hold.enter_context(capacity.seat(*provisional_load(registry, req, cost)))
        hold.enter_context(metrics.in_flight())
        gone = partial(client_gone, request.environ.get("gunicorn.socket"))  # no socket (a test client): never gone
        pace = Pace("stream")
        render = registry.start(req, deadline=time.monotonic() + settings.request_timeout_s, gone=gone, pace=pace)
        hold.callback(render.close)
        avatar = render.avatar
        capacity.resize(seat, cost.stream_load(render.fps, avatar.width * avatar.height, avatar.still), render.frames / render.fps)
        report_capacity(capacity, cost)
        hold.callback(report_capacity, capacity, cost)  # after the seat is given back (callbacks run last first)
        body = StreamBody(render, hold, g.t0, g.request_id)
    except BaseException:
        hold.close()
        raise
    waited_ms = round(pace.waited_s * 1000, 1)  # the first batches' wait for their turn
    log_fields(frames=render.frames, face_source=render.avatar.face_source, wait_ms=waited_ms, load=round(seat.load, 3),
               timings_ms=timings(render.clock.ms))  # fmt: skip
    g.stream = body.stats
    return Response(body, headers=body.headers(), content_type=body.content_type)


def provisional_load(registry: Registry, req: GenerateRequest, cost: CostModel) -> tuple[float, float]:
    """A stream's load and length before anything is decoded: a registered avatar's size from its record, else a
    512² still; 10 s. Enough to refuse at once when full; `Capacity.resize` corrects it before the first frame."""
    pixels, still, fps = REFERENCE_PIXELS, True, req.options.fps or STILL_FPS
    if req.avatar_id is not None:
        record = registry.store.get(registry.store.resolve(req.avatar_id))
        pixels, still, fps = record["width"] * record["height"], record["kind"] == "image", req.options.fps or record["fps"]
    return cost.stream_load(fps, pixels, still), PROVISIONAL_SECONDS


def report_capacity(capacity: Capacity, cost: CostModel) -> dict[str, object]:
    """Streams, load, capacity and demand in frames/s of a 512² still: for /health, and as gauges for /metrics."""
    info = capacity.describe(cost.frame_seconds(REFERENCE_PIXELS))
    metrics.CAPACITY_FPS.set(info["capacity_fps"])
    metrics.DEMAND_FPS.set(info["demand_fps"])
    return info


def register(req: AvatarRequest) -> tuple[dict[str, Any], bool]:
    """Register one validated avatar inside the gate: (its record, True when new)."""
    registry, gate, _ = ready()
    with gate.admit(), metrics.in_flight():
        return registry.register(req.media, req.options, req.video)


def timings(result: Result | dict[str, float]) -> dict[str, float]:
    """Stage times in ms, rounded to 0.1 ms for the answer and the log."""
    ms = result if isinstance(result, dict) else result.timings_ms
    return {k: round(v, 1) for k, v in ms.items()}


def mp4_response(result: Result) -> Response:
    """The MP4 itself, its properties in headers."""
    headers = {"X-Frames": str(result.frames), "X-Face-Box": ",".join(map(str, result.face_box)), "X-End-Frame": str(result.end_frame)}
    return Response(result.mp4, mimetype="video/mp4", headers=headers)
