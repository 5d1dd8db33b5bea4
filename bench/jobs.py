"""Where jobs should run on a 2-core box: in the serving workers (yielding to requests) or in a process of their own.

    python -m bench.jobs [--runs 5] [--job-s 60]     (make bench-jobs)

The interactive request is the standard one (512² image, 6.4 s speech, box given). It is timed:
  alone       on a warm server with no job;
  in-process  while a long job (`--job-s` of speech) runs in the same worker's job thread, which
              gives the slot up between batches (the design: JOB_WORKERS=1 in every server);
  separate    while the same job runs in a second gunicorn that only runs jobs (JOB_WORKERS=1,
              the serving one JOB_WORKERS=0, both on one JOB_DIR, each with OpenVINO threads = cores),
              the usual shape of "a worker process beside the web server".
For each: the request's median and max seconds, the job's frames per second, and the RSS of the
processes that hold models. Writes bench/results/jobs.json.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.run import BOX, IMAGE, ROOT, machine, speech, write_results
from harness.gunicorn import Gunicorn
from harness.jobs import http, submit_job, wait_job

RESULTS = ROOT / "bench" / "results" / "jobs.json"
FPS = 25


def body(seconds: float) -> dict:
    return {"image": base64.b64encode(IMAGE.read_bytes()).decode(), "audio": base64.b64encode(speech(seconds)).decode(), "box": list(BOX)}


def timed_requests(url: str, runs: int) -> list[float]:
    payload, times = body(6.4), []
    for _ in range(runs):
        t0 = time.perf_counter()
        status, _, data = http("POST", f"{url}/api/generate", payload, timeout=300)
        assert status == 200, data[:300]
        times.append(time.perf_counter() - t0)
    return times


def with_job(api: Gunicorn, runs: int, job_s: float) -> dict:
    """Requests to `api` while a job of `job_s` seconds runs (on whichever server runs jobs); then the job's own speed."""
    job = submit_job(api.url, body(job_s))
    while json.loads(http("GET", job["status_url"])[2])["status"] != "running":
        time.sleep(0.05)
    times = timed_requests(api.url, runs)
    during = json.loads(http("GET", job["status_url"])[2])
    done = wait_job(api.url, job["id"], timeout=1800)
    assert done["status"] == "done", done
    return {"request_s": summary(times), "job_still_running_after_requests": during["status"] == "running",
            "job_s": round(_seconds(done), 2), "job_fps": round(job_s * FPS / _seconds(done), 1)}  # fmt: skip


def _seconds(job: dict) -> float:
    return (dt.datetime.fromisoformat(job["completed_at"]) - dt.datetime.fromisoformat(job["started_at"])).total_seconds()


def summary(times: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(times), 3), "max": round(max(times), 3), "runs": len(times)}


def rss(*servers: Gunicorn) -> float:
    return round(sum(m["rss_mb"] for s in servers for m in s.worker_memory_mb().values()), 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--job-s", type=float, default=60.0, help="seconds of speech in the background job")
    ap.add_argument("--models", type=Path, default=ROOT / "ir_models")
    opts = ap.parse_args(argv)
    res: dict = {"machine": machine(), "runs": opts.runs, "job_s": opts.job_s}
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        jobs = {"JOB_DIR": str(Path(tmp) / "jobs")}
        with Gunicorn(opts.models, Path(tmp) / "one.log", env=jobs) as one:
            timed_requests(one.url, 1)  # warm
            res["alone"] = {"request_s": summary(timed_requests(one.url, opts.runs))}
            res["in_process"] = with_job(one, opts.runs, opts.job_s) | {"rss_mb": rss(one)}
        shared = {"JOB_DIR": str(Path(tmp) / "jobs2")}
        with (
            Gunicorn(opts.models, Path(tmp) / "api.log", env=shared | {"JOB_WORKERS": "0"}) as api,
            Gunicorn(opts.models, Path(tmp) / "worker.log", env=shared | {"JOB_WORKERS": "1"}) as worker,
        ):
            timed_requests(api.url, 1)
            res["separate"] = with_job(api, opts.runs, opts.job_s) | {"rss_mb": rss(api, worker)}
    write_results(res, RESULTS)
    print(json.dumps({k: v for k, v in res.items() if k != "machine"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
