"""This worker's models: compiled after fork in a background thread; the state the probes report.

OpenVINO is not fork-safe, so nothing here runs in the gunicorn master: `post_worker_init` (and, as
a fallback, the first request) calls `start_loading()`.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from lipsync_stores.backend import open_avatars
from lipsync_stores.jobs import JobStore
from wav2lip_core.api import TalkingHead
from wav2lip_core.config import Settings
from wav2lip_core.errors import ModelsMissing, NotReady

from .memory import Budget
from .registry import Registry
from .runner import Runner

log = logging.getLogger("wav2lip.app")


class Models:
    """This worker's TalkingHead and avatar registry, loaded once in a background thread."""

    def __init__(self, settings: Settings, jobs: JobStore | None = None):
        self.settings = settings
        self.jobs = jobs  # with a job store, this worker runs jobs (JOB_WORKERS threads) once ready
        self.runner: Runner | None = None
        self.head: TalkingHead | None = None
        self.registry: Registry | None = None
        self.error: str | None = None
        self._started = False
        self._lock = threading.Lock()

    def start_loading(self) -> None:
        """Compile in a thread (call after fork, never in the gunicorn master); idempotent."""
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._load, name="load-models", daemon=True).start()

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            head = TalkingHead.load(settings=self.settings)
            head.cost  # measured before ready: streams are admitted by it  # noqa: B018
            self.registry = Registry(head, open_avatars(self.settings), Budget(self.settings.worker_memory_bytes()))
            self.head = head  # last: a set `head` means ready
        except ModelsMissing as e:
            self.error = e.message
            log.error("%s", e.message)
            return
        except (RuntimeError, OSError, KeyError, ValueError) as e:  # OpenVINO and manifest failures
            self.error = f"could not load the models from {self.settings.models_dir}: {e}"
            log.exception("model loading failed")
            return
        log.info("models ready in %.1f s", time.perf_counter() - t0, extra={"fields": self.describe()})
        if self.jobs is not None and self.settings.job_workers:
            self.runner = Runner(self.jobs, self.registry, self.settings)
            self.runner.start()

    def close(self) -> None:
        """The worker is exiting: stop its job threads (gunicorn's worker_exit)."""
        if self.runner is not None:
            self.runner.close()

    def ready(self, retry_after: int) -> Registry:
        """The registry (and through it the compiled TalkingHead), or the 503 that says why not."""
        if self.head is not None and self.registry is not None:
            return self.registry
        if self.error:
            raise ModelsMissing(self.error)
        raise NotReady("models are still loading; retry shortly", retry_after=retry_after)

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = {"pid": os.getpid(), "models_dir": str(self.settings.models_dir)}
        if self.head is not None and self.registry is not None:
            info |= self.head.info() | {"memory": self.registry.budget.describe()}
            if warnings := self.head.warnings():
                info["warning"] = "; ".join(warnings)
        return info
