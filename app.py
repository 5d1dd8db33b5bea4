"""HTTP API: `POST /api/generate`, health probes, metrics. Routes are thin; errors become JSON.

Run with `gunicorn -c gunicorn.conf.py app:app`: each worker compiles the IR after fork, in a
background thread, and `/health` answers 503 until the models are compiled and warmed.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import openvino as ov
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from wav2lip_core import metrics
from wav2lip_core.config import Settings
from wav2lip_core.errors import Busy, LipSyncError, ModelsMissing, NotReady, PayloadTooLarge, Unauthorized, UnsupportedMedia
from wav2lip_core.payload import parse_generate
from wav2lip_core.pipeline import LipSync

log = logging.getLogger("wav2lip.app")
access = logging.getLogger("wav2lip.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class Models:
    """This worker's LipSync, loaded once in a background thread; the state the probes report."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.lipsync: LipSync | None = None
        self.error: str | None = None
        self._started = False
        self._lock = threading.Lock()

    def start_loading(self) -> None:
        """Compile in a thread (call after fork, never in the gunicorn master); idempotent."""
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._load, name="load-models", daemon=True).start()

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            self.lipsync = LipSync.load(self.settings)
        except ModelsMissing as e:
            self.error = e.message
            log.error("%s", e.message)
            return
        except (RuntimeError, OSError, KeyError, ValueError) as e:  # OpenVINO and manifest failures
            self.error = f"could not load the models from {self.settings.models_dir}: {e}"
            log.exception("model loading failed")
            return
        log.info("models ready in %.1f s: %s", time.perf_counter() - t0, json.dumps(self.describe()))

    def describe(self) -> dict[str, object]:
        ls = self.lipsync
        info: dict[str, object] = {"openvino": ov.get_version(), "pid": os.getpid(), "models_dir": str(self.settings.models_dir)}
        if ls is not None:
            info |= {
                "detector": ls.finder.detector.name,
                "generator": "wav2lip",
                "generator_weights": ls.weights,
                "precision": ls.generator.precision,
                "batch_size": ls.generator.batch,
                "threads": self.settings.threads(),
            }
            if ls.weights == "random":
                info["warning"] = "generator weights are RANDOM (--random-init): output is not lip-sync"
        return info


class Gate:
    """At most `running` requests compute and `queued` wait; anyone beyond gets 503 at once."""

    def __init__(self, running: int, queued: int, wait_s: float):
        self._slots = threading.BoundedSemaphore(running)
        self._admitted = 0
        self._limit = running + queued
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self._recent_s = 5.0  # moving average of request time, for Retry-After

    def retry_after(self) -> int:
        return max(1, math.ceil(self._recent_s))

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a compute slot for the block, or raise Busy."""
        with self._lock:
            if self._admitted >= self._limit:
                raise Busy(f"server busy: {self._admitted} requests in progress or queued; retry in {self.retry_after()} s")
            self._admitted += 1
        try:
            if not self._slots.acquire(timeout=self._wait_s):
                raise Busy(f"server busy: waited {self._wait_s:g} s for a free slot; retry in {self.retry_after()} s")
            t0 = time.monotonic()
            try:
                yield
            finally:
                self._slots.release()
                with self._lock:
                    self._recent_s = 0.8 * self._recent_s + 0.2 * (time.monotonic() - t0)
        finally:
            with self._lock:
                self._admitted -= 1


def error_response(status: int, code: str, message: str) -> Response:
    resp = jsonify({"error": {"code": code, "message": message}})
    resp.status_code = status
    return resp


def create_app(settings: Settings | None = None) -> Flask:
    """The WSGI app; models are loaded by `app.extensions['models'].start_loading()`."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False
    models = Models(settings)
    gate = Gate(settings.max_concurrent, settings.max_queue, settings.queue_timeout_s)
    app.extensions["models"] = models

    @app.before_request
    def _start() -> Response | None:
        g.t0 = time.perf_counter()
        rid = request.headers.get("X-Request-ID", "")
        g.request_id = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        g.log = {}
        models.start_loading()  # no-op after the first call (gunicorn's post_worker_init calls it)
        if request.method == "OPTIONS":
            return None
        if request.path.startswith("/api/") and settings.api_key:
            sent = request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {settings.api_key}".encode()):
                raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")
        return None

    @app.after_request
    def _finish(resp: Response) -> Response:
        resp.headers["X-Request-ID"] = g.get("request_id", "")
        if g.get("retry_after") and "Retry-After" not in resp.headers:
            resp.headers["Retry-After"] = str(gate.retry_after())
        origin = request.headers.get("Origin")
        if origin and ("*" in settings.cors_origins or origin in settings.cors_origins):
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Vary"] = "Origin"
            resp.headers["Access-Control-Expose-Headers"] = "X-Request-ID, Retry-After, X-Frames, X-Face-Box"
            if request.method == "OPTIONS":
                resp.headers["Access-Control-Allow-Methods"] = "POST, GET, OPTIONS"
                resp.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization, X-Request-ID, Accept"
                resp.headers["Access-Control-Max-Age"] = "600"
        ms = (time.perf_counter() - g.get("t0", time.perf_counter())) * 1000
        if request.path.startswith("/api/"):
            metrics.observe(resp.status_code, ms / 1000)
        record = {"request_id": g.get("request_id"), "method": request.method, "path": request.path, "status": resp.status_code,
                  "bytes_in": request.content_length or 0, "bytes_out": resp.calculate_content_length() or 0,
                  "ms": round(ms, 1), "pid": os.getpid()} | g.get("log", {})  # fmt: skip
        access.info(json.dumps(record))
        return resp

    @app.errorhandler(LipSyncError)
    def _typed(e: LipSyncError) -> Response:
        g.retry_after = isinstance(e, Busy | NotReady)  # retrying cannot fix models_missing
        return error_response(e.status, e.code, e.message)

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException) -> Response:
        if e.code == 413:
            e2 = PayloadTooLarge(f"request body is larger than the limit of {settings.max_request_bytes} bytes")
            return error_response(e2.status, e2.code, e2.message)
        code = (e.name or "http_error").lower().replace(" ", "_")
        return error_response(e.code or 500, code, e.description or e.name)

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Response:
        log.exception("unhandled error in request %s", g.get("request_id"))
        return error_response(500, "internal_error", f"internal error; quote request id {g.get('request_id')}")

    @app.get("/livez")
    def livez() -> Response:
        return jsonify({"status": "alive", "pid": os.getpid()})

    @app.get("/health")
    @app.get("/readyz")
    def health() -> tuple[Response, int]:
        if models.lipsync is not None:
            return jsonify({"status": "ok", **models.describe()}), 200
        status = "error" if models.error else "loading"
        return jsonify({"status": status, "error": models.error, **models.describe()}), 503

    @app.get("/metrics")
    def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    @app.post("/api/generate")
    def generate() -> Response:
        if not request.is_json:
            raise UnsupportedMedia(f"Content-Type must be application/json, got {request.content_type!r}", code="unsupported_content_type")
        if request.content_length is not None and request.content_length > settings.max_request_bytes:
            raise PayloadTooLarge(f"request body is {request.content_length} bytes; the limit is {settings.max_request_bytes}")
        lipsync = models.lipsync
        if lipsync is None:
            raise ModelsMissing(models.error) if models.error else NotReady("models are still loading; retry shortly")
        # Read and validate the body before taking a slot: a slow (or stalled) upload must not hold the
        # only compute slot, and a malformed request must not queue behind the running ones.
        req = parse_generate(request.get_data(cache=False))
        with gate.admit(), metrics.in_flight():
            deadline = time.monotonic() + settings.request_timeout_s
            result = lipsync.run(req.image, req.audio, req.options, deadline=deadline)
        metrics.record_result(result)
        g.log = {
            "frames": result.frames,
            "face_source": result.face_source,
            "timings_ms": {k: round(v, 1) for k, v in result.timings_ms.items()},
        }
        headers = {"X-Frames": str(result.frames), "X-Face-Box": ",".join(map(str, result.face_box))}
        if request.accept_mimetypes.best_match(["application/json", "video/mp4"]) == "video/mp4":
            return Response(result.mp4, mimetype="video/mp4", headers=headers)
        t0 = time.perf_counter()
        encoded = base64.b64encode(result.mp4).decode("ascii")
        timings = {k: round(v, 1) for k, v in result.timings_ms.items()} | {"base64": round((time.perf_counter() - t0) * 1000, 1)}
        return jsonify({
            "video": encoded, "mime_type": "video/mp4", "duration_s": round(result.duration_s, 3), "fps": result.fps,
            "frames": result.frames, "width": result.width, "height": result.height, "face_box": list(result.face_box),
            "timings_ms": timings, "request_id": g.request_id,
        })  # fmt: skip

    return app


app = create_app()
