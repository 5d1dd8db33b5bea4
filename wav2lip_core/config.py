"""Settings from the environment, in one dataclass.

Each setting is declared once, as a field whose metadata carries its variable, what it allows and a
one-line doc: `Settings.from_env()` reads and checks every field from those declarations, and
`markdown_table()` renders the README's table from them (tests/core/test_config.py compares the two).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

TRUE = ("1", "true", "yes", "on")
# WORKER_MEMORY_MB's default share of the memory: the rest is the gunicorn master's (~60 MB), the page cache of the frame files
# in use (shared by the workers and reclaimable, but charged to a container's limit) and room for the estimates' error.
MEMORY_SHARE = 0.75
FALSE = ("0", "false", "no", "off")

# Free-form types: how a variable's text becomes the value, and what the table says they allow.
_FREE: dict[object, tuple[Any, str]] = {
    str: (str, "text"),
    Path: (Path, "a path"),
    Path | None: (lambda raw: Path(raw) if raw else None, "a path, or empty"),
    tuple[str, ...]: (lambda raw: tuple(p.strip() for p in raw.split(",") if p.strip()), "comma-separated"),
}


@dataclass(frozen=True)
class Env:
    """How one setting is read: its variable, its bounds (numbers) or choices (words), its meaning."""

    var: str
    doc: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()


def setting(default: Any, var: str, doc: str, lo: float | None = None, hi: float | None = None, choices: tuple[str, ...] = ()) -> Any:
    """A dataclass field read from the variable `var`: numbers between `lo` and `hi`, words among `choices`."""
    return field(default=default, metadata={"env": Env(var, doc, lo, hi, choices)})


def _memory_total() -> int:
    """This machine's memory in bytes, or its cgroup's limit when lower (in a container)."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):  # cgroup v2, v1
        try:
            return min(total, int(limit.read_text()))
        except (FileNotFoundError, ValueError):  # no such cgroup file, or "max": no limit there
            continue
    return total


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    """Runtime settings; `Settings()` has the defaults, `Settings.from_env()` reads and checks each variable."""

    # setting() returns a dataclasses.field, which ruff's RUF009 cannot tell; a Path is immutable, so one default is shared safely
    models_dir: Path = setting(Path("ir_models"), "MODELS_DIR", "where the IR and `manifest.json` are")
    precision: str = setting(
        "auto",
        "PRECISION",
        "CPU inference precision; `auto`: bf16 if the CPU has it natively, else f32; `int8`: the INT8 generator of "
        "`convert_to_openvino.py --int8` (its float parts as `auto`)",
        choices=("auto", "f32", "bf16", "f16", "int8"),
    )
    workers: int = setting(
        1, "WEB_CONCURRENCY", "gunicorn workers; each compiles its own models (~350 MB RSS when ready, ~460 MB after 512² requests)", 1, 64
    )
    worker_memory_mb: int = setting(
        0,
        "WORKER_MEMORY_MB",
        "private memory (RssAnon) a worker plans its work in: work whose estimated footprint does not fit is refused before "
        "it starts (`503 memory_budget` while other work holds it, `422 exceeds_memory_budget` if it never could); "
        "0: 75 % of the memory (the cgroup's limit if lower) ÷ `WEB_CONCURRENCY`",
        0,
        10**7,
    )
    ov_threads: int = setting(0, "INFERENCE_NUM_THREADS", "OpenVINO threads per worker (CPU pinning is off); 0: cores ÷ workers", 0, 256)
    ov_streams: int = setting(1, "INFERENCE_NUM_STREAMS", "CPU plugin streams per worker; the threads are shared among them", 1, 64)
    # bench: 9.1 ms a frame at batch 4 as at 16; a small batch is a small first stream fragment and a quick barge-in
    batch_size: int = setting(4, "BATCH_SIZE", "generator frames per inference call (static shape); a stream's fragment", 1, 256)
    split_generator: bool = setting(
        True, "SPLIT_GENERATOR", "run the face encoder once per request (still avatar), then only the decoder per batch"
    )
    cache_dir: Path | None = setting(Path("ov_cache"), "OV_CACHE_DIR", "compiled-model cache: fast worker restarts; empty disables it")
    detect_max_side: int = setting(640, "DETECT_MAX_SIDE", "images are downscaled to this for detection; boxes scaled back", 128, 4096)
    max_request_bytes: int = setting(64 * 1024 * 1024, "MAX_REQUEST_BYTES", "body limit (64 MiB) → `413`", 1024, 2**31)
    max_audio_seconds: float = setting(300.0, "MAX_AUDIO_SECONDS", "audio limit → `422 audio_too_long`", 0.1, 3600.0)
    max_image_pixels: int = setting(
        4096 * 4096, "MAX_IMAGE_PIXELS", "image limit (4096²), read from the header → `422 image_too_large`", 64, 2**28
    )
    max_output_side: int = setting(
        0, "MAX_OUTPUT_SIDE", "larger images are scaled down so the longer side fits; 0: the input's resolution", 0, 8192
    )
    max_concurrent: int = setting(1, "MAX_CONCURRENT", "whole (non-streamed) answers computed at once per worker", 1, 64)
    max_queue: int = setting(4, "MAX_QUEUE", "whole answers waiting per worker; beyond that `503` + `Retry-After` at once", 0, 1024)
    # Streams are admitted by real-time capacity (gate.Capacity), not by the queue above: 3 bf16 streams of 25 fps need
    # ~75 % of a 2-core worker (bench/results/multistream.json); a new one beyond the limit gets 503 at once.
    stream_capacity: float = setting(
        0.85,
        "STREAM_CAPACITY",
        "share of this worker's measured compute that the streams it plays may need together; beyond it a new stream gets "
        "`503` + `Retry-After` (one stream alone is always admitted); above 1: admit streams that will fall behind",
        0.05,
        10.0,
    )
    max_streams: int = setting(16, "MAX_STREAMS", "streamed replies playing at once per worker, at most", 1, 256)
    queue_timeout_s: float = setting(30.0, "QUEUE_TIMEOUT_S", "longest wait in the queue before `503`, seconds", 0.0, 3600.0)
    request_timeout_s: float = setting(300.0, "REQUEST_TIMEOUT_S", "per-request deadline → `504`, work stopped; seconds", 1.0, 3600.0)
    api_key: str = setting(
        "", "API_KEY", "if set, `/api/*` and the drop-in routes need `Authorization: Bearer <key>` (constant-time compare)"
    )
    cors_origins: tuple[str, ...] = setting((), "CORS_ORIGINS", "allowed browser origins, or `*`")
    x264_preset: str = setting(
        "veryfast",
        "X264_PRESET",
        "H.264 encoder speed",
        choices=("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo"),
    )
    # bench: subme=1 takes 20 % less encoder CPU than veryfast's subme=2 at the same size and PSNR. No B-frames, no
    # lookahead, constant frame rate: each frame's packet leaves x264 at once (a stream's first frame does not wait
    # for 11 more). Without lookahead there is no macroblock tree: at CRF 23 the mouth's PSNR is that of CRF 18 with
    # it (+0.0 dB at 720p, +2.6 dB at 512²), the static background's 1–3 dB lower, for 1.6–2× the bytes.
    x264_params: str = setting("subme=1:bframes=0:rc-lookahead=0:force-cfr=1", "X264_PARAMS", "extra x264 options, `key=value:key=value`")
    x264_crf: int = setting(23, "X264_CRF", "H.264 quality: lower is better and larger", 0, 51)
    face_cache_size: int = setting(
        256, "FACE_CACHE_SIZE", "face boxes cached per worker, keyed by (pixels hash, detector, pads)", 0, 100_000
    )
    # registered avatars (POST /api/avatars)
    avatar_dir: Path = setting(
        Path("avatars"),
        "AVATAR_DIR",
        "registered avatars: shared by the workers of one machine, kept across restarts (with `REDIS_URL`: this machine's "
        "cache of their frame files)",
    )
    # A video avatar's frame files (frames.py) are its decoded frames: 10 s of 1080p are 1.6 GB, of 720p 0.75 GB. 16 GiB keep
    # ten 1080p or twenty 720p ones; a smaller disk evicts sooner (an evicted avatar must be registered again).
    avatar_store_mb: int = setting(
        16384,
        "AVATAR_STORE_MB",
        "disk for registered avatars on this machine, their frame files counted (~0.75 GB per 10 s of 720p); beyond it the "
        "least recently used are evicted. With `REDIS_URL`: the uploads in Redis, and each machine's cache of frame files",
        1,
        10**7,
    )
    max_avatar_seconds: float = setting(
        10.0,
        "MAX_AVATAR_SECONDS",
        "length limit of a looped video avatar (its frames go to a file, mapped: ~75 MB of disk per second of 720p) → `422 video_too_long`",
        0.1,
        600.0,
    )
    max_video_seconds: float = setting(
        600.0, "MAX_VIDEO_SECONDS", "length limit of a video played straight through (`loop: none`, dubbing): streamed", 0.1, 7200.0
    )
    # shared state: avatars, jobs, job results (README: Several machines)
    redis_url: str = setting(
        "",
        "REDIS_URL",
        "empty: avatars and jobs on this machine (`AVATAR_DIR`, `JOB_DIR`); `redis://host:6379/0`: in Redis, shared by every replica",
    )
    job_dir: Path = setting(
        Path("jobs"), "JOB_DIR", "async jobs without Redis: a SQLite file and the inputs and results, shared by the workers"
    )
    job_workers: int = setting(
        1, "JOB_WORKERS", "job threads per gunicorn worker (they yield to interactive requests); 0: run no jobs here", 0, 16
    )
    job_queue_max: int = setting(
        100, "JOB_QUEUE_MAX", "jobs waiting at most; beyond that `POST /api/jobs` → `503 queue_full` + `Retry-After`", 1, 10**6
    )
    job_ttl_s: float = setting(3600.0, "JOB_TTL_S", "a finished job and its video are kept this long, seconds", 10.0, 30 * 86400.0)
    job_timeout_s: float = setting(
        3600.0, "JOB_TIMEOUT_S", "a job running longer is stopped → `error` `deadline_exceeded`; seconds", 1.0, 86400.0
    )
    job_lease_s: float = setting(
        20.0, "JOB_LEASE_S", "a running job unheard of this long (its replica died) is run again elsewhere; seconds", 2.0, 3600.0
    )
    webhook_hosts: tuple[str, ...] = setting(
        (), "WEBHOOK_HOSTS", "hosts (`host` or `host:port`) a job's `webhook_url` may name, or `*`; empty: webhooks refused"
    )
    fetch_hosts: tuple[str, ...] = setting(
        (), "FETCH_HOSTS", "hosts `source_url` / `audio_url` may be fetched from (`host` or `host:port`); empty: URLs refused"
    )
    public_url: str = setting(
        "",
        "PUBLIC_URL",
        "base of the `status_url` / `result_url` links, e.g. `https://lipsync.example.com`; empty: from the request's Host",
    )
    # gunicorn (read by gunicorn.conf.py)
    port: int = setting(8000, "PORT", "port of the default listen address", 1, 65535)
    bind: str = setting(
        "",
        "BIND",
        "listen address; empty: `127.0.0.1:$PORT`, loopback only (there is no API key by default); "
        "`0.0.0.0:8000` listens on every interface",
    )
    gunicorn_timeout: int = setting(
        120, "GUNICORN_TIMEOUT", "seconds a silent worker lives before it is restarted (busy workers still beat); 0: never", 0, 86400
    )
    graceful_timeout: int = setting(
        0, "GRACEFUL_TIMEOUT", "seconds workers get to finish their requests on stop; 0: `REQUEST_TIMEOUT_S` + 10", 0, 86400
    )
    max_requests: int = setting(
        1000, "MAX_REQUESTS", "a worker is replaced after this many requests (against slow leaks); 0: never", 0, 10**9
    )
    max_requests_jitter: int = setting(
        100, "MAX_REQUESTS_JITTER", "up to this many requests added to `MAX_REQUESTS` per worker, so they restart apart", 0, 10**9
    )
    log_level: str = setting("info", "LOG_LEVEL", "gunicorn and app log level", choices=("debug", "info", "warning", "error", "critical"))

    @classmethod
    def from_env(cls) -> Settings:
        """Read every setting from its variable (unset: the default); a bad value raises ValueError naming it."""
        kinds = get_type_hints(cls)
        values = {}
        for f in fields(cls):
            spec: Env = f.metadata["env"]
            raw = os.environ.get(spec.var)
            if raw is not None:
                values[f.name] = _parse(raw.strip(), kinds[f.name], spec)
        return cls(**values)

    def worker_memory_bytes(self) -> int:
        """This worker's memory budget: the setting, or MEMORY_SHARE of the machine's (container's) memory ÷ workers."""
        return self.worker_memory_mb * 2**20 or int(MEMORY_SHARE * _memory_total() / self.workers)

    def threads(self) -> int:
        """OpenVINO inference threads for this process: the setting, or cores ÷ workers."""
        return self.ov_threads or max(1, _cpu_count() // self.workers)

    def bind_address(self) -> str:
        """gunicorn's listen address: the setting, or loopback on the port."""
        return self.bind or f"127.0.0.1:{self.port}"

    def graceful_timeout_s(self) -> int:
        """Seconds workers get to finish on stop: the setting, or the request deadline + 10."""
        return self.graceful_timeout or int(self.request_timeout_s) + 10

    def describe(self) -> dict[str, object]:
        """Settings as JSON-safe values, the API key hidden."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["api_key"] = "set" if self.api_key else ""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}


def _either(words: tuple[str, ...]) -> str:
    return ", ".join(words[:-1]) + f" or {words[-1]}"


def allowed(kind: object, spec: Env) -> str:
    """What a variable accepts, in words: used by the error messages and the README table."""
    if kind is bool:
        return _either(tuple(word for pair in zip(TRUE, FALSE, strict=True) for word in pair))
    if kind in (int, float):
        return f"between {as_text(spec.lo)} and {as_text(spec.hi)}"
    if spec.choices:
        return _either(spec.choices)
    return _FREE[kind][1]


def _parse(raw: str, kind: object, spec: Env) -> object:
    """One variable's text as the field's type, checked against its bounds or choices."""
    if kind is bool or spec.choices:
        word = raw.lower()
        if word not in (spec.choices or TRUE + FALSE):
            raise ValueError(f"{spec.var} must be {allowed(kind, spec)}, got {raw!r}")
        return word in TRUE if kind is bool else word
    if kind in (int, float):
        try:
            value = kind(raw)
        except ValueError as e:
            raise ValueError(f"{spec.var} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from e
        if not spec.lo <= value <= spec.hi:
            raise ValueError(f"{spec.var} must be {allowed(kind, spec)}, got {as_text(value)}")
        return value
    return _FREE[kind][0](raw)


def as_text(value: object) -> str:
    """A default written as its variable's text: `from_env` with this text gives the value back."""
    if isinstance(value, bool):
        return TRUE[0] if value else FALSE[0]
    if isinstance(value, float):
        return str(value).removesuffix(".0")  # 300.0 → "300"; str() keeps every digit, unlike :g
    if isinstance(value, tuple):
        return ",".join(value)
    return "" if value is None else str(value)


def markdown_table() -> str:
    """The configuration table of docs/configuration.md, one row per setting, from the declarations above."""
    kinds = get_type_hints(Settings)
    rows = ["| variable | default | allowed | meaning |", "|---|---|---|---|"]
    for f in fields(Settings):
        spec: Env = f.metadata["env"]
        text = as_text(f.default)
        rows.append(f"| `{spec.var}` | {f'`{text}`' if text else 'empty'} | {allowed(kinds[f.name], spec)} | {spec.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
