"""The per-worker memory budget (WORKER_MEMORY_MB): work that does not fit is refused before it allocates, with
a typed error that says what to change; /health and /metrics show the budget and the use. Through the real server."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import pytest
from helpers import astronaut, b64, image_bytes, speech_s, wav
from PIL import Image

from harness.gunicorn import Gunicorn
from harness.jobs import http
from lipsync_server import memory
from lipsync_server.memory import MB, Budget, Work
from wav2lip_core.errors import DeadlineExceeded, LimitExceeded, MemoryBusy

STREAM_S = 30.0  # the stream that holds its reservation while the next request comes
LONG_S = 120.0  # a whole answer this long never fits the small budget


@pytest.fixture(scope="module")
def image_720p() -> bytes:
    canvas = Image.new("RGB", (1280, 720), (128, 128, 128))
    canvas.paste(astronaut(), (384, 104))
    return image_bytes(canvas, "JPEG")


def stream_work(seconds: float) -> Work:
    """What the server estimates for a stream of the 720p image with `seconds` of 16 kHz mono speech."""
    return Work(1280, 720, math.ceil(seconds * 25), round(seconds * 16000))


def health(url: str) -> dict:
    status, _, data = http("GET", f"{url}/health")
    assert status == 200, data[:300]
    return json.loads(data)


@pytest.fixture(scope="module")
def server(ir_blazeface: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """A worker whose budget holds one 720p stream but not two: its idle size is learnt from a first start, and the
    budget set to it plus 1.5 streams (so ±0.5 stream of drift in the idle size between the two starts is tolerated)."""
    tmp = tmp_path_factory.mktemp("memory")
    with Gunicorn(ir_blazeface, tmp / "probe.log", ready_timeout_s=120) as probe:
        idle_mb = health(probe.url)["memory"]["idle_private_mb"]
    budget_mb = round(idle_mb + 1.5 * stream_work(STREAM_S).bytes() / MB)
    env = {"WORKER_MEMORY_MB": str(budget_mb), "STREAM_CAPACITY": "10"}  # memory decides here, not the CPU
    with Gunicorn(ir_blazeface, tmp / "gunicorn.log", env=env, ready_timeout_s=120) as s:
        yield s


def wait_idle(url: str, timeout_s: float = 10.0) -> None:
    """Until the worker runs nothing (a stream whose client left stops within a batch)."""
    deadline = time.monotonic() + timeout_s
    while health(url)["memory"]["running"]:
        assert time.monotonic() < deadline, "the stream never stopped"
        time.sleep(0.05)


def body(image: bytes, seconds: float, **fields: object) -> dict:
    return {"image": b64(image), "audio": b64(wav(speech_s(seconds)))} | fields


def test_work_over_the_budget_is_refused_before_it_allocates(server: Gunicorn, image_720p: bytes) -> None:
    (pid,) = server.workers()
    budget_mb = int(server.env["WORKER_MEMORY_MB"])
    conn = HTTPConnection(server.url.removeprefix("http://"), timeout=60)
    conn.request("POST", "/api/generate", json.dumps(body(image_720p, STREAM_S, stream=True)), {"Content-Type": "application/json"})
    holding = conn.getresponse()  # streaming: its reservation is held until it ends (it waits for us to read)
    try:
        assert holding.status == 200
        reserved = health(server.url)["memory"]
        assert reserved["budget_mb"] == budget_mb and reserved["running"] == 1
        assert reserved["reserved_mb"] == pytest.approx(stream_work(STREAM_S).bytes() / MB, abs=0.1)
        status, headers, data = http("POST", f"{server.url}/api/generate", body(image_720p, STREAM_S, stream=True))
        busy = json.loads(data)["error"]
        assert status == 503 and busy["code"] == "memory_budget" and int(headers["Retry-After"]) >= 1, data[:300]
        assert "WORKER_MEMORY_MB" in busy["message"] and "retry" in busy["message"]
    finally:
        conn.close()  # the client leaves: the stream stops and gives its memory back
    wait_idle(server.url)
    before = memory.private_bytes(pid)
    status, _, data = http("POST", f"{server.url}/api/generate", body(image_720p, LONG_S), timeout=120)
    never = json.loads(data)["error"]
    assert status == 422 and never["code"] == "exceeds_memory_budget", data[:300]
    assert "shorter" in never["message"] and "MAX_OUTPUT_SIDE" in never["message"] and "WORKER_MEMORY_MB" in never["message"]
    assert memory.private_bytes(pid) - before < 32 * MB  # refused on header facts: nothing was decoded or rendered
    status, _, data = http("POST", f"{server.url}/api/generate", body(image_720p, 2.0), timeout=120)
    assert status == 200, data[:300]  # what fits still runs
    text = http("GET", f"{server.url}/metrics")[2].decode()
    for code in ("memory_budget", "exceeds_memory_budget"):
        assert re.search(rf'^lipsync_memory_refused_total{{code="{code}"}} 1\.0$', text, re.M), code


def test_health_and_metrics_show_the_budget_and_the_use(server: Gunicorn) -> None:
    (pid,) = server.workers()
    mem = health(server.url)["memory"]
    assert mem["budget_mb"] == int(server.env["WORKER_MEMORY_MB"]) and 100 < mem["private_mb"] < mem["budget_mb"]
    text = http("GET", f"{server.url}/metrics")[2].decode()
    gauge = lambda name: float(re.search(rf'^{name}{{pid="{pid}"}} (\S+)$', text, re.M).group(1))
    assert gauge("lipsync_memory_budget_bytes") == mem["budget_mb"] * MB
    assert 100 * MB < gauge("lipsync_memory_private_bytes") < mem["budget_mb"] * MB
    assert gauge("lipsync_memory_reserved_bytes") == 0


def test_the_budget_refuses_what_never_fits_and_what_does_not_fit_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """The arithmetic, with the private memory held still: idle 100 MB, a budget of idle + 1.5 pieces of work."""
    monkeypatch.setattr(memory, "private_bytes", lambda pid="self": 100 * MB)
    work = Work(640, 480, 100, 16000)
    budget = Budget(100 * MB + int(1.5 * work.bytes()))
    with budget.reserve(work, "one"):
        with pytest.raises(MemoryBusy) as busy:
            budget.reserve(work, "two")
        assert busy.value.status == 503 and busy.value.retry_after >= 1 and "two needs" in busy.value.message
    budget.reserve(work, "two again").release()  # the first gave its memory back
    first = budget.reserve(work, "one")
    threading.Timer(0.2, first.release).start()
    budget.reserve(work, "a job", wait=lambda: None).release()  # a job waits until the memory is free
    with budget.reserve(work, "one"), pytest.raises(DeadlineExceeded):
        budget.reserve(work, "a job", wait=_raise(DeadlineExceeded("the job's deadline passed")))  # … or it stops
    with pytest.raises(LimitExceeded) as never:
        budget.reserve(Work(640, 480, 100, 16000, decoders=8), "too big")
    assert never.value.code == "exceeds_memory_budget" and never.value.status == 422 and budget.reserved == 0


def _raise(error: Exception):
    def wait() -> None:
        raise error

    return wait
