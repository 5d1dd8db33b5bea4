"""Settings from the environment, in one dataclass. Every variable is listed in the README."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default).strip()


def _number(name: str, default: float, lo: float, hi: float, cast: type[int] | type[float]) -> Any:
    raw = _env(name, str(default))
    try:
        value = cast(raw)
    except ValueError as e:
        raise ValueError(f"{name} must be {'an integer' if cast is int else 'a number'}, got {raw!r}") from e
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _int(name: str, default: int, lo: int, hi: int) -> int:
    return _number(name, default, lo, hi, int)


def _float(name: str, default: float, lo: float, hi: float) -> float:
    return _number(name, default, lo, hi, float)


@dataclass(frozen=True)
class Settings:
    """Runtime settings; `Settings.from_env()` reads them, validating each."""

    models_dir: Path = Path("ir_models")
    precision: str = "auto"  # auto | f32 | bf16 | f16: the CPU plugin's inference precision
    workers: int = 1
    ov_threads: int = 0  # 0: cores ÷ workers
    ov_streams: int = 1  # CPU plugin streams per worker; the threads are shared among them
    batch_size: int = 16  # generator frames per inference call (static shape)
    split_generator: bool = True  # face encoder once per request + decoder per batch (still avatars)
    cache_dir: Path | None = Path("ov_cache")  # OpenVINO compiled-blob cache: fast worker restarts
    detect_max_side: int = 640  # larger images are downscaled for detection, boxes scaled back
    max_request_bytes: int = 64 * 1024 * 1024
    max_audio_seconds: float = 300.0
    max_image_pixels: int = 4096 * 4096
    max_output_side: int = 0  # 0: output has the input's resolution (rounded down to even)
    max_concurrent: int = 1  # requests computed at once per worker
    max_queue: int = 2  # requests waiting for a slot per worker; beyond that 503 + Retry-After at once
    queue_timeout_s: float = 30.0  # a queued request waits at most this long, then 503
    request_timeout_s: float = 300.0  # per-request deadline → 504
    api_key: str = ""
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    x264_preset: str = "veryfast"
    x264_params: str = "subme=1"  # bench: −20 % encoder CPU vs veryfast's subme=2 at the same size and PSNR
    x264_crf: int = 18
    face_cache_size: int = 256

    @classmethod
    def from_env(cls) -> Settings:
        """Read every setting from its environment variable (names in the README)."""
        workers = _int("WEB_CONCURRENCY", 1, 1, 64)
        cache = _env("OV_CACHE_DIR", "ov_cache")
        precision = _env("PRECISION", "auto").lower()
        if precision not in ("auto", "f32", "bf16", "f16"):
            raise ValueError(f"PRECISION must be auto, f32, bf16 or f16, got {precision!r}")
        origins = tuple(o.strip() for o in _env("CORS_ORIGINS", "").split(",") if o.strip())
        return cls(
            models_dir=Path(_env("MODELS_DIR", "ir_models")),
            precision=precision,
            workers=workers,
            ov_threads=_int("INFERENCE_NUM_THREADS", 0, 0, 256),
            ov_streams=_int("INFERENCE_NUM_STREAMS", 1, 1, 64),
            batch_size=_int("BATCH_SIZE", 16, 1, 256),
            split_generator=_env("SPLIT_GENERATOR", "1") not in ("0", "false", "no", "off"),
            cache_dir=Path(cache) if cache else None,
            detect_max_side=_int("DETECT_MAX_SIDE", 640, 128, 4096),
            max_request_bytes=_int("MAX_REQUEST_BYTES", 64 * 1024 * 1024, 1024, 2**31),
            max_audio_seconds=_float("MAX_AUDIO_SECONDS", 300.0, 0.1, 3600.0),
            max_image_pixels=_int("MAX_IMAGE_PIXELS", 4096 * 4096, 64, 2**28),
            max_output_side=_int("MAX_OUTPUT_SIDE", 0, 0, 8192),
            max_concurrent=_int("MAX_CONCURRENT", 1, 1, 64),
            max_queue=_int("MAX_QUEUE", 2, 0, 1024),
            queue_timeout_s=_float("QUEUE_TIMEOUT_S", 30.0, 0.0, 3600.0),
            request_timeout_s=_float("REQUEST_TIMEOUT_S", 300.0, 1.0, 3600.0),
            api_key=_env("API_KEY", ""),
            cors_origins=origins,
            x264_preset=_env("X264_PRESET", "veryfast"),
            x264_params=_env("X264_PARAMS", "subme=1"),
            x264_crf=_int("X264_CRF", 18, 0, 51),
            face_cache_size=_int("FACE_CACHE_SIZE", 256, 0, 100_000),
        )

    def threads(self) -> int:
        """OpenVINO inference threads for this process: the setting, or cores ÷ workers."""
        return self.ov_threads or max(1, _cpu_count() // self.workers)

    def describe(self) -> dict[str, object]:
        """Settings as JSON-safe values, the API key hidden."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["api_key"] = "set" if self.api_key else ""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}
