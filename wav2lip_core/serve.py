"""What every route that computes shares (app.py's and the drop-in routes of compat.py): this worker's
registry, gate and settings; a lip-sync or a registration computed inside the gate and counted; the
MP4 as the answer, whole or streamed. Bodies are read and validated before the gate: an upload never holds a slot.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from functools import partial
from typing import Any

from flask import Response, current_app, g, request

from . import metrics
from .config import Settings
from .gate import Gate
from .payload import AvatarRequest, GenerateRequest
from .registry import Registry
from .schema import Result
from .stream import StreamBody, client_gone
from .web import check_body, log_fields


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
    """A streamed reply: the slot is taken and the first batch made here; the body holds the slot until
    it ends or the client goes (stream.py). Logged and counted when the body is closed."""
    registry, gate, settings = ready()
    hold = ExitStack()
    try:
        waited = hold.enter_context(gate.admit())
        hold.enter_context(metrics.in_flight())
        gone = partial(client_gone, request.environ.get("gunicorn.socket"))  # no socket (a test client): never gone
        render = registry.start(req, deadline=time.monotonic() + settings.request_timeout_s, gone=gone)
        hold.callback(render.close)
        body = StreamBody(render, hold, g.t0, g.request_id)
    except BaseException:
        hold.close()
        raise
    waited_ms = round(waited * 1000, 1)
    log_fields(frames=render.frames, face_source=render.avatar.face_source, wait_ms=waited_ms, timings_ms=timings(render.clock.ms))
    g.stream = body.stats
    return Response(body, headers=body.headers(), content_type=body.content_type)


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
