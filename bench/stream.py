"""Streamed replies through the real server: first byte, first frame in Chromium, barge-in.

    python -m bench.stream [--runs 5] [--aborts 50]     (make bench-stream)

On a warm gunicorn (default settings): for 6 s and 60 s of speech, the time to the response's first
byte, to its first complete media fragment and to its end, measured by a raw HTTP client; the same
requests played by the browser page in headless Chromium through Media Source Extensions (first frame
painted, `waiting` events, playback rate); the streamed file against the whole reply (frames
identical, audio and video durations); then `--aborts` streams closed by the client after their
first fragment, each followed at once by the next: how long the next waited for the slot, against
one batch's time, and the worker's threads, open files and RSS before and after.
Writes bench/results/stream.json.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import math
import os
import re
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf
import soxr

from bench.run import IMAGE, ROOT, machine, speech, write_results
from harness.gunicorn import Gunicorn, memory_mb
from harness.page import PAGE_ORIGIN
from wav2lip_core.config import Settings

RESULTS = ROOT / "bench" / "results" / "stream.json"
LENGTHS_S = (6.0, 60.0)
TTS_RATE = 22050  # what TTS engines commonly produce: the request's audio is resampled, as in production
SETTLE_S = 2.0  # idle time before reading the worker's threads, files and memory
WARM_ABORTS = 10  # before the baseline


def tts_like(seconds: float) -> bytes:
    """The test speech tiled to `seconds`, at 22.05 kHz, as a 16-bit WAV."""
    samples, rate = sf.read(io.BytesIO(speech(seconds)), dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, soxr.resample(samples, rate, TTS_RATE), TTS_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def body(audio: bytes, stream: bool = True) -> bytes:
    return json.dumps({"image": base64.b64encode(IMAGE.read_bytes()).decode(), "audio": base64.b64encode(audio).decode(),
                       "stream": stream}).encode()  # fmt: skip


def first_fragment_end(data: bytes) -> int | None:
    """Bytes up to the end of the first moof+mdat pair, once both are in `data`."""
    i, seen_moof = 0, False
    while i + 8 <= len(data):
        size = int.from_bytes(data[i : i + 4], "big")
        kind = data[i + 4 : i + 8]
        if i + size > len(data):
            return None
        i += size
        seen_moof |= kind == b"moof"
        if seen_moof and kind == b"mdat":
            return i
    return None


def timed_stream(port: int, payload: bytes) -> dict[str, object]:
    """One streamed request: seconds to the first response byte, the first media fragment and the end."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    t0 = time.perf_counter()
    conn.request("POST", "/api/generate", payload, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    t_head = time.perf_counter() - t0
    data, t_fragment = b"", None
    while chunk := resp.read1(1 << 16):
        data += chunk
        if t_fragment is None and first_fragment_end(data):
            t_fragment = time.perf_counter() - t0
    total = time.perf_counter() - t0
    assert resp.status == 200, data[:300]
    return {"first_byte_s": round(t_head, 4), "first_fragment_s": round(t_fragment or total, 4), "total_s": round(total, 3),
            "frames": int(resp.getheader("X-Frames")), "bytes": len(data), "request_id": resp.getheader("X-Request-ID"),
            "mp4": data}  # fmt: skip


def whole(port: int, payload: bytes) -> tuple[bytes, str]:
    """The whole (not streamed) MP4 and its request id."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/api/generate", payload, {"Content-Type": "application/json", "Accept": "video/mp4"})
    resp = conn.getresponse()
    data = resp.read()
    assert resp.status == 200, data[:300]
    return data, resp.getheader("X-Request-ID")


def tracks(mp4: bytes) -> tuple[list[np.ndarray], float, float]:
    """Decoded video frames and the video and audio durations (from the packets: a fragmented file has no index)."""
    with av.open(io.BytesIO(mp4)) as c:
        frames = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
    spans: dict[str, list[float]] = {"video": [], "audio": []}
    with av.open(io.BytesIO(mp4)) as c:
        for p in c.demux():
            if p.size:
                spans[p.stream.type] += [float(p.pts * p.time_base), float((p.pts + p.duration) * p.time_base)]
    return frames, max(spans["video"]) - min(spans["video"]), max(spans["audio"]) - min(spans["audio"])


def same_as_whole(port: int, payload_whole: bytes, streamed: bytes) -> dict[str, object]:
    got, video_s, audio_s = tracks(streamed)
    ref, ref_video_s, ref_audio_s = tracks(whole(port, payload_whole)[0])
    identical = len(got) == len(ref) and all(np.array_equal(a, b) for a, b in zip(got, ref, strict=True))
    return {"frames": len(got), "frames_identical": identical, "video_s": round(video_s, 3), "audio_s": round(audio_s, 3),
            "av_gap_frames": round(abs(video_s - audio_s) * 25, 2), "whole_video_s": round(ref_video_s, 3),
            "whole_audio_s": round(ref_audio_s, 3)}  # fmt: skip


def worker_state(pid: int) -> dict[str, float]:
    threads = len(os.listdir(f"/proc/{pid}/task"))
    return {"threads": threads, "fds": len(os.listdir(f"/proc/{pid}/fd")), "rss_mb": round(memory_mb(pid)["rss_mb"], 1)}


class StreamRefused(RuntimeError):
    """A stream answered with another status than 200 (`503 busy` while earlier streams still hold the worker)."""

    def __init__(self, head: bytes):
        super().__init__(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        found = re.search(rb"Retry-After: (\d+)", head, re.IGNORECASE)
        self.retry_after = int(found.group(1)) if found else None


def abort_after_first_fragment(port: int, payload: bytes) -> str:
    """Open a stream on a raw socket, read until its first media fragment, close: the request id.
    StreamRefused when it is not answered 200; ConnectionError when the server closes it before that fragment."""
    head = f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head.encode() + payload)
        data = b""
        while b"\r\n\r\n" not in data or not first_fragment_end(_dechunk(data.split(b"\r\n\r\n", 1)[1])):
            if b"\r\n\r\n" in data and not data.startswith(b"HTTP/1.1 200"):
                raise StreamRefused(data)
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"the server closed the stream before its first fragment: {data[:300]!r}")
            data += chunk
    return re.search(rb"X-Request-ID: (\S+)", data, re.IGNORECASE).group(1).decode()


def _dechunk(raw: bytes) -> bytes:
    """The payload of a (possibly partial) chunked body."""
    out, i = b"", 0
    while (eol := raw.find(b"\r\n", i)) >= 0:
        size = int(raw[i:eol].split(b";")[0] or b"0", 16)
        out += raw[eol + 2 : eol + 2 + size]
        if size == 0 or eol + 2 + size > len(raw):
            break
        i = eol + 2 + size + 2
    return out


def records(server: Gunicorn, wanted: list[str], timeout_s: float = 10.0) -> dict[str, dict]:
    """The access-log lines of `wanted` request ids (a stream's line is written just after its last byte)."""
    t0 = time.monotonic()
    while True:
        found = {r["request_id"]: r for r in server.log_records() if r.get("message") == "request" and r["request_id"] in wanted}
        if len(found) == len(set(wanted)) or time.monotonic() - t0 > timeout_s:
            return found
        time.sleep(0.05)


def barge_in(server: Gunicorn, worker: int, n: int, batch_ms: float) -> dict[str, object]:
    payload = body(tts_like(20.0))
    for _ in range(WARM_ABORTS):  # what the first aborts create (pool threads, allocator arenas) stays: not a leak
        abort_after_first_fragment(server.port, payload)
    time.sleep(SETTLE_S)
    before = worker_state(worker)
    ids = [abort_after_first_fragment(server.port, payload) for _ in range(n)]
    last = timed_stream(server.port, body(tts_like(1.0)))  # the request after the last abort runs to its end
    time.sleep(SETTLE_S)
    after = worker_state(worker)
    log = records(server, [*ids, last["request_id"]])
    waits = [log[i]["wait_ms"] for i in ids[1:]] + [log[last["request_id"]]["wait_ms"]]  # each waited for the previous abort
    sent = [log[i]["frames_sent"] for i in ids]
    return {"aborts": n, "outcomes": sorted({log[i]["stream"] for i in ids}), "frames_sent_max": max(sent), "frames_per_stream": 500,
            "next_wait_ms": {"median": statistics.median(waits), "max": max(waits)}, "batch_ms": round(batch_ms, 1),
            "within_one_batch": sum(w <= batch_ms for w in waits), "of": len(waits), "worker_before": before,
            "worker_after": after}  # fmt: skip


def batch_time_ms(server: Gunicorn) -> float:
    """One batch's time on this server: a whole 6 s reply's generation time (infer, paste, encode) ÷ its batches."""
    _, request_id = whole(server.port, body(tts_like(6.0), stream=False))
    r = records(server, [request_id])[request_id]
    work = sum(r["timings_ms"][k] for k in ("infer", "paste", "encode"))
    return work / math.ceil(r["frames"] / Settings().batch_size)


def browser(url: str, audio: Path, runs: int) -> dict[str, object]:
    """The page plays the stream with MSE in headless Chromium (bench/stream_browser.py)."""
    from bench.stream_browser import first_frame_in_browser

    return first_frame_in_browser(url, IMAGE, audio, runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--aborts", type=int, default=50)
    p.add_argument("--no-browser", action="store_true", help="skip the Chromium part")
    p.add_argument("--models", type=Path, default=ROOT / "ir_models")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    res: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="wav2lip-stream-") as tmp:
        env = {"CORS_ORIGINS": PAGE_ORIGIN, "AVATAR_DIR": str(Path(tmp) / "avatars")}  # the page registers the avatar
        srv = Gunicorn(args.models, Path(tmp) / "gunicorn.log", env=env).start()
        try:
            measure(srv, args, Path(tmp), res)
        finally:
            srv.stop()
    write_results(res, args.out)
    print(f"wrote {args.out}")
    return 0


def measure(srv: Gunicorn, args: argparse.Namespace, tmp: Path, res: dict[str, Any]) -> None:
    """Every stage against one warm server, into `res`."""
    worker = next(iter(srv.workers()))
    for _ in range(2):
        timed_stream(srv.port, body(tts_like(6.0)))  # warm: first-use allocations, the face cache
    res["ttfb"], res["browser"], res["identical"] = {}, {}, {}
    for seconds in LENGTHS_S:
        key, audio = f"{seconds:g}s", tts_like(seconds)
        runs = [timed_stream(srv.port, body(audio)) for _ in range(args.runs)]
        server_side = records(srv, [r["request_id"] for r in runs])
        res["ttfb"][key] = {k: {"median": statistics.median(r[k] for r in runs), "max": max(r[k] for r in runs)}
                            for k in ("first_byte_s", "first_fragment_s", "total_s")} | {
            "server_ttfb_ms": [server_side[r["request_id"]]["ttfb_ms"] for r in runs], "frames": runs[0]["frames"]}  # fmt: skip
        res["identical"][key] = same_as_whole(srv.port, body(audio, stream=False), runs[0]["mp4"])
        path = tmp / f"speech-{key}.wav"
        path.write_bytes(audio)
        res["browser"][key] = None if args.no_browser else browser(srv.url, path, args.runs)
        print(json.dumps({key: {"ttfb": res["ttfb"][key], "identical": res["identical"][key], "browser": res["browser"][key]}}))
    res["barge_in"] = barge_in(srv, worker, args.aborts, batch_time_ms(srv))
    print(json.dumps({"barge_in": res["barge_in"]}))


if __name__ == "__main__":
    raise SystemExit(main())
