"""HTTP API: `POST /api/generate`, the avatar registry, health probes, metrics. Routes are thin; errors become JSON.

Run with `gunicorn -c gunicorn.conf.py app:app`: each worker compiles the IR after fork, in a
background thread, and `/health` answers 503 until the models are compiled and warmed. Request ids,
auth, CORS, the access log and error JSON are hooks in lipsync_server/web.py; admission is
lipsync_server/gate.py, what computes next wav2lip_core/scheduler.py; the lip-sync itself is
`TalkingHead` (wav2lip_core/api.py), as for any embedder.
"""

from __future__ import annotations

import base64
import os
import time

from flask import Flask, Response, current_app, g, jsonify, request

from lipsync_stores.backend import open_jobs
from wav2lip_core.avatar import media_type
from wav2lip_core.config import Settings
from wav2lip_core.schema import Result

from . import compat, job_routes, metrics, openapi
from .gate import Capacity, Gate
from .loader import Models
from .payload import parse_avatar, parse_generate
from .registry import IDLE_FILE
from .serve import lipsync, mp4_response, ready, register, report_capacity, stream, timings
from .web import install_hooks, read_body


def livez() -> Response:
    return jsonify({"status": "alive", "pid": os.getpid()})


def health() -> tuple[Response, int]:
    """200 once this worker's models are compiled and warm; 503 "loading" or "error" before."""
    models: Models = current_app.extensions["models"]
    if models.head is not None:
        streams = report_capacity(current_app.extensions["capacity"], models.head.cost)
        scheduler = models.head.runtime.scheduler.describe()
        return jsonify({"status": "ok", **models.describe(), "streams": streams, "scheduler": scheduler}), 200
    return jsonify({"status": "error" if models.error else "loading", "error": models.error, **models.describe()}), 503


def prometheus() -> Response:
    models: Models = current_app.extensions["models"]
    if models.registry is not None:
        models.registry.budget.report()  # this worker's private memory now (the others' as of their last work)
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


def generate() -> Response:
    """image / video / avatar_id + audio (JSON or multipart) → an MP4: in JSON (base64), raw with `Accept: video/mp4`,
    or fragmented and streamed as it is made with `"stream": true`."""
    ready(body=True)
    # Read and validate the body before taking a slot: a slow (or stalled) upload must not hold the
    # only compute slot, and a malformed request must not queue behind the running ones.
    req = parse_generate(read_body())
    if req.stream:  # a fragmented MP4 sent as it is made
        return stream(req)
    result = lipsync(req)
    if request.accept_mimetypes.best_match(["application/json", "video/mp4"]) == "video/mp4":
        return mp4_response(result)
    return _json_answer(result)


def register_avatar() -> tuple[Response, int]:
    """An image or a short video (JSON or multipart) → its avatar record: 201 when new, 200 when known."""
    ready(body=True)
    record, created = register(parse_avatar(read_body()))
    return jsonify(record), 201 if created else 200


def list_avatars() -> Response:
    return jsonify({"avatars": ready()[0].store.list()})


def get_avatar(avatar_id: str) -> Response:
    return jsonify(ready()[0].store.get(avatar_id))


def avatar_media(avatar_id: str) -> Response:
    """The original upload, as sent; cacheable by id (a page loops `idle.mp4`, which starts every loop at position 0)."""
    store = ready()[0].store
    kind = store.get(avatar_id)["kind"]
    data = store.media(avatar_id)
    resp = Response(data, mimetype=media_type(data, kind))
    resp.set_etag(avatar_id)
    resp.cache_control.max_age = 86400
    return resp.make_conditional(request)


def avatar_idle(avatar_id: str) -> Response:
    """The idle loop (ping-pong, no sound): loop it in a <video> and cut to a clip at its current position."""
    registry, gate, _ = ready()
    if registry.store.extra(avatar_id, IDLE_FILE) is None:
        with gate.admit():  # made once: encoding a loop is compute
            registry.idle(avatar_id)
    resp = Response(registry.idle(avatar_id), mimetype="video/mp4")
    resp.set_etag(f"{avatar_id}-idle")
    resp.cache_control.max_age = 86400  # an id names one content: its loop never changes
    return resp.make_conditional(request)


def delete_avatar(avatar_id: str) -> tuple[str, int]:
    ready()[0].store.delete(avatar_id)
    return "", 204


def _json_answer(result: Result) -> Response:
    """The MP4 as base64 with its properties; `timings_ms` gains the base64 step."""
    t0 = time.perf_counter()
    encoded = base64.b64encode(result.mp4).decode("ascii")
    stages = timings(result) | {"base64": round((time.perf_counter() - t0) * 1000, 1)}
    return jsonify({
        "video": encoded, "mime_type": "video/mp4", "duration_s": round(result.duration_s, 3), "fps": result.fps,
        "frames": result.frames, "width": result.width, "height": result.height, "face_box": list(result.face_box),
        "end_frame": result.end_frame, "timings_ms": stages, "request_id": g.request_id,
    })  # fmt: skip


def create_app(settings: Settings | None = None) -> Flask:
    """The WSGI app; models are loaded by `app.extensions['models'].start_loading()`."""
    settings = settings or Settings.from_env()
    app = Flask(__name__, static_folder=None)  # an API: no /static/ route (every route is in /openapi.json)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes  # 413 before the body is read
    app.json.sort_keys = False
    gate = Gate(settings.max_concurrent, settings.max_queue, settings.queue_timeout_s)
    jobs = open_jobs(settings)
    capacity = Capacity(settings.stream_capacity, settings.max_streams)
    models = Models(settings, jobs)
    app.extensions |= {"settings": settings, "models": models, "gate": gate, "capacity": capacity, "jobs": jobs}
    app.before_request(models.start_loading)  # no-op after the first call (gunicorn's post_worker_init calls it)
    install_hooks(app, settings)
    app.add_url_rule("/livez", view_func=livez)
    app.add_url_rule("/health", view_func=health)
    app.add_url_rule("/readyz", view_func=health)
    app.add_url_rule("/metrics", view_func=prometheus)
    app.add_url_rule("/api/generate", view_func=generate, methods=["POST"])
    app.add_url_rule("/api/avatars", view_func=register_avatar, methods=["POST"])
    app.add_url_rule("/api/avatars", view_func=list_avatars, methods=["GET"])
    app.add_url_rule("/api/avatars/<avatar_id>", view_func=get_avatar, methods=["GET"])
    app.add_url_rule("/api/avatars/<avatar_id>", view_func=delete_avatar, methods=["DELETE"])
    app.add_url_rule("/api/avatars/<avatar_id>/media", view_func=avatar_media, methods=["GET"])
    app.add_url_rule("/api/avatars/<avatar_id>/idle.mp4", view_func=avatar_idle, methods=["GET"])
    app.register_blueprint(job_routes.routes)
    app.register_blueprint(compat.routes)  # drop-in routes of the services existing clients were written for
    app.register_blueprint(openapi.routes)  # GET /openapi.json: every route above, described
    return app
