"""N concurrent clients against the HTTP server: successes, 503s, other errors, latency percentiles.

    python -m bench.load --url http://127.0.0.1:8000 --clients 8 --requests 40 --timeout 120

Without --url it starts its own gunicorn (harness.gunicorn) on a free loopback port with the IR in
$MODELS_DIR (default ir_models/), configured by the rest of the environment like `make serve`, and
stops it at the end. Every client sends the test assets (astronaut + speech) back to back; a 503 is
counted, not retried or waited for. Bounded: --requests in total, each with --timeout seconds, and
the whole run stops issuing requests after --max-seconds.
Writes bench/results/load.json.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import ASSETS, ROOT
from harness.gunicorn import Gunicorn

RESULTS = ROOT / "bench" / "results" / "load.json"


@dataclass
class Outcome:
    """One request: HTTP status (0: no response) or the transport error, and its wall time."""

    status: int
    seconds: float
    error: str = ""


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0–100) of the values, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@contextmanager
def own_server(models_dir: Path) -> Iterator[str]:
    """gunicorn on a free loopback port, configured by the caller's environment; stopped on exit."""
    if not (models_dir / "manifest.json").is_file():
        sys.exit(f"no IR in {models_dir}/: create it with  python convert_to_openvino.py --random-init 0 --out {models_dir}")
    with tempfile.TemporaryDirectory(prefix="wav2lip-load-") as tmp:
        server = Gunicorn(models_dir, Path(tmp) / "gunicorn.log", cache_dir=None, env={"LOG_LEVEL": "warning"}, inherit_env=True)
        with server:
            print(f"started gunicorn on {server.url} (ready in {server.ready_s:.1f} s)", flush=True)
            yield server.url


def one_request(url: str, body: bytes, timeout: float, headers: dict[str, str]) -> Outcome:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.request("POST", "/api/generate", body=body, headers={"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        resp.read()
        return Outcome(resp.status, time.monotonic() - t0)
    except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out: counted, never retried
        return Outcome(0, time.monotonic() - t0, f"{type(e).__name__}: {e}")
    finally:
        conn.close()


def run_load(url: str, clients: int, requests: int, timeout: float, max_seconds: float, body: bytes, headers: dict[str, str]) -> dict:
    """`requests` requests shared by `clients` threads; each thread sends its next one as soon as the last returns."""
    remaining = iter(range(requests))
    lock = threading.Lock()
    outcomes: list[Outcome] = []
    stop_at = time.monotonic() + max_seconds

    def client() -> None:
        while time.monotonic() < stop_at:
            with lock:
                if next(remaining, None) is None:
                    return
            outcome = one_request(url, body, timeout, headers)
            with lock:
                outcomes.append(outcome)

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as ex:
        for f in [ex.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.monotonic() - t0
    ok = [o.seconds for o in outcomes if o.status == 200]
    others = Counter(str(o.status) if o.status else o.error.split(":")[0] for o in outcomes if o.status not in (200, 503))
    return {
        "url": url, "clients": clients, "requests_sent": len(outcomes), "requests_planned": requests,
        "wall_s": round(wall, 2), "successes": len(ok), "busy_503": sum(o.status == 503 for o in outcomes),
        "other_errors": dict(others),
        "latency_s": {f"p{q}": None if (v := percentile(ok, q)) is None else round(v, 3) for q in (50, 90, 99)},
        "latency_503_s_max": round(max((o.seconds for o in outcomes if o.status == 503), default=0.0), 3),
        "throughput_rps": round(len(ok) / wall, 3) if wall else None,
        "errors_sample": [asdict(o) for o in outcomes if o.error][:5],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="server to load (default: start a local gunicorn with $MODELS_DIR)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--requests", type=int, default=40, help="requests in total (default 40)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    p.add_argument("--max-seconds", type=float, default=900.0, help="stop sending new requests after this (default 900)")
    p.add_argument("--image", type=Path, default=ASSETS / "astronaut.jpg")
    p.add_argument("--audio", type=Path, default=ASSETS / "speech.wav")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--api-key", default=os.environ.get("API_KEY", ""))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if not (1 <= args.clients <= 256 and 1 <= args.requests <= 100_000):
        p.error("--clients must be 1–256 and --requests 1–100000")
    body = json.dumps({"image": base64.b64encode(args.image.read_bytes()).decode(),
                       "audio": base64.b64encode(args.audio.read_bytes()).decode(), "fps": args.fps}).encode()  # fmt: skip
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    def go(url: str) -> dict:
        print(f"{args.clients} clients, {args.requests} requests → {url}", flush=True)
        return run_load(url, args.clients, args.requests, args.timeout, args.max_seconds, body, headers)

    if args.url:
        result = go(args.url.rstrip("/"))
    else:
        with own_server(Path(os.environ.get("MODELS_DIR", "ir_models"))) as url:
            result = go(url)
    result |= {"image": args.image.name, "audio": args.audio.name, "fps": args.fps, "own_server": not args.url}
    lat = result["latency_s"]
    print(f"successes {result['successes']}  503 {result['busy_503']}  other errors {result['other_errors'] or 0}")
    print(f"latency (200s) p50 {lat['p50']} s  p90 {lat['p90']} s  p99 {lat['p99']} s; slowest 503 {result['latency_503_s_max']} s")
    print(f"throughput {result['throughput_rps']} successful requests/s over {result['wall_s']} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
