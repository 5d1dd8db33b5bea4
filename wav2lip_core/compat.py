"""Drop-in routes of the services existing clients were written for: they work by changing only the base URL.

Each is the native API under another name and other field names (README: Drop-in routes), so the
limits, the gate, the typed error JSON, `X-Request-ID`, the API key and the metrics are the same:

    POST /sync                     video + audio            → /api/generate, video, loop none (dubbing)
    POST /v1/animation             avatar + audio [+ fps]   → /api/generate, image or video (told by its bytes)
    POST /cache-avatar             avatar + avatar_id       → /api/avatars, then avatar_id names it (an alias)
    POST /v1/animation-with-cache  avatar_id + audio        → /api/generate with avatar_id (an id or an alias)

The native options (`pads`, `box`, `paste`, …) are accepted as extra fields; `/sync` always runs
the video straight through at its own rate, and the audio sent replaces the video's own.
"""

from __future__ import annotations

from dataclasses import replace

from flask import Blueprint, Response, jsonify

from .avatar import is_video
from .payload import AvatarRequest, Body, GenerateRequest
from .serve import lipsync, mp4_response, ready, register
from .web import DROP_IN, read_body

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
