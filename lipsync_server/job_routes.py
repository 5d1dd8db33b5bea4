"""Async jobs over HTTP: submit a `/api/generate` request, poll it, fetch or cancel its video.

    POST   /api/jobs             same body as /api/generate (+ webhook_url) → 202 the job
    GET    /api/jobs/<id>        the job: status, progress 0–1, times, error, links
    GET    /api/jobs/<id>/video  the MP4 (+faststart) with ETag and Range: a <video src> seeks it
    DELETE /api/jobs/<id>        cancel a queued or running job (200 the job); a finished one is removed (204)

Any replica answers for any job when they share REDIS_URL; without it, any worker of this machine.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request, send_file

from lipsync_stores.jobs import Job, JobStore, job_id_checked, new_job
from wav2lip_core.errors import BadRequest

from .payload import Body, GenerateRequest, parse_generate, to_parts
from .serve import ready
from .urls import checked
from .web import read_body

routes = Blueprint("jobs", __name__)


def job_store() -> JobStore:
    return current_app.extensions["jobs"]


def base_url() -> str:
    """Where clients reach this service: PUBLIC_URL, else the scheme and Host of this request."""
    return ready()[2].public_url.rstrip("/") or request.host_url.rstrip("/")


def submit(req: GenerateRequest, webhook_url: str | None) -> Job:
    """Queue a validated request: a registered avatar must exist now, not when a worker gets to it."""
    registry, _, settings = ready()
    if req.stream:
        raise BadRequest("stream is for POST /api/generate; a job's video is fetched from its result_url", code="invalid_field")
    if req.avatar_id is not None:
        registry.store.get(req.avatar_id)  # AvatarNotFound (404) at once
    if webhook_url is not None:
        webhook_url = checked(webhook_url, settings.webhook_hosts, "webhook_url", "WEBHOOK_HOSTS")
    job = new_job(webhook_url, base_url(), time.time())
    job_store().submit(job, to_parts(req), settings.job_queue_max)
    return job


def webhook(body: Body) -> str | None:
    value = body.values.get("webhook_url")
    return None if value is None or value == "" else value


@routes.post("/api/jobs")
def create() -> tuple[Response, int, dict[str, str]]:
    ready(body=True)
    body = read_body()
    job = submit(parse_generate(body), webhook(body))
    return jsonify(job.describe()), 202, {"Location": job.describe()["status_url"]}


@routes.get("/api/jobs/<job_id>")
def status(job_id: str) -> Response:
    return jsonify(job_store().get(job_id_checked(job_id)).describe())


@routes.get("/api/jobs/<job_id>/video")
def video(job_id: str) -> Response:
    """The MP4: Content-Length, ETag (the job id: a job's video never changes), Range requests (206)."""
    data = job_store().video(job_id_checked(job_id))
    source = data if isinstance(data, Path) else io.BytesIO(data)
    resp = send_file(source, mimetype="video/mp4", etag=job_id, conditional=True, max_age=3600, download_name=f"{job_id}.mp4")
    resp.headers["Accept-Ranges"] = "bytes"
    return resp


@routes.delete("/api/jobs/<job_id>")
def cancel(job_id: str) -> Response | tuple[str, int]:
    job = job_store().cancel(job_id_checked(job_id))
    return ("", 204) if job is None else jsonify(job.describe())
