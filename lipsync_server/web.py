"""The HTTP layer around the routes: request ids, API-key auth, CORS, the access log, JSON errors.

Each concern is one small hook; `install_hooks` registers them all on a Flask app. The routes
themselves live in app.py and stay free of these concerns.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import time
import uuid
from functools import partial

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from wav2lip_core.config import Settings
from wav2lip_core.errors import LipSyncError, PayloadTooLarge, Unauthorized, UnsupportedMedia

from . import metrics
from .payload import Body

log = logging.getLogger("wav2lip.app")
access = logging.getLogger("wav2lip.access")

DROP_IN = "compat"  # the blueprint of the drop-in routes (compat.py): API routes outside /api/
# A job's video: its URL names a random 128-bit id, a capability like a pre-signed URL, so a <video src> (which
# cannot send a header) plays it with API_KEY set; the job's status and everything else need the key.
OPEN_WITH_ID = ("jobs.video",)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # echoed as given; anything else is replaced
_EXPOSED = "X-Request-ID, Retry-After, X-Frames, X-Face-Box, X-End-Frame, X-Duration, X-Fps"
_CORS = {"Vary": "Origin", "Access-Control-Expose-Headers": _EXPOSED}
_PREFLIGHT = {
    "Access-Control-Allow-Methods": "POST, GET, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, X-Request-ID, Accept",
    "Access-Control-Max-Age": "600",
}


def install_hooks(app: Flask, settings: Settings) -> None:
    """Register every hook and error handler below on `app`."""
    app.before_request(assign_request_id)
    app.before_request(partial(require_api_key, settings.api_key))
    # after_request hooks run in reverse order of registration: the access log sees the final response.
    app.after_request(log_access)
    app.after_request(partial(allow_origin, settings.cors_origins))
    app.after_request(echo_request_id)
    app.register_error_handler(LipSyncError, typed_error)
    app.register_error_handler(HTTPException, partial(http_error, settings.max_request_bytes))
    app.register_error_handler(Exception, unexpected_error)


def is_api() -> bool:
    """Behind the API key and counted in the metrics: /api/ and the drop-in routes; not probes, metrics or unknown paths."""
    return api_route(request.path, request.blueprint)


def api_route(path: str, blueprint: str | None) -> bool:
    """`is_api` for a route given by its path (or rule) and blueprint: what the OpenAPI document marks as keyed."""
    return path.startswith("/api/") or blueprint == DROP_IN


def log_fields(**fields: object) -> None:
    """Add fields to this request's access-log line (the only use of `g.access_fields`)."""
    g.access_fields = g.get("access_fields", {}) | fields


def check_body(max_bytes: int) -> None:
    """Before anything is read: 415 unless JSON or multipart/form-data, 413 if Content-Length is over the limit.

    A body without a Content-Length is cut off at the same limit while it streams in (Flask's
    MAX_CONTENT_LENGTH), so nothing over the limit is ever buffered."""
    if request.mimetype != "multipart/form-data" and not request.is_json:
        raise UnsupportedMedia(
            f"Content-Type must be application/json or multipart/form-data, got {request.content_type!r}", code="unsupported_content_type"
        )
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"request body is {request.content_length} bytes; the limit is {max_bytes}")


def read_body() -> Body:
    """The request body as fields: JSON values, or multipart form strings and uploaded files."""
    if request.mimetype == "multipart/form-data":
        return Body(request.form.to_dict(), {name: f.read() for name, f in request.files.items()}, form=True)
    return Body.from_json(request.get_data(cache=False))


# ---------------------------------------------------------------- hooks


def assign_request_id() -> None:
    """Start the clock; take the client's X-Request-ID if it is safe to echo, else a fresh one."""
    g.t0 = time.perf_counter()
    sent = request.headers.get("X-Request-ID", "")
    g.request_id = sent if _REQUEST_ID.match(sent) else uuid.uuid4().hex


def require_api_key(api_key: str) -> None:
    """With an API key configured, API routes want `Authorization: Bearer <key>`; probes, metrics and preflights stay open."""
    if not api_key or request.method == "OPTIONS" or not is_api() or request.endpoint in OPEN_WITH_ID:
        return
    sent = request.headers.get("Authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
        raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")


def echo_request_id(resp: Response) -> Response:
    resp.headers["X-Request-ID"] = g.get("request_id", "")
    return resp


def allow_origin(origins: tuple[str, ...], resp: Response) -> Response:
    """CORS headers for an allowed Origin (`*` allows any); preflight headers on OPTIONS."""
    origin = request.headers.get("Origin")
    if origin and ("*" in origins or origin in origins):
        resp.headers.update({"Access-Control-Allow-Origin": origin, **_CORS})
        if request.method == "OPTIONS":
            resp.headers.update(_PREFLIGHT)
    return resp


def log_access(resp: Response) -> Response:
    """Count API responses in the metrics; log one structured line per request (a stream's when it ends)."""
    started, api = g.get("t0", time.perf_counter()), is_api()
    fields = {"request_id": g.get("request_id"), "method": request.method, "path": request.path, "status": resp.status_code,
              "bytes_in": request.content_length or 0, "pid": os.getpid()} | g.get("access_fields", {})  # fmt: skip
    stream = g.get("stream")
    if stream is None:
        _log_request(fields, api, started, resp.calculate_content_length() or 0)
    else:  # the body is still to be made: count and log when the server closes it
        resp.call_on_close(lambda: _log_request(fields | stream.fields(), api, started, stream.bytes_sent))
    return resp


def _log_request(fields: dict[str, object], api: bool, started: float, bytes_out: int) -> None:
    seconds = time.perf_counter() - started
    if api:
        metrics.observe(int(fields["status"]), seconds)  # type: ignore[call-overload]
    access.info("request", extra={"fields": fields | {"bytes_out": bytes_out, "ms": round(seconds * 1000, 1)}})


# ---------------------------------------------------------------- errors → JSON


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """The error contract: `{"error": {"code", "message"}}` with `status`."""
    resp = jsonify({"error": {"code": code, "message": message}})
    resp.status_code = status
    resp.headers.update(headers or {})
    return resp


def typed_error(e: LipSyncError) -> Response:
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after is not None else {}
    return error_response(e.status, e.code, e.message, headers)


def http_error(max_request_bytes: int, e: HTTPException) -> Response:
    """Werkzeug's errors (404, 405, 413 from MAX_CONTENT_LENGTH, …) as JSON, keeping headers such as `Allow`."""
    if e.code == 413:
        return typed_error(PayloadTooLarge(f"request body is larger than the limit of {max_request_bytes} bytes"))
    message = e.description or e.name
    if isinstance(e, MethodNotAllowed) and e.valid_methods:
        usable = [m for m in e.valid_methods if m not in ("HEAD", "OPTIONS")]
        message = f"{request.method} is not allowed on {request.path}: use {', '.join(usable)}"
    headers = {k: v for k, v in e.get_headers() if k.lower() != "content-type"}
    return error_response(e.code or 500, http_code(e), message, headers)


def http_code(e: HTTPException) -> str:
    """The stable code of a Werkzeug error: its name in snake case (404 `not_found`, 405 `method_not_allowed`)."""
    return (e.name or "http_error").lower().replace(" ", "_")


def unexpected_error(e: Exception) -> Response:
    """A bug: logged with its traceback, answered 500 with the request id to quote."""
    log.exception("unhandled error in request %s", g.get("request_id"))
    return error_response(500, "internal_error", f"internal error; quote request id {g.get('request_id')}")
