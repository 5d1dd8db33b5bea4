"""The request schema, declared once: `Options` (every field's default, bounds, error code and doc),
`Box`, and `Result`. A leaf module: it imports nothing else of the pipeline.

One declaration serves every way a request arrives: a JSON object (`Options.from_json`), form fields
as strings (`Options.from_form`, for multipart uploads) and command-line arguments
(`add_cli_arguments` / `Options.from_cli`). Values are checked here, once; what depends on the image
(a box inside its frame) is checked by `Options.check_box` when the image is known.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import BadRequest

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, x2/y2 exclusive: the crop is frame[y1:y2, x1:x2]

PASTE_MODES = ("box", "feather")
LOOP_MODES = ("repeat", "pingpong", "none")
MAX_PAD = 4096  # pixels; pads beyond any supported image side make no sense
MAX_BOX_COORD = 1 << 20
MAX_START_FRAME = 1 << 30  # loop positions wrap, so any non-negative position is meaningful


@dataclass(frozen=True)
class Spec:
    """How one option is read and checked: kind, bounds or choices, error code, one-line doc."""

    kind: str  # "number" | "integer" | "ints4" | "choice"
    doc: str
    code: str
    lo: float = 0
    hi: float = 0
    choices: tuple[str, ...] = ()
    cli: str = ""  # metavar hint for --help

    def check(self, name: str, value: Any) -> Any:
        """The value in its canonical type, or BadRequest with this option's code."""
        if self.kind == "number":
            return self._number(name, value)
        if self.kind == "integer":
            if not _is_int(value) or not self.lo <= value <= self.hi:
                raise BadRequest(f"{name} must be an integer between {self.lo:g} and {self.hi:g}, got {_show(value)}", code=self.code)
            return value
        if self.kind == "ints4":
            return self._ints4(name, value)
        if value not in self.choices:
            raise BadRequest(f"{name} must be one of {list(self.choices)}, got {_show(value)}", code=self.code)
        return value

    def _number(self, name: str, value: Any) -> float:
        # the range test also refuses NaN and ±inf; math.isfinite() would overflow on a 400-digit integer
        if not (_is_int(value) or isinstance(value, float)) or not self.lo <= value <= self.hi:
            raise BadRequest(f"{name} must be a number between {self.lo:g} and {self.hi:g}, got {_show(value)}", code=self.code)
        return float(value)

    def _ints4(self, name: str, value: Any) -> Box:
        integral = lambda v: _is_int(v) or (isinstance(v, float) and v.is_integer())
        if not isinstance(value, list | tuple) or len(value) != 4 or not all(integral(v) for v in value):
            raise BadRequest(f"{name} must be a list of 4 integers, got {_show(value)}", code=self.code)
        ints = tuple(int(v) for v in value)
        if not all(self.lo <= v <= self.hi for v in ints):
            raise BadRequest(f"{name} values must be between {self.lo:g} and {self.hi:g}, got {list(ints)}", code=self.code)
        return ints  # type: ignore[return-value]


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(value: object) -> str:
    try:
        return json.dumps(value)[:80]
    except (TypeError, ValueError):  # not JSON (CLI or form input): its repr
        return repr(value)[:80]


def _opt(default: Any, spec: Spec) -> Any:
    return field(default=default, metadata={"spec": spec})


@dataclass(frozen=True)
class Options:
    """Per-request options. `None` means "not given": the documented default applies."""

    fps: float | None = _opt(None, Spec("number", "output frames per second (default: 25 for an image, the clip's own for a video)",
                                         "invalid_fps", 1, 60, cli="FPS"))  # fmt: skip
    pads: Box = _opt((0, 10, 0, 0), Spec("ints4", "pixels added to the detected face box: top bottom left right (inference.py's default)",
                                         "invalid_pads", -MAX_PAD, MAX_PAD, cli="T B L R"))  # fmt: skip
    box: Box | None = _opt(None, Spec("ints4", "face box x1 y1 x2 y2 in pixels, x2/y2 exclusive: skips detection, used exactly (no pads)",
                                      "invalid_box", 0, MAX_BOX_COORD, cli="X1 Y1 X2 Y2"))  # fmt: skip
    paste: str = _opt("box", Spec("choice", "box (Wav2Lip's plain paste) or feather (soft lower-face blend)", "invalid_paste",
                                  choices=PASTE_MODES))  # fmt: skip
    loop: str = _opt("pingpong", Spec("choice", "video avatars: forward then backward, never a jump cut (pingpong), "
                                      "restart at the end (repeat), or once with the last frame held (none: dubbing)",
                                      "invalid_loop", choices=LOOP_MODES))  # fmt: skip
    start_frame: int = _opt(0, Spec("integer", "video avatars: the first output frame is this position of the loop sequence "
                                    "(send the previous answer's end_frame to chain clips seamlessly)",
                                    "invalid_start_frame", 0, MAX_START_FRAME, cli="K"))  # fmt: skip

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                object.__setattr__(self, f.name, f.metadata["spec"].check(f.name, value))

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Options:
        """From a parsed JSON object: known fields only, null = default; unknown keys are ignored."""
        return cls(**{name: obj[name] for name in option_names() if obj.get(name) is not None})

    @classmethod
    def from_form(cls, form: dict[str, str]) -> Options:
        """From form fields (strings): numbers as text, lists as JSON ("[0, 10, 0, 0]") or "0,10,0,0"."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = form.get(f.name, "").strip()
            if raw:
                values[f.name] = _from_text(raw, f.metadata["spec"])
        return cls(**values)

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> Options:
        """From arguments added by `add_cli_arguments`."""
        return cls(**{name: getattr(args, name) for name in option_names() if getattr(args, name, None) is not None})

    def fps_or(self, default: float) -> float:
        return self.fps if self.fps is not None else default

    def check_box(self, width: int, height: int) -> None:
        """A given box must lie inside the image as sent."""
        if self.box is None:
            return
        x1, y1, x2, y2 = self.box
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise BadRequest(
                f"box {list(self.box)} must satisfy 0 ≤ x1 < x2 ≤ {width} and 0 ≤ y1 < y2 ≤ {height} (image {width}×{height})",
                code="invalid_box",
            )


def option_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(Options))


def _from_text(raw: str, spec: Spec) -> Any:
    if spec.kind == "choice":
        return raw
    try:
        return json.loads(raw if spec.kind in ("number", "integer") or raw.startswith("[") else f"[{raw}]")
    except ValueError:
        return raw  # not a number / list: the spec's check names the field and the value


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--name` argument per option, help and default from the declaration."""
    for f in fields(Options):
        spec: Spec = f.metadata["spec"]
        default = f" (default: {' '.join(map(str, f.default)) if isinstance(f.default, tuple) else f.default})" if f.default else ""
        if spec.kind == "choice":
            parser.add_argument(f"--{f.name}", choices=spec.choices, help=spec.doc + default)
        elif spec.kind in ("number", "integer"):
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=float if spec.kind == "number" else int,
                                metavar=spec.cli, help=spec.doc + default)  # fmt: skip
        else:
            parser.add_argument(f"--{f.name}", type=int, nargs=4, metavar=tuple(spec.cli.split()), help=spec.doc + default)


@dataclass
class Result:
    """One lip-synced clip and what it took."""

    mp4: bytes
    duration_s: float
    fps: float
    frames: int
    width: int
    height: int
    face_box: Box
    face_source: str  # "box" (given by the caller), "cache" (repeated avatar), "detector" or "registered"
    timings_ms: dict[str, float] = field(default_factory=dict)
    end_frame: int = 0  # loop position after the last frame: the next clip's (or the idle loop's) start_frame
