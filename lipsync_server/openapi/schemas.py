"""JSON Schemas of the request bodies and answers, for the OpenAPI document.

The options come from their one declaration (schema.Options: type, bounds, choices, default, doc,
error code); a body is a list of `Part`s, each with its JSON form (base64 media, values, null for a
default) and its multipart form (file parts, values as text), so JSON and multipart say the same.
Enumerations come from where the server keeps them: job statuses (jobs.STATUSES), D-ID's talk
statuses (compat.TALK_STATUS), avatar names (store.NAME), paste and loop modes (wav2lip_core/schema.py).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from lipsync_server.compat import TALK_STATUS
from lipsync_stores.jobs import STATUSES
from lipsync_stores.store import NAME
from wav2lip_core.schema import Options, Spec

Schema = dict[str, Any]
BASE64 = "base64 (standard or URL-safe, padding optional, line breaks ignored) or a data URL; in a form, a file part"
INT = {"type": "integer"}
NUMBER = {"type": "number"}
STRING = {"type": "string"}
BOX = {"type": "array", "items": INT, "minItems": 4, "maxItems": 4, "description": "x1, y1, x2, y2 in pixels, x2/y2 exclusive"}


def nullable(schema: Schema) -> Schema:
    """`schema` or null (JSON null: "not given")."""
    return {**schema, "type": [schema["type"], "null"]} | ({"enum": [*schema["enum"], None]} if "enum" in schema else {})


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Schema], required: list[str] | None = None, doc: str = "") -> Schema:
    """A closed object: every key the server sends is documented (the tests check answers against it)."""
    out: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    out["required"] = list(properties) if required is None else required
    return out | ({"description": doc} if doc else {})


# ---------------------------------------------------------------- request bodies


@dataclass(frozen=True)
class Part:
    """One field of a request body: its schema in a JSON body and in a multipart/form-data body."""

    name: str
    json: Schema
    form: Schema
    form_encoding: str = ""  # a form part's content type when it is not plain text (a JSON list)


def media(name: str, doc: str) -> Part:
    """Bytes: base64 text in JSON, a file part in a form."""
    return Part(
        name,
        {"type": "string", "contentEncoding": "base64", "minLength": 1, "description": f"{doc}; {BASE64}"},
        {"type": "string", "contentMediaType": "application/octet-stream", "description": doc},
    )


def value(name: str, schema: Schema, null: bool = True) -> Part:
    """A plain value, null (JSON) or absent when not given."""
    return Part(name, nullable(schema) if null else schema, schema)


def avatar_name(doc: str) -> Part:
    """`avatar_id`: an id from POST /api/avatars or a name given to POST /cache-avatar."""
    return value("avatar_id", {"type": "string", "pattern": NAME.pattern, "description": doc}, null=False)


def option_schema(spec: Spec) -> Schema:
    """The JSON Schema of one option, from its spec: bounds or choices, and its error code."""
    if spec.kind == "choice":
        schema: Schema = {"type": "string", "enum": list(spec.choices)}
    elif spec.kind == "ints4":
        schema = {**BOX, "items": {**INT, "minimum": int(spec.lo), "maximum": int(spec.hi)}}
    else:
        schema = {"type": spec.kind, "minimum": spec.lo, "maximum": spec.hi}
    return schema | {"description": f"{spec.doc}; else 400 `{spec.code}`"}


def option_parts() -> tuple[Part, ...]:
    """schema.Options as body fields: in a form, lists as JSON text (`[0,10,0,0]`; `0,10,0,0` also works)."""
    parts = []
    for f in fields(Options):
        schema = option_schema(f.metadata["spec"])
        if f.default is not MISSING and f.default is not None:
            schema["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
        parts.append(Part(f.name, nullable(schema), schema, "application/json" if schema["type"] == "array" else ""))
    return tuple(parts)


@dataclass(frozen=True)
class Body:
    """A request body: its parts, those required, and groups of which exactly one (`one_of`) or at least one (`any_of`) is sent."""

    doc: str
    parts: tuple[Part, ...]
    required: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()
    any_of: tuple[tuple[str, ...], ...] = field(default=())

    def schema(self, form: bool) -> Schema:
        """The body as JSON (`form` False) or as multipart/form-data; unknown fields are ignored, so allowed."""
        out: Schema = {"type": "object", "description": self.doc, "properties": {p.name: p.form if form else p.json for p in self.parts}}
        groups = [{"oneOf": [{"required": [n]} for n in self.one_of]}] if self.one_of else []
        groups += [{"anyOf": [{"required": [n]} for n in names]} for names in self.any_of]
        return out | ({"required": list(self.required)} if self.required else {}) | ({"allOf": groups} if groups else {})

    def encoding(self) -> dict[str, Schema]:
        return {p.name: {"contentType": p.form_encoding} for p in self.parts if p.form_encoding}


IMAGE = "an image: JPEG, PNG, WebP or BMP"
VIDEO = "a short video: MP4, MOV, WebM, MKV or AVI"
AUDIO = media("audio", "the speech: WAV, MP3, Ogg, Opus, FLAC, WebM or M4A")
STREAM = value("stream", {"type": "boolean", "default": False, "description": "true: the MP4 is fragmented and sent as it is made"})
WEBHOOK = value(
    "webhook_url", {"type": "string", "format": "uri", "description": "POSTed the job's final JSON; its host must be in WEBHOOK_HOSTS"}
)


def generate_parts() -> tuple[Part, ...]:
    avatars = (
        media("image", f"the avatar, {IMAGE}"),
        media("video", f"the avatar, {VIDEO}"),
        avatar_name("the avatar: a registered avatar's id, or a name given to POST /cache-avatar"),
    )
    return (*avatars, AUDIO, *option_parts())


def bodies() -> dict[str, Body]:
    """Every request body, by component name."""
    avatar = media("avatar", f"the avatar, {IMAGE}, or {VIDEO} (the bytes tell which)")
    talk = media("source_image", f"the avatar, {IMAGE}, or {VIDEO}"), media("audio_data", "the speech, as `audio`")
    urls = (
        value(n, {"type": "string", "format": "uri", "description": f"fetched instead of `{of}`, from FETCH_HOSTS only"}, null=False)
        for n, of in (("source_url", "source_image"), ("audio_url", "audio_data"))
    )
    hooks = (
        value(n, {"type": "string", "format": "uri", "description": "as webhook_url of POST /api/jobs"}) for n in ("webhook", "webhook_url")
    )
    gen = generate_parts()
    return {
        "Generate": Body("one avatar and the speech; options", (*gen, STREAM), ("audio",), ("image", "video", "avatar_id")),
        "Job": Body(
            "the body of POST /api/generate (without stream), and a webhook", (*gen, WEBHOOK), ("audio",), ("image", "video", "avatar_id")
        ),
        "Avatar": Body(
            "an image or a video; pads and box shape its face boxes, fps an image's clips",
            (*gen[:2], *option_parts()),
            one_of=("image", "video"),
        ),
        "Sync": Body("dubbing: a video and new speech", (media("video", VIDEO), AUDIO, *option_parts()), ("video", "audio")),
        "Animation": Body("an avatar file and the speech", (avatar, AUDIO, *option_parts()), ("avatar", "audio")),
        "CacheAvatar": Body(
            "an avatar file and your name for it",
            (avatar, avatar_name("your name for the avatar"), *option_parts()),
            ("avatar", "avatar_id"),
        ),
        "AnimationWithCache": Body(
            "a cached avatar's name (or id) and the speech", (gen[2], AUDIO, *option_parts()), ("avatar_id", "audio")
        ),
        "GenerateVideo": Body(
            "D-ID style: files or allowed URLs, and a webhook",
            (*talk, *urls, *hooks, *option_parts()),
            any_of=(("source_image", "source_url"), ("audio_data", "audio_url")),
        ),
    }


# ---------------------------------------------------------------- answers

TIME = {"type": "string", "format": "date-time"}
URI = {"type": "string", "format": "uri"}
PROGRESS = {"type": "number", "minimum": 0, "maximum": 1}
JOB_TIMES = {"created_at": TIME, "started_at": nullable(TIME), "completed_at": nullable(TIME)}
JOB_ERROR = nullable(obj({"code": STRING, "message": STRING}))
GENERATED = {
    "video": {"type": "string", "contentEncoding": "base64", "contentMediaType": "video/mp4"}, "mime_type": {"const": "video/mp4"},
    "duration_s": NUMBER, "fps": NUMBER, "frames": INT, "width": INT, "height": INT,
    "face_box": BOX | {"description": "the first output frame's face box"},
    "end_frame": INT | {"description": "loop position after the last frame: the next clip's start_frame"},
    "timings_ms": {"type": "object", "additionalProperties": NUMBER, "description": "milliseconds per stage"}, "request_id": STRING,
}  # fmt: skip
AVATAR = {
    "avatar_id": STRING, "kind": {"enum": ["image", "video"]}, "width": INT, "height": INT, "frames": INT, "fps": NUMBER,
    "duration_s": nullable(NUMBER), "face_boxes": {"type": "array", "items": BOX}, "face_source": STRING, "created_at": TIME,
}  # fmt: skip


def answers() -> dict[str, Schema]:
    """Every JSON answer's schema, by component name."""
    job = {"id": STRING, "status": {"enum": list(STATUSES)}, "progress": PROGRESS, **JOB_TIMES, "error": JOB_ERROR, "attempts": INT}
    talk = {"id": STRING, "progress": PROGRESS, **JOB_TIMES, "error": JOB_ERROR, "status": {"enum": sorted(set(TALK_STATUS.values()))}}
    return {
        "GenerateAnswer": obj(GENERATED),
        "Avatar": obj(AVATAR, doc="a registered avatar's record"),
        "AvatarList": obj({"avatars": {"type": "array", "items": ref("Avatar"), "description": "most recently used first"}}),
        "Job": obj(job | {"status_url": URI, "result_url": URI}, doc="an async job"),
        "Talk": obj(talk | {"result_url": nullable(URI)}, doc="a job in D-ID's shape"),
        "Cached": obj({"status": {"const": "cached"}, "avatar_id": STRING}),
        "Alive": obj({"status": {"const": "alive"}, "pid": INT}),
        "Health": health(),
    }


def health() -> Schema:
    """The probe's answer: the worker's state, and once loaded its models (TalkingHead.info)."""
    text = lambda doc: STRING | {"description": doc}
    info = {
        "openvino": text("OpenVINO version running"), "converted_with_openvino": text("OpenVINO version that wrote the IR"),
        "detector": text("face detector: s3fd or blazeface"), "generator": STRING,
        "generator_weights": {"enum": ["real", "random"], "description": "random: an untrained generator (--random-init)"},
        "generator_split": {"type": "boolean", "description": "face encoder run once per still avatar (SPLIT_GENERATOR)"},
        "precision": text("inference precision, e.g. bf16, f32, int8+bf16"), "batch_size": INT, "threads": INT,
        "cost_model": nullable({"type": "object", "description": "estimate_seconds()'s model, once measured"}),
        "warning": text("present when the generator weights are random, or the INT8 generator drifts past 35 dB unchecked"),
        "int8": nullable(obj({"float_blocks": {"type": "array", "items": STRING}, "psnr_db": NUMBER, "floor_db": nullable(NUMBER),
                              "speedup_vs_bf16": nullable(NUMBER)},
                             doc="PRECISION=int8: the blocks kept float, held-out PSNR vs f32, the floor chosen for, speed-up")),
        "streams": obj({"streams": INT, "max_streams": INT, "load": NUMBER, "limit": NUMBER, "capacity_fps": NUMBER,
                        "demand_fps": NUMBER}, doc="stream admission (gate.Capacity): frames/s of a 512² still"),
        "scheduler": obj({"slots": INT, "computing": INT, "waiting": INT, "renders": INT}, doc="the scheduler's line now"),
        "memory": obj({"budget_mb": NUMBER, "private_mb": NUMBER, "idle_private_mb": NUMBER, "reserved_mb": NUMBER,
                       "running": INT}, doc="the worker's memory budget (WORKER_MEMORY_MB) and its use, MB"),
    }  # fmt: skip
    state = {"status": {"enum": ["ok", "loading", "error"]}, "pid": INT | {"description": "the worker that answered"},
             "models_dir": STRING, "error": nullable(STRING) | {"description": "why the models cannot load"}}  # fmt: skip
    return obj(state | info, required=["status", "pid", "models_dir"], doc="ok: compiled and warm; loading, or error with why")
