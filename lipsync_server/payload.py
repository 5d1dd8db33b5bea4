"""Request bodies (JSON with base64 media, or multipart/form-data with files) → media bytes and
`Options`. Every refusal is a typed 4xx; JSON and multipart carrying the same bytes are the same request.

Base64 is decoded strictly: data-URL prefixes, whitespace, missing padding and the URL-safe
alphabet are accepted; any other character is an error (Python's default decoder silently
drops them). Unknown fields are ignored, so clients may send extra metadata. The options are
declared and checked in `schema.Options`. A request kept for a job is `to_parts` / `from_parts`: named byte
strings that a job store holds without reading them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from lipsync_stores.store import NAME
from wav2lip_core.errors import BadRequest
from wav2lip_core.schema import Options

_DATA_URL = re.compile(r"^data:[^,]{0,200},", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
_URLSAFE = str.maketrans("-_", "+/")


MEDIA_FIELDS = ("image", "video", "avatar_id")  # exactly one names the avatar of a request


@dataclass
class GenerateRequest:
    """A lip-sync request: the avatar as one of `image` / `video` bytes or a registered `avatar_id`."""

    audio: bytes
    options: Options
    image: bytes | None = None
    video: bytes | None = None
    avatar_id: str | None = None
    stream: bool = False  # the MP4 fragmented and sent as it is made


@dataclass
class AvatarRequest:
    """A registration: an image or a video, and the options that shape its face boxes."""

    media: bytes
    video: bool
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


@dataclass
class Body:
    """A request body as fields: JSON values, or multipart form strings plus uploaded files."""

    values: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    form: bool = False

    @classmethod
    def from_json(cls, raw: bytes) -> Body:
        return cls(parse_json(raw))

    def options(self) -> Options:
        return Options.from_form(self.values) if self.form else Options.from_json(self.values)

    def given(self, name: str) -> bool:
        value = self.values.get(name)
        return name in self.files or (value is not None and not (self.form and value == ""))

    def media(self, name: str) -> bytes:
        """A file part as uploaded, or a base64 / data-URL string field (JSON or form)."""
        if name in self.files:
            if not self.files[name]:
                raise BadRequest(f"{name} is empty", code="empty_field")
            return self.files[name]
        value = self.values.get(name)
        if not self.given(name):
            raise BadRequest(f"missing required field {name!r} (a file part, base64 or a data URL)", code="missing_field")
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a base64 string, got {type(value).__name__}", code="invalid_field")
        return b64decode(value, name)

    def one_of(self, names: tuple[str, ...]) -> str:
        """The one field of `names` that was sent."""
        given = [n for n in names if self.given(n)]
        if len(given) != 1:
            which = " or ".join(repr(n) for n in names)
            if not given:
                raise BadRequest(f"missing required field: send {which}", code="missing_field")
            raise BadRequest(f"send only one of {which}, got {given}", code="invalid_field")
        return given[0]

    def flag(self, name: str) -> bool:
        """A yes/no field: JSON true/false; in a form "true"/"false"/"1"/"0"; absent is false."""
        value = self.values.get(name)
        if not self.given(name) or value is False:
            return False
        if value is True or (self.form and value in ("true", "1")):
            return True
        if self.form and value in ("false", "0"):
            return False
        raise BadRequest(f"{name} must be true or false, got {json.dumps(value)[:80]}", code="invalid_field")

    def avatar_id(self) -> str:
        """An avatar's id, or a name: 1–128 letters, digits, '-', '_', '.' (never a path)."""
        value = self.values.get("avatar_id")
        if not self.given("avatar_id"):
            raise BadRequest("missing required field 'avatar_id'", code="missing_field")
        if not isinstance(value, str) or not NAME.fullmatch(value):
            raise BadRequest(
                f"avatar_id must be an id from POST /api/avatars or a name given to POST /cache-avatar (1–128 letters, digits, "
                f"'-', '_', '.'), got {json.dumps(value)[:80]}",
                code="invalid_field",
            )
        return value


def parse_generate(body: Body) -> GenerateRequest:
    """Validate the whole request before any expensive work (options first: they are cheap)."""
    options = body.options()
    which = body.one_of(MEDIA_FIELDS)
    avatar = {which: body.avatar_id() if which == "avatar_id" else body.media(which)}
    stream = body.flag("stream")
    return GenerateRequest(body.media("audio"), options, stream=stream, **avatar)


def parse_avatar(body: Body) -> AvatarRequest:
    """`POST /api/avatars`: an image or a video, and options (pads, box; fps for images)."""
    options = body.options()
    which = body.one_of(("image", "video"))
    return AvatarRequest(body.media(which), which == "video", options)


# A request kept for later (a job): the named byte strings a job store holds without reading them.
REQUEST_PART = "request"  # the request's fields as JSON; the media are parts of their own


def to_parts(req: GenerateRequest) -> dict[str, bytes]:
    """A validated request as named byte strings (media as sent, the rest as JSON): what a store keeps."""
    fields = {"options": dataclasses.asdict(req.options), "avatar_id": req.avatar_id}
    parts = {REQUEST_PART: json.dumps(fields).encode(), "audio": req.audio}
    parts |= {name: data for name in ("image", "video") if (data := getattr(req, name)) is not None}
    return parts


def from_parts(parts: dict[str, bytes]) -> GenerateRequest:
    """The request `to_parts` stored."""
    fields = json.loads(parts[REQUEST_PART])
    media = {name: parts[name] for name in MEDIA_FIELDS if name in parts}
    if fields["avatar_id"] is not None:
        media["avatar_id"] = fields["avatar_id"]
    return GenerateRequest(parts["audio"], Options.from_json(fields["options"]), **media)
