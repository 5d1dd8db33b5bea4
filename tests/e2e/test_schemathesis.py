"""Schemathesis (its CLI) against the real gunicorn, from the document the server serves (GET
/openapi.json): every operation, every phase (examples, coverage, fuzzing, stateful through the
document's links), bounded examples and time, asserting no 5xx and every answer as documented
(status, content type, schema). tests/schemathesis_hooks.py puts real media into half of the fuzzed
cases with media fields, so fuzzed options go through real renders too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import ROOT
from harness.gunicorn import Gunicorn

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
MAX_EXAMPLES = 25  # fuzzed cases per operation; the coverage and stateful phases add theirs
SEED = 20  # the same cases on every run, so a failure reproduces; another seed explores further
RUN_TIMEOUT_S = 600  # the whole run takes ~1 min on an idle 2-core machine; a hang must not hold CI
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")  # the CLI installed with requirements-dev.txt


@pytest.fixture(scope="module")
def fuzzed_server(ir_blazeface: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """The real server, its stores in a temporary folder; no job threads (queued jobs wait: no background renders),
    so no bound on waiting jobs (503 queue_full is a state, not a reply to a request); never recycled (MAX_REQUESTS:
    a new worker answers 503 not_ready while it compiles)."""
    tmp = tmp_path_factory.mktemp("schemathesis")
    env = {"AVATAR_DIR": str(tmp / "avatars"), "JOB_DIR": str(tmp / "jobs"), "JOB_WORKERS": "0", "JOB_QUEUE_MAX": "1000000"}
    env |= {"MAX_REQUESTS": "0"}
    with Gunicorn(ir_blazeface, tmp / "gunicorn.log", env=env, ready_timeout_s=120) as server:
        yield server


def run_schemathesis(url: str, report: Path) -> subprocess.CompletedProcess[str]:
    """`schemathesis run` on the served document with our hooks; its JSON report written to `report`."""
    cmd = [str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
           "--workers", "1", "--request-timeout", "60", "--report", "json", "--report-json-path", str(report)]  # fmt: skip
    env = os.environ | {"SCHEMATHESIS_HOOKS": "schemathesis_hooks", "PYTHONPATH": os.pathsep.join(map(str, (ROOT, ROOT / "tests")))}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, cwd=report.parent)


def renders(server: Gunicorn) -> Counter[str]:
    """Successful POSTs per path, from the server's access log."""
    records = [r for r in server.log_records() if r.get("logger") == "wav2lip.access" and r.get("method") == "POST"]
    return Counter(r["path"] for r in records if 200 <= r["status"] < 300)


def test_every_operation_answers_as_documented(fuzzed_server: Gunicorn, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = run_schemathesis(fuzzed_server.url, report)
    assert proc.returncode == 0, f"schemathesis found failures:\n{proc.stdout[-20000:]}\n{proc.stderr[-3000:]}"
    summary = json.loads(report.read_text())
    operations, cases = summary["operations"], summary["test_cases"]
    with urllib.request.urlopen(f"{fuzzed_server.url}/openapi.json") as resp:
        paths = json.load(resp)["paths"]
    documented = sum(len(methods) for path, methods in paths.items() if path != "/openapi.json")  # Schemathesis skips its source
    assert operations["tested"] == operations["total"] == documented and not operations["errored"], (operations, documented)
    done = renders(fuzzed_server)
    assert sum(done[p] for p in ("/api/generate", "/sync", "/v1/animation", "/v1/animation-with-cache")) > 0, done  # the hooks' media
    print(f"\nschemathesis: {operations['tested']} operations, {cases['generated']} cases in {summary['running_time']:.0f} s; "
          f"successful POSTs {dict(done)}")  # fmt: skip
