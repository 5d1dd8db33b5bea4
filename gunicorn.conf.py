"""gunicorn settings, all from `Settings.from_env()` (README: Configuration); defaults are right for a 2-core box.

OpenVINO is not fork-safe: the master never imports the models (preload_app is off) and each
worker compiles them after fork, in `post_worker_init`.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

# Before numpy loads: OpenBLAS (numpy's matmul in the mel) and OpenMP (libsoxr's resampling) keep their
# worker threads spinning after each call, taking a core from OpenVINO's next inference (a stream's first
# batch: 75 → 42 ms measured). Their work here is small; one thread each. An explicit setting wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from wav2lip_core.config import Settings  # noqa: E402  (after the thread settings above)

try:
    _s = Settings.from_env()  # validates every variable before the first worker starts
except ValueError as e:
    sys.exit(f"configuration error: {e}")

bind = _s.bind_address()  # BIND, else 127.0.0.1:$PORT: loopback unless asked, as there is no API key by default
workers = _s.workers  # WEB_CONCURRENCY
worker_class = "gthread"
threads = _s.max_concurrent + _s.max_queue + _s.max_streams + 2  # whole answers + queued + streams + room for probes and quick 503s
preload_app = False  # never load OpenVINO in the master
timeout = _s.gunicorn_timeout  # heartbeat; gthread workers beat while requests run
graceful_timeout = _s.graceful_timeout_s()  # GRACEFUL_TIMEOUT, else the request deadline + 10 s
keepalive = 5
max_requests = _s.max_requests  # safety net against slow leaks
max_requests_jitter = _s.max_requests_jitter
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
limit_request_line = 8190
control_socket_disable = True  # gunicorn 27's default control socket is shared by every instance on the host
accesslog = None  # the app logs one JSON line per request itself
errorlog = "-"
loglevel = _s.log_level
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "lipsync_server.logs.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": loglevel.upper(), "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["console"], "propagate": False},
        "wav2lip": {"level": loglevel.upper(), "handlers": ["console"], "propagate": False},
    },
}

# Prometheus multiprocess mode: one directory shared by the workers, emptied when the master starts.
# An empty value counts as unset: Path("") is the current folder, which on_starting would empty.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(Path(tempfile.gettempdir()) / f"wav2lip-metrics-{os.getpid()}")
_metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_starting(server):
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    _metrics_dir.mkdir(parents=True)


def post_worker_init(worker):
    worker.wsgi.extensions["models"].start_loading()


def worker_exit(server, worker):
    worker.wsgi.extensions["models"].close()  # job threads stop and release their encoders; their jobs run again elsewhere


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    shutil.rmtree(_metrics_dir, ignore_errors=True)
