"""Async jobs over real HTTP, for the tests and the benches: one request, submit a job, wait for its end."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

JOB_POLL_S = 0.1


def http(method: str, url: str, body: dict | bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 60):
    """(status, headers, body bytes) of one request; a dict body is sent as JSON; HTTP errors are answers too."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    hdrs = ({"Content-Type": "application/json"} if isinstance(body, dict) else {}) | (headers or {})
    req = urllib.request.Request(url, data, hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def submit_job(base: str, body: dict) -> dict:
    status, _, data = http("POST", f"{base}/api/jobs", body)
    assert status == 202, (status, data[:300])
    return json.loads(data)


def wait_job(base: str, job_id: str, timeout: float = 120, until: tuple[str, ...] = ("done", "error", "cancelled")) -> dict:
    """Poll GET /api/jobs/<id> until its status is in `until`; the job JSON (every distinct progress seen in 'seen')."""
    seen: list[float] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, data = http("GET", f"{base}/api/jobs/{job_id}")
        if status == 200:
            job = json.loads(data)
            if not seen or seen[-1] != job["progress"]:
                seen.append(job["progress"])
            if job["status"] in until:
                return job | {"seen": seen}
        time.sleep(JOB_POLL_S)
    raise TimeoutError(f"job {job_id} not {until} after {timeout} s (last: {status} {data[:300]!r})")
