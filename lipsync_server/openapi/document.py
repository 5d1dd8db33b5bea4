"""The OpenAPI 3.1 document of an app: every rule of its url_map, described from the declarations.

Paths, methods and path parameters come from the app; summaries, bodies and answers from
operations.OPERATIONS; request and answer schemas from schemas.py (the options from schema.Options);
error answers from the typed errors (wav2lip_core/errors.py here), with the settings that set their limits
(config.Settings). A route missing from OPERATIONS is an error, not a silent gap.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from dataclasses import fields
from typing import Any

from flask import Flask
from werkzeug.routing import Rule

from lipsync_server.web import OPEN_WITH_ID, api_route
from lipsync_stores.jobs import JOB_ID
from lipsync_stores.store import NAME
from wav2lip_core.config import Settings
from wav2lip_core.errors import LipSyncError, Unauthorized

from .errors import Source, by_status, error_schema
from .operations import OPERATIONS, Op, Response
from .schemas import answers, bodies

TITLE = "Wav2Lip lip-sync server"
SUMMARY = "Lip-sync on the CPU: an avatar (image, video or registered id) and speech in, an H.264/AAC MP4 out."
ERRORS = 'Errors are JSON `{"error": {"code", "message"}}`; the code is stable, the message is for people.'
AUTOMATIC = {"HEAD", "OPTIONS"}  # Flask adds them to every rule
PATH_PARAMETERS = {
    "avatar_id": {"type": "string", "pattern": NAME.pattern, "description": "an avatar's id (or, where it says so, a name)"},
    "job_id": {"type": "string", "pattern": f"^{JOB_ID.pattern}$", "description": "a job's id"},
    "talk_id": {"type": "string", "pattern": f"^{JOB_ID.pattern}$", "description": "a talk's id (a job id)"},
}
HEADERS = {
    "X-Request-ID": {"description": "the request's id: yours if you sent a safe one, else a fresh one", "schema": {"type": "string"}},
    "Retry-After": {"description": "seconds after which retrying may succeed", "schema": {"type": "integer"}},
}
BEARER = {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API_KEY>, only when the server sets API_KEY"}


def version() -> str:
    try:
        return importlib.metadata.version("wav2lip-openvino-server")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was not pip-installed (the image)
        return "unversioned"


def document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`'s routes."""
    paths: dict[str, dict[str, Any]] = {}
    ids = {r.endpoint: operation_id(r, m) for r in app.url_map.iter_rules() for m in (r.methods or set()) - AUTOMATIC}  # links' targets
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        op = OPERATIONS.get(rule.endpoint)
        if op is None:
            raise LookupError(f"route {rule.rule} (endpoint {rule.endpoint!r}) is not documented: add it to openapi/operations.py")
        for method in sorted((rule.methods or set()) - AUTOMATIC):
            paths.setdefault(path_of(rule), {})[method.lower()] = operation(rule, method, op, app.view_functions[rule.endpoint], ids)
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": version(), "summary": SUMMARY, "description": ERRORS},
        "tags": [{"name": tag} for tag in dict.fromkeys(op.tag for op in OPERATIONS.values())],
        "paths": paths,
        "components": {"schemas": components(), "headers": HEADERS, "securitySchemes": {"bearer": BEARER}},
    }


def components() -> dict[str, Any]:
    out = {f"{name}{kind}": body.schema(form) for name, body in bodies().items() for kind, form in (("Json", False), ("Form", True))}
    return out | answers()


def path_of(rule: Rule) -> str:
    """Flask's `/api/avatars/<avatar_id>` as OpenAPI's `/api/avatars/{avatar_id}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)


def keyed(rule: Rule) -> bool:
    """Behind API_KEY when it is set (web.require_api_key)."""
    blueprint = rule.endpoint.rpartition(".")[0] or None
    return api_route(rule.rule, blueprint) and rule.endpoint not in OPEN_WITH_ID


def operation_id(rule: Rule, method: str) -> str:
    """`post_api_generate`, `get_api_avatars_avatar_id_media`: unique, from the method and the rule."""
    return re.sub(r"\W+", "_", f"{method} {rule.rule}".lower()).strip("_")


def operation(rule: Rule, method: str, op: Op, view: Any, ids: dict[str, str]) -> dict[str, Any]:
    """One operation object: the view's docstring as its description, parameters, body, answers, security."""
    links = {ids[k.endpoint]: {"operationId": ids[k.endpoint], "parameters": {k.parameter: f"$response.body#/{k.field}"}} for k in op.links}
    out: dict[str, Any] = {
        "tags": [op.tag], "summary": op.summary, "operationId": operation_id(rule, method),
        "description": inspect.getdoc(view) or op.summary,
        "parameters": [{"name": n, "in": "path", "required": True, "schema": PATH_PARAMETERS[n]} for n in sorted(rule.arguments)],
        "responses": responses(op, keyed(rule), links),
        "security": [{"bearer": []}, {}] if keyed(rule) else [],
    }  # fmt: skip
    if op.body is not None:
        body = bodies()[op.body]
        form = {"schema": {"$ref": f"#/components/schemas/{op.body}Form"}} | ({"encoding": body.encoding()} if body.encoding() else {})
        json = {"schema": {"$ref": f"#/components/schemas/{op.body}Json"}}
        out["requestBody"] = {"required": True, "content": {"application/json": json, "multipart/form-data": form}}
    return out


def responses(op: Op, keyed: bool, links: dict[str, Any]) -> dict[str, Response]:
    """The route's answers (JSON ones with their links), then its errors by status: codes, meaning, the settings behind them."""
    out = {str(status): with_request_id(answer) for status, answer in op.ok.items()}
    for answer in out.values():
        if links and "application/json" in answer.get("content", {}):
            answer["links"] = links
    sources: tuple[Source, ...] = (*op.errors, *((Unauthorized,) if keyed else ()), LipSyncError)
    for status, (codes, kinds) in by_status(sources).items():
        if str(status) in out:
            raise ValueError(f"status {status} is both an answer and an error of {op.summary!r}")
        doc = "; ".join(f"{k.name}: {k.doc.rstrip('.')}" if k.doc else k.name for k in kinds) + limits(status)
        answer = {"description": doc, "content": {"application/json": {"schema": error_schema(codes)}}}
        out[str(status)] = with_request_id(answer, retry=status == 503)
    return out


def with_request_id(answer: Response, retry: bool = False) -> Response:
    named = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    named |= {"Retry-After": {"$ref": "#/components/headers/Retry-After"}} if retry else {}
    return answer | {"headers": answer.get("headers", {}) | named}


def limits(status: int) -> str:
    """The settings whose doc says they lead to `status`, with their defaults (config.Settings)."""
    found = [f"`{f.metadata['env'].var}` (default {f.default})" for f in fields(Settings) if f"`{status}" in f.metadata["env"].doc]
    return f". Limits: {', '.join(found)}" if found else ""
