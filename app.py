"""HTTP API: `POST /api/generate`, health probes, metrics. Routes are thin; errors become JSON.

Run with `gunicorn -c gunicorn.conf.py app:app`: each worker compiles the IR after fork, in a
background thread, and `/health` answers 503 until the models are compiled and warmed. Request ids,
auth, CORS, the access log and error JSON are hooks in wav2lip_core/web.py; admission is
wav2lip_core/gate.py; the lip-sync itself is `TalkingHead` (wav2lip_core/api.py), as for any embedder.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time

from flask import Flask, Response, current_app, g, jsonify, request

from wav2lip_core import TalkingHead, metrics
from wav2lip_core.config import Settings
from wav2lip_core.errors import ModelsMissing, NotReady
from wav2lip_core.gate import Gate
from wav2lip_core.payload import parse_generate
from wav2lip_core.schema import Result
from wav2lip_core.web import install_hooks, log_fields, require_json_body

log = logging.getLogger("wav2lip.app")


class Models:
    """This worker's TalkingHead, loaded once in a background thread; the state the probes report."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.head: TalkingHead | None = None
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
            self.head = TalkingHead.load(settings=self.settings)
        except ModelsMissing as e:
            self.error = e.message
            log.error("%s", e.message)
            return
        except (RuntimeError, OSError, KeyError, ValueError) as e:  # OpenVINO and manifest failures
            self.error = f"could not load the models from {self.settings.models_dir}: {e}"
            log.exception("model loading failed")
            return
        log.info("models ready in %.1f s", time.perf_counter() - t0, extra={"fields": self.describe()})

    def ready(self, retry_after: int) -> TalkingHead:
        """The compiled TalkingHead, or the 503 that says why not (retrying cannot fix missing models)."""
        if (head := self.head) is not None:
            return head
        if self.error:
            raise ModelsMissing(self.error)
        raise NotReady("models are still loading; retry shortly", retry_after=retry_after)

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = {"pid": os.getpid(), "models_dir": str(self.settings.models_dir)}
        if self.head is not None:
            info |= self.head.info()
            if info["generator_weights"] == "random":
                info["warning"] = "generator weights are RANDOM (--random-init): output is not lip-sync"
        return info


def livez() -> Response:
    return jsonify({"status": "alive", "pid": os.getpid()})


def health() -> tuple[Response, int]:
    """200 once this worker's models are compiled and warm; 503 "loading" or "error" before."""
    models: Models = current_app.extensions["models"]
    if models.head is not None:
        return jsonify({"status": "ok", **models.describe()}), 200
    return jsonify({"status": "error" if models.error else "loading", "error": models.error, **models.describe()}), 503


def prometheus() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


def generate() -> Response:
    """JSON with base64 `image` and `audio` → an MP4: in JSON (base64), or raw with `Accept: video/mp4`."""
    settings: Settings = current_app.extensions["settings"]
    gate: Gate = current_app.extensions["gate"]
    require_json_body(settings.max_request_bytes)
    head = current_app.extensions["models"].ready(retry_after=gate.retry_after())
    # Read and validate the body before taking a slot: a slow (or stalled) upload must not hold the
    # only compute slot, and a malformed request must not queue behind the running ones.
    req = parse_generate(request.get_data(cache=False))
    with gate.admit(), metrics.in_flight():
        deadline = time.monotonic() + settings.request_timeout_s
        result = head.render(req.audio, req.image, req.options, deadline=deadline, video=False)  # "image": stills only
    metrics.record_result(result)
    timings = {k: round(v, 1) for k, v in result.timings_ms.items()}
    log_fields(frames=result.frames, face_source=result.face_source, timings_ms=timings)
    if request.accept_mimetypes.best_match(["application/json", "video/mp4"]) == "video/mp4":
        headers = {"X-Frames": str(result.frames), "X-Face-Box": ",".join(map(str, result.face_box))}
        return Response(result.mp4, mimetype="video/mp4", headers=headers)
    return _json_answer(result, timings)


def _json_answer(result: Result, timings: dict[str, float]) -> Response:
    """The MP4 as base64 with its properties; `timings_ms` gains the base64 step."""
    t0 = time.perf_counter()
    encoded = base64.b64encode(result.mp4).decode("ascii")
    timings = timings | {"base64": round((time.perf_counter() - t0) * 1000, 1)}
    return jsonify({
        "video": encoded, "mime_type": "video/mp4", "duration_s": round(result.duration_s, 3), "fps": result.fps,
        "frames": result.frames, "width": result.width, "height": result.height, "face_box": list(result.face_box),
        "timings_ms": timings, "request_id": g.request_id,
    })  # fmt: skip


def create_app(settings: Settings | None = None) -> Flask:
    """The WSGI app; models are loaded by `app.extensions['models'].start_loading()`."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes  # 413 before the body is read
    app.json.sort_keys = False
    models = Models(settings)
    app.extensions |= {
        "settings": settings,
        "models": models,
        "gate": Gate(settings.max_concurrent, settings.max_queue, settings.queue_timeout_s),
    }
    app.before_request(models.start_loading)  # no-op after the first call (gunicorn's post_worker_init calls it)
    install_hooks(app, settings)
    app.add_url_rule("/livez", view_func=livez)
    app.add_url_rule("/health", view_func=health)
    app.add_url_rule("/readyz", view_func=health)
    app.add_url_rule("/metrics", view_func=prometheus)
    app.add_url_rule("/api/generate", view_func=generate, methods=["POST"])
    return app


app = create_app()
