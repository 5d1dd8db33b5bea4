"""The HTTP API described as OpenAPI 3.1: served at `GET /openapi.json` (open, like the probes) and
rendered as docs/api.md (`python -m lipsync_server.openapi.markdown`).

The document is generated from what the code declares: the app's routes, the request schema
(schema.Options), the typed errors (wav2lip_core/errors.py) and where they are raised, the settings.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from .document import document

routes = Blueprint("openapi", __name__)


@routes.get("/openapi.json", endpoint="document")
def openapi_json() -> Response:
    """The OpenAPI 3.1 document of this server's routes, made once per app."""
    if "openapi" not in current_app.extensions:
        current_app.extensions["openapi"] = document(current_app)
    return jsonify(current_app.extensions["openapi"])


__all__ = ["document", "routes"]
