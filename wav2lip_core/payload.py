"""The `/api/generate` JSON body → media bytes and `Options`. Every refusal is a typed 4xx.

Base64 is decoded strictly: data-URL prefixes, whitespace, missing padding and the URL-safe
alphabet are accepted; any other character is an error (Python's default decoder silently
drops them). Unknown fields are ignored, so clients may send extra metadata. The options are
declared and checked in `schema.Options`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from .errors import BadRequest
from .schema import Options

_DATA_URL = re.compile(r"^data:[^,]{0,200},", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
_URLSAFE = str.maketrans("-_", "+/")


@dataclass
class GenerateRequest:
    image: bytes
    audio: bytes
    options: Options


def b64decode(text: str, field: str) -> bytes:
    """Decode standard or URL-safe base64, with or without padding, data URL or not; never drop characters."""
    match = _DATA_URL.match(text)
    if match:
        if ";base64," not in match.group(0).lower():
            raise BadRequest(f"{field}: data URL is not base64-encoded", code="invalid_base64")
        text = text[match.end() :]
    text = _WHITESPACE.sub("", text).translate(_URLSAFE)
    if not text:
        raise BadRequest(f"{field} is empty", code="empty_field")
    if not _B64.match(text) or len(text.rstrip("=")) % 4 == 1:
        bad = next((c for c in text.rstrip("=") if not (c.isascii() and (c.isalnum() or c in "+/"))), None)
        reason = f"character {bad!r} is not base64" if bad else "its length is not valid base64"
        raise BadRequest(f"{field} is not valid base64: {reason}", code="invalid_base64")
    text = text.rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as e:
        raise BadRequest(f"{field} is not valid base64: {e}", code="invalid_base64") from e


def _reject_constant(name: str) -> float:
    raise BadRequest(f"JSON contains {name}, which is not a number", code="invalid_json")


def parse_json(body: bytes) -> dict:
    """Parse a JSON object; NaN/Infinity tokens and absurd nesting are refused."""
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, or an integer of more than 4300 digits
        raise BadRequest(f"body is not valid JSON: {e}", code="invalid_json") from e
    except RecursionError as e:
        raise BadRequest("body JSON is nested too deeply", code="invalid_json") from e
    if not isinstance(value, dict):
        raise BadRequest(f"body must be a JSON object, got {type(value).__name__}", code="invalid_json")
    return value


def _media(body: dict, name: str) -> bytes:
    value = body.get(name)
    if value is None:
        raise BadRequest(f"missing required field {name!r} (base64 or data URL)", code="missing_field")
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a base64 string, got {type(value).__name__}", code="invalid_field")
    return b64decode(value, name)


def parse_generate(body: bytes) -> GenerateRequest:
    """Validate the whole request body before any expensive work (options first: they are cheap)."""
    obj = parse_json(body)
    options = Options.from_json(obj)
    return GenerateRequest(_media(obj, "image"), _media(obj, "audio"), options)
