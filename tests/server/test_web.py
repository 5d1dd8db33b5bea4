"""The web layer on its own: the admission gate, Retry-After carried by errors, JSON for Werkzeug's
errors, and structured log lines."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from pathlib import Path

import pytest
from helpers import assert_error, good_body, loaded_app, make_settings

from lipsync_server.gate import Gate
from lipsync_server.logs import JsonFormatter
from wav2lip_core.errors import Busy

ACCESS_KEYS = {"ts", "level", "logger", "request_id", "method", "path", "status", "bytes_in", "bytes_out", "ms", "pid"}


# ---------------------------------------------------------------- Gate


def hold(gate: Gate, entered: threading.Event, release: threading.Event) -> threading.Thread:
    """A thread that takes a slot of `gate` (sets `entered`) and keeps it until `release` is set."""

    def run() -> None:
        with gate.admit():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_gate_runs_one_queues_one_refuses_the_third_at_once() -> None:
    gate = Gate(running=1, queued=1, wait_s=10)
    release, first_in, second_in = threading.Event(), threading.Event(), threading.Event()
    first = hold(gate, first_in, release)
    assert first_in.wait(5)
    second = hold(gate, second_in, release)
    deadline = time.monotonic() + 5
    while gate._admitted < 2 and time.monotonic() < deadline:  # until the second is admitted and waits
        time.sleep(0.01)
    t0 = time.monotonic()
    with pytest.raises(Busy, match="2 requests in progress or queued") as refused, gate.admit():
        pass
    assert time.monotonic() - t0 < 0.5, "refused at once, not after waiting"
    assert refused.value.retry_after == gate.retry_after() >= 1 and not second_in.is_set()
    release.set()
    assert second_in.wait(5)
    first.join(5)
    second.join(5)


def test_gate_wait_timeout_is_busy_with_retry_after() -> None:
    gate = Gate(running=1, queued=5, wait_s=0.05)
    release, entered = threading.Event(), threading.Event()
    holder = hold(gate, entered, release)
    assert entered.wait(5)
    with pytest.raises(Busy, match=r"waited 0\.05 s") as refused, gate.admit():
        pass
    assert refused.value.retry_after is not None and refused.value.retry_after >= 1
    release.set()
    holder.join(5)


def test_gate_slot_released_on_exception() -> None:
    gate = Gate(running=1, queued=0, wait_s=0.01)
    for _ in range(3):
        with pytest.raises(ZeroDivisionError), gate.admit():
            _ = 1 / 0
    with gate.admit():  # neither the slot nor the admission count leaked
        pass


# ---------------------------------------------------------------- HTTP errors


@pytest.fixture
def unloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A test client whose models never finish loading (the loader thread does nothing)."""
    from lipsync_server.app import create_app

    app = create_app(make_settings(tmp_path / "no_models"))
    monkeypatch.setattr(app.extensions["models"], "_load", lambda: None)
    return app.test_client()


@pytest.fixture(scope="module")
def one_slot(ir_blazeface: Path):
    """A loaded app with one compute slot and no queue."""
    return loaded_app(make_settings(ir_blazeface, batch_size=4, max_concurrent=1, max_queue=0))


def test_busy_is_503_with_the_gates_retry_after(one_slot) -> None:
    gate = one_slot.extensions["gate"]
    with gate.admit():
        resp = one_slot.test_client().post("/api/generate", json=good_body())
    assert_error(resp, {503}, "busy")
    assert resp.headers["Retry-After"] == str(gate.retry_after())


def test_not_ready_has_retry_after(unloaded) -> None:
    resp = unloaded.post("/api/generate", json=good_body())
    assert_error(resp, {503}, "not_ready")
    assert int(resp.headers["Retry-After"]) >= 1


def test_models_missing_has_no_retry_after(tmp_path: Path) -> None:
    from lipsync_server.app import create_app

    app = create_app(make_settings(tmp_path / "no_models"))
    app.extensions["models"]._load()  # synchronously, as the loader thread does: no IR there
    resp = app.test_client().post("/api/generate", json=good_body())
    assert_error(resp, {503}, "models_missing")
    assert "Retry-After" not in resp.headers


def test_wrong_method_is_json_405_with_allow(unloaded) -> None:
    resp = unloaded.get("/api/generate")
    err = assert_error(resp, {405}, "method_not_allowed")
    assert err["message"].endswith("use POST"), err
    assert "POST" in {m.strip() for m in resp.headers["Allow"].split(",")}


def test_other_content_types_are_415_naming_what_to_send(unloaded) -> None:
    err = assert_error(unloaded.post("/api/generate", data="a", content_type="text/plain"), {415}, "unsupported_content_type")
    assert "application/json or multipart/form-data" in err["message"]


def test_unknown_route_is_json_404(unloaded) -> None:
    assert_error(unloaded.get("/nothing-here"), {404}, "not_found")


# ---------------------------------------------------------------- structured logs


def test_json_formatter_lifts_fields_to_top_level_keys() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("wav2lip.test_web")
    logger.addHandler(handler)
    try:
        logger.warning("request", extra={"fields": {"status": 200, "timings_ms": {"infer": 1.5}, "path": '/a"b'}})
    finally:
        logger.removeHandler(handler)
    line = json.loads(out.getvalue())
    assert line["status"] == 200 and line["timings_ms"] == {"infer": 1.5} and line["path"] == '/a"b'
    assert line["level"] == "warning" and line["logger"] == "wav2lip.test_web" and line["message"] == "request"


def test_access_log_of_generate_has_its_fields(one_slot, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="wav2lip.access"):
        resp = one_slot.test_client().post("/api/generate", json=good_body(), headers={"X-Request-ID": "web-log-1"})
    assert resp.status_code == 200, resp.get_json()
    (record,) = [r for r in caplog.records if r.name == "wav2lip.access"]
    line = json.loads(JsonFormatter().format(record))
    assert ACCESS_KEYS | {"frames", "face_source", "timings_ms"} <= set(line), line
    assert line["request_id"] == "web-log-1" and line["status"] == 200 and line["frames"] == 1 and "base64" not in line["timings_ms"]
