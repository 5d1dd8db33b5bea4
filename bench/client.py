"""The bench's timed HTTP client (the server itself is harness.gunicorn).

It does what a real client does — base64-encode the media into JSON, POST it, parse the JSON
answer and base64-decode the MP4 — and times all of it, so the wall time is the caller's.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

REQUEST_TIMEOUT_S = 600.0


@dataclass
class Call:
    """One /api/generate round trip as the client saw it, with the server's own stage timings."""

    wall_s: float
    frames: int
    duration_s: float
    timings_ms: dict[str, float]
    client_ms: float  # JSON + base64 encode of the request, JSON parse + base64 decode of the answer
    http_ms: float  # from sending the body to the last byte of the answer
    face_box: list[int]
    mp4_bytes: int
    request_id: str = ""  # sent as X-Request-ID; the server's access log names the worker pid that served it

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s

    @property
    def transport_ms(self) -> float:
        """HTTP time the stage timings do not cover: request parsing and JSON rendering, socket copies."""
        return self.http_ms - sum(self.timings_ms.values())


def generate(url: str, image: bytes, audio: bytes, box: tuple[int, int, int, int] | None = None) -> Call:
    """POST one request (JSON + base64 in and out) and time it end to end."""
    request_id = f"bench-{uuid.uuid4().hex[:16]}"
    t0 = time.perf_counter()
    fields: dict[str, object] = {"image": base64.b64encode(image).decode("ascii"), "audio": base64.b64encode(audio).decode("ascii")}
    if box is not None:
        fields["box"] = list(box)
    body = json.dumps(fields).encode()
    t1 = time.perf_counter()
    headers = {"Content-Type": "application/json", "X-Request-ID": request_id}
    req = urllib.request.Request(f"{url}/api/generate", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"POST {url}/api/generate answered {e.code}: {e.read()[:300]!r}") from e
    t2 = time.perf_counter()
    out = json.loads(raw)
    mp4 = base64.b64decode(out["video"])
    t3 = time.perf_counter()
    if mp4[4:8] != b"ftyp":
        raise RuntimeError(f"the answer's video is not an MP4 (starts with {mp4[:8]!r})")
    return Call(
        wall_s=t3 - t0,
        frames=out["frames"],
        duration_s=out["duration_s"],
        timings_ms=out["timings_ms"],
        client_ms=((t1 - t0) + (t3 - t2)) * 1000,
        http_ms=(t2 - t1) * 1000,
        face_box=out["face_box"],
        mp4_bytes=len(mp4),
        request_id=request_id,
    )


def concurrent(
    url: str, clients: int, requests: int, image: bytes, audio: bytes, box: tuple[int, int, int, int]
) -> tuple[list[Call], float]:
    """`requests` requests split over `clients` threads, each sending its next as soon as the last returns."""
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(lambda n: [generate(url, image, audio, box) for _ in range(n)], n) for n in per_client]
        calls = [c for f in futures for c in f.result()]
    return calls, time.perf_counter() - t0
