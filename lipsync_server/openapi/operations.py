"""What each route answers, by Flask endpoint: its summary, tag, request body, success answers and typed errors.

The routes themselves (paths, methods, path parameters) and their descriptions (the view's
docstring) are read from the app; this table adds only what the code does not declare elsewhere.
Every endpoint must be here (document.py refuses an undocumented route) and every entry must be a
route (tests/server/test_openapi.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from werkzeug.exceptions import NotFound

from wav2lip_core.errors import (
    AvatarNotFound,
    BadRequest,
    Busy,
    DeadlineExceeded,
    DiskFull,
    JobNotDone,
    JobNotFound,
    LimitExceeded,
    MemoryBusy,
    ModelsMissing,
    NoFace,
    NotReady,
    PayloadTooLarge,
    StoreUnavailable,
    UnsupportedMedia,
    UrlRefused,
)

from .errors import Source
from .schemas import ref

Response = dict[str, Any]

BODY: tuple[Source, ...] = (BadRequest, PayloadTooLarge, UnsupportedMedia)  # read_body and its parsers
READY: tuple[Source, ...] = (NotReady, ModelsMissing)  # serve.ready(): this worker's models
STORE: tuple[Source, ...] = (StoreUnavailable,)  # avatars and jobs in Redis (REDIS_URL)
# decoding, detection, the gate, the memory budget, frame files on disk, the deadline
RENDER: tuple[Source, ...] = (NoFace, LimitExceeded, Busy, MemoryBusy, DiskFull, DeadlineExceeded)
MP4_HEADERS = {
    "X-Frames": "frames in the video",
    "X-Face-Box": "the first frame's face box: x1,y1,x2,y2",
    "X-End-Frame": "loop position after the last frame: the next clip's start_frame",
    "X-Duration": "seconds of audio (streamed answers)",
    "X-Fps": "frames per second (streamed answers)",
}


def json_answer(doc: str, schema: str) -> Response:
    return {"description": doc, "content": {"application/json": {"schema": ref(schema)}}}


def media_answer(doc: str, *types: str, headers: dict[str, str] | None = None) -> Response:
    binary = {"type": "string", "contentMediaType": "application/octet-stream"}
    out: Response = {"description": doc, "content": {t: {"schema": binary} for t in types}}
    return out | ({"headers": {k: {"description": v, "schema": {"type": "string"}} for k, v in headers.items()}} if headers else {})


def mp4(doc: str) -> Response:
    return media_answer(doc, "video/mp4", headers=MP4_HEADERS)


def empty(doc: str) -> Response:
    return {"description": doc}


@dataclass(frozen=True)
class Op:
    """One route's answers: `ok` by status, the typed errors it may raise (500 and, keyed routes, 401 are added)."""

    summary: str
    tag: str
    ok: dict[int, Response]
    errors: tuple[Source, ...] = ()
    body: str | None = None  # a component of schemas.bodies()
    links: tuple[Link, ...] = ()  # what a client (or Schemathesis's stateful phase) does next with a JSON answer


@dataclass(frozen=True)
class Link:
    """An OpenAPI link: the route of `endpoint` takes its path parameter `parameter` from this answer's `field`."""

    endpoint: str
    parameter: str
    field: str


def links_to(parameter: str, field: str, *endpoints: str) -> tuple[Link, ...]:
    return tuple(Link(e, parameter, field) for e in endpoints)


def generated() -> dict[int, Response]:
    """JSON by default; with `Accept: video/mp4`, or `stream: true` (fragmented, chunked), the MP4 itself."""
    answer, video = json_answer("", "GenerateAnswer"), mp4("")
    doc = "the MP4 in base64 and its properties; with `Accept: video/mp4` or `stream: true` (fragmented, sent as made), the MP4 itself"
    return {200: {"description": doc, "content": answer["content"] | video["content"], "headers": video["headers"]}}


AVATAR_ERRORS = (*READY, *STORE, AvatarNotFound, NotFound)
TO_AVATAR = links_to("avatar_id", "avatar_id", "get_avatar", "avatar_media", "avatar_idle", "delete_avatar")
TO_JOB = links_to("job_id", "id", "jobs.status", "jobs.video", "jobs.cancel")
JOB_ERRORS = (*STORE, JobNotFound, NotFound)

OPERATIONS: dict[str, Op] = {
    "livez": Op("Liveness: 200 while the process is up", "probes", {200: json_answer("alive", "Alive")}),
    "health": Op(
        "Readiness of this worker (/health and /readyz)",
        "probes",
        {200: json_answer("ready", "Health"), 503: json_answer("not ready", "Health")},
    ),
    "prometheus": Op("Prometheus metrics, summed over the workers", "probes", {200: media_answer("metrics", "text/plain")}),
    "openapi.document": Op("This document", "probes", {200: {"description": "OpenAPI 3.1", "content": {"application/json": {}}}}),
    "generate": Op(
        "Lip-sync: an avatar and speech → an MP4", "lip-sync", generated(), (*BODY, *READY, *STORE, AvatarNotFound, *RENDER), "Generate"
    ),
    "register_avatar": Op(
        "Register an avatar once, use it by id",
        "avatars",
        {200: json_answer("already registered (same bytes and options)", "Avatar"), 201: json_answer("registered", "Avatar")},
        (*BODY, *READY, *STORE, *RENDER),
        "Avatar",
        TO_AVATAR,
    ),
    "list_avatars": Op("Registered avatars", "avatars", {200: json_answer("the records", "AvatarList")}, (*READY, *STORE)),
    "get_avatar": Op("A registered avatar (by id or name)", "avatars", {200: json_answer("its record", "Avatar")}, AVATAR_ERRORS),
    "delete_avatar": Op("Delete a registered avatar", "avatars", {204: empty("deleted")}, AVATAR_ERRORS),
    "avatar_media": Op(
        "A registered avatar's upload", "avatars", {200: media_answer("the upload, as sent", "image/*", "video/*")}, AVATAR_ERRORS
    ),
    "avatar_idle": Op(
        "A registered avatar's idle loop",
        "avatars",
        {200: media_answer("one period of the loop, no sound", "video/mp4")},
        (*AVATAR_ERRORS, *RENDER),
    ),
    "jobs.create": Op(
        "Submit an async job",
        "jobs",
        {202: json_answer("queued; `Location` is its status_url", "Job")},
        (*BODY, *READY, *STORE, AvatarNotFound, UrlRefused, Busy, MemoryBusy, DiskFull),
        "Job",
        TO_JOB,
    ),
    "jobs.status": Op("A job's state", "jobs", {200: json_answer("the job", "Job")}, JOB_ERRORS),
    "jobs.video": Op(
        "A done job's MP4 (Range requests: 206)",
        "jobs",
        {200: media_answer("the MP4, +faststart", "video/mp4"), 206: media_answer("the range asked for", "video/mp4")},
        (*JOB_ERRORS, JobNotDone),
    ),
    "jobs.cancel": Op(
        "Cancel a job, or remove a finished one", "jobs", {200: json_answer("cancelled", "Job"), 204: empty("removed")}, JOB_ERRORS
    ),
    "compat.sync": Op("Drop-in: dub a video with new speech", "drop-in", {200: mp4("the dubbed video")}, (*BODY, *READY, *RENDER), "Sync"),
    "compat.animation": Op(
        "Drop-in: an avatar file and speech → an MP4", "drop-in", {200: mp4("the video")}, (*BODY, *READY, *RENDER), "Animation"
    ),
    "compat.cache_avatar": Op(
        "Drop-in: register an avatar under your name",
        "drop-in",
        {200: json_answer("cached", "Cached")},
        (*BODY, *READY, *STORE, *RENDER),
        "CacheAvatar",
        links_to("avatar_id", "avatar_id", "get_avatar"),  # a name: the routes by id only do not take it
    ),
    "compat.animation_with_cache": Op(
        "Drop-in: a cached avatar and speech → an MP4",
        "drop-in",
        {200: mp4("the video")},
        (*BODY, *READY, *STORE, AvatarNotFound, *RENDER),
        "AnimationWithCache",
    ),
    "compat.generate_video": Op(
        "Drop-in (D-ID style): submit a talk",
        "drop-in",
        {201: json_answer("the talk, to poll", "Talk")},
        (*BODY, *READY, *STORE, UrlRefused, Busy, MemoryBusy, DiskFull),
        "GenerateVideo",
        (*links_to("talk_id", "id", "compat.talk_status"), *TO_JOB),  # a talk id is a job id
    ),
    "compat.talk_status": Op("Drop-in (D-ID style): a talk's state", "drop-in", {200: json_answer("the talk", "Talk")}, JOB_ERRORS),
}
