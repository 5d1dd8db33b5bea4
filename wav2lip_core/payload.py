"""The `/api/generate` JSON body → validated bytes and options. Every refusal is a typed 4xx.

Base64 is decoded strictly: data-URL prefixes, whitespace, missing padding and the URL-safe
alphabet are accepted; any other character is an error (Python's default decoder silently
drops them). Unknown fields are ignored, so clients may send extra metadata.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from .compose import PASTE_MODES
from .errors import BadRequest
from .pipeline import DEFAULT_PADS, Options

_DATA_URL = re.compile(r"^data:[^,]{0,200},", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
_URLSAFE = str.maketrans("-_", "+/")
MAX_PAD = 4096  # pixels; pads beyond any supported image side make no sense


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


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ints(body: dict, name: str, lo: int, hi: int) -> tuple[int, int, int, int] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 4 or not all(_is_int(v) or (isinstance(v, float) and v.is_integer()) for v in value):
        raise BadRequest(f"{name} must be a list of 4 integers, got {json.dumps(value)[:80]}", code=f"invalid_{name}")
    ints = tuple(int(v) for v in value)
    if not all(lo <= v <= hi for v in ints):
        raise BadRequest(f"{name} values must be between {lo} and {hi}, got {list(ints)}", code=f"invalid_{name}")
    return ints  # type: ignore[return-value]


def _media(body: dict, name: str) -> bytes:
    value = body.get(name)
    if value is None:
        raise BadRequest(f"missing required field {name!r} (base64 or data URL)", code="missing_field")
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a base64 string, got {type(value).__name__}", code="invalid_field")
    return b64decode(value, name)


def parse_generate(body: bytes) -> GenerateRequest:
    """Validate the whole request body before any expensive work."""
    obj = parse_json(body)
    fps = obj.get("fps", 25)
    if fps is None:
        fps = 25
    # the range test also refuses NaN and ±inf; math.isfinite() would overflow on a 400-digit integer
    if not (_is_int(fps) or isinstance(fps, float)) or not 1 <= fps <= 60:
        raise BadRequest(f"fps must be a number between 1 and 60, got {json.dumps(fps)[:40]}", code="invalid_fps")
    paste = obj.get("paste", "box")
    if paste is None:
        paste = "box"
    if paste not in PASTE_MODES:
        raise BadRequest(f"paste must be one of {list(PASTE_MODES)}, got {json.dumps(paste)[:40]}", code="invalid_paste")
    pads = _ints(obj, "pads", -MAX_PAD, MAX_PAD) or DEFAULT_PADS
    box = _ints(obj, "box", 0, 1 << 20)
    image = _media(obj, "image")
    audio = _media(obj, "audio")
    return GenerateRequest(image, audio, Options(fps=float(fps), pads=pads, box=box, paste=paste))
