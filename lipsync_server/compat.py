"""Drop-in routes of the services existing clients were written for: they work by changing only the base URL.

Each is the native API under another name and other field names (docs/http-api-guide.md: Drop-in routes), so the
limits, the gate, the typed error JSON, `X-Request-ID`, the API key and the metrics are the same:

    POST /sync                     video + audio            → /api/generate, video, loop none (dubbing)
    POST /v1/animation             avatar + audio [+ fps]   → /api/generate, image or video (told by its bytes)
    POST /cache-avatar             avatar + avatar_id       → /api/avatars, then avatar_id names it (an alias)
    POST /v1/animation-with-cache  avatar_id + audio        → /api/generate with avatar_id (an id or an alias)
    POST /generate-video           source_image + audio_data → POST /api/jobs (D-ID style: a talk id to poll)
    GET  /talk-status/<id>         the talk: D-ID statuses, result_url once done → GET /api/jobs/<id>

The native options (`pads`, `box`, `paste`, …) are accepted as extra fields; `/sync` always runs
the video straight through at its own rate, and the audio sent replaces the video's own.
`/generate-video` also takes `source_url` / `audio_url`, fetched only from the hosts in FETCH_HOSTS.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flask import Blueprint, Response, jsonify

from lipsync_stores.jobs import Job, job_id_checked
from wav2lip_core.avatar import is_video

from .job_routes import job_store, submit
from .payload import AvatarRequest, Body, GenerateRequest
from .serve import lipsync, mp4_response, ready, register
from .urls import checked, fetch
from .web import DROP_IN, read_body

# D-ID's talk statuses for ours: its clients poll until "done", and give up on "error" or "rejected"
TALK_STATUS = {"queued": "created", "running": "started", "done": "done", "error": "error", "cancelled": "error"}

routes = Blueprint(DROP_IN, __name__)


def _body() -> Body:
    """The request's fields, once this worker is ready and the headers allow a body."""
    ready(body=True)
    return read_body()


@routes.post("/sync")
def sync() -> Response:
    """Dubbing: `video` + `audio` → the video lip-synced straight through at its own frame rate, with this audio."""
    body = _body()
    options = replace(body.options(), loop="none", fps=None, start_frame=0)
    return mp4_response(lipsync(GenerateRequest(body.media("audio"), options, video=body.media("video"))))


@routes.post("/v1/animation")
def animation() -> Response:
    """`avatar` (an image or a video file) + `audio`, optional `fps` → the MP4."""
    body = _body()
    options, avatar = body.options(), body.media("avatar")
    kind = "video" if is_video(avatar) else "image"
    return mp4_response(lipsync(GenerateRequest(body.media("audio"), options, **{kind: avatar})))


@routes.post("/cache-avatar")
def cache_avatar() -> Response:
    """`avatar` (an image or a video file) + `avatar_id` (the caller's name for it) → registered, the name an alias."""
    body = _body()
    name, options, avatar = body.avatar_id(), body.options(), body.media("avatar")
    record, _ = register(AvatarRequest(avatar, is_video(avatar), options))
    ready()[0].store.alias(name, record["avatar_id"])
    return jsonify({"status": "cached", "avatar_id": name})


@routes.post("/v1/animation-with-cache")
def animation_with_cache() -> Response:
    """`avatar_id` (a name given to /cache-avatar, or an id) + `audio` → the MP4; unknown: 404 avatar_not_found."""
    body = _body()
    options, name = body.options(), body.avatar_id()
    return mp4_response(lipsync(GenerateRequest(body.media("audio"), options, avatar_id=name)))


@routes.post("/generate-video")
def generate_video() -> tuple[Response, int]:
    """D-ID style: `source_image` (an image or a video) + `audio_data` files, or `source_url` / `audio_url` → a talk to poll."""
    body = _body()
    source, audio = _file_or_url(body, "source_image", "source_url"), _file_or_url(body, "audio_data", "audio_url")
    kind = "video" if is_video(source) else "image"
    hook = body.values.get("webhook") or body.values.get("webhook_url") or None
    job = submit(GenerateRequest(audio, body.options(), **{kind: source}), hook)
    return jsonify(_talk(job)), 201


@routes.get("/talk-status/<talk_id>")
def talk_status(talk_id: str) -> Response:
    """The talk: `{"id", "status", "result_url", "progress", "created_at", "started_at", "completed_at", "error"}`."""
    return jsonify(_talk(job_store().get(job_id_checked(talk_id))))


def _talk(job: Job) -> dict[str, Any]:
    """A job in the shape D-ID-style clients read: their statuses, `result_url` only once the video exists."""
    native = job.describe()
    keys = ("id", "progress", "created_at", "started_at", "completed_at", "error")
    return {k: native[k] for k in keys} | {
        "status": TALK_STATUS[job.status],
        "result_url": native["result_url"] if job.status == "done" else None,
    }


def _file_or_url(body: Body, name: str, url_name: str) -> bytes:
    """A file part (or base64) `name`, or the body at `url_name`, fetched only from the hosts FETCH_HOSTS allows."""
    if not body.given(url_name) or body.given(name):
        return body.media(name)
    settings = ready()[2]
    url = checked(body.values[url_name], settings.fetch_hosts, url_name, "FETCH_HOSTS")
    return fetch(url, settings.max_request_bytes, url_name)
