"""Job workers: threads inside each gunicorn worker that run queued jobs on the models it compiled.

Jobs run where the models already are (no second copy of them in memory, nothing else to start:
a replica is still one `gunicorn` command, and its job threads die with it). They share the cores
with interactive requests through the process's scheduler (wav2lip_core/scheduler.py): a job's batches come last
in its line, so a job computes while nothing else waits and never delays a request by more than the
batch in flight.

While a job runs, a heartbeat renews its lease and records its progress every HEARTBEAT_S; when the
store answers that the job is no longer this claim's (it was cancelled, or its lease ran out and
another worker took it), the work stops at the next check: about one batch after a DELETE.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from lipsync_stores.jobs import Claim, JobStore
from wav2lip_core.errors import ClientGone, LipSyncError, StoreUnavailable
from wav2lip_core.scheduler import Pace

from . import metrics, urls
from .payload import from_parts

if TYPE_CHECKING:
    from wav2lip_core.config import Settings

    from .registry import Registry

log = logging.getLogger("wav2lip.jobs")

HEARTBEAT_S = 0.05  # lease renewal, progress and the cancellation check: a DELETE stops the work within ~a batch
CLAIM_WAIT_S = 1.0  # an idle worker's wait for a job before it looks at `stop` again
OUTAGE_BACKOFF_S = (0.5, 1, 2, 5)  # the store unreachable: wait this long before trying again (the last repeats)


class Runner:
    """`threads` job workers for this process; `start()` after the models are compiled."""

    def __init__(self, jobs: JobStore, registry: Registry, settings: Settings):
        self.jobs, self.registry, self.settings = jobs, registry, settings
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.stop = threading.Event()  # set: claim nothing more, stop the running jobs at their next check
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for k in range(self.settings.job_workers):
            thread = threading.Thread(target=self._loop, name=f"job-worker-{k}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("%d job worker(s) started", self.settings.job_workers)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop (the worker is exiting): running jobs stop at their next check, their encoders released; their
        leases run out and another worker runs them again."""
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def _loop(self) -> None:
        outages = 0
        while not self.stop.is_set():
            try:
                outages = self._next(outages)
            except Exception:  # a bug: logged with its traceback; the worker lives on
                log.exception("job worker error")
                self.stop.wait(1.0)

    def _next(self, outages: int) -> int:
        """Claim and run one job (or wait CLAIM_WAIT_S for one); gives the count of store outages in a row."""
        owner = f"{self.name}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}"  # a fresh token per claim
        try:
            claim = self.jobs.claim(owner, CLAIM_WAIT_S)
        except StoreUnavailable as e:
            pause = OUTAGE_BACKOFF_S[min(outages, len(OUTAGE_BACKOFF_S) - 1)]
            log.warning("job store unavailable, retrying in %g s: %s", pause, e.message)
            self.stop.wait(pause)
            return outages + 1
        if claim is not None:
            try:
                self._run(claim)
            except StoreUnavailable as e:  # recording the outcome failed: the lease runs out and the job runs again
                log.warning("job %s: store unavailable at its end, left to be retried: %s", claim.job_id, e.message)
        return 0

    def _run(self, claim: Claim) -> None:
        """One job: render it (last in the scheduler's line), keep the result if the claim still holds, then the webhook."""
        beat = Heartbeat(self.jobs, claim)
        t0 = time.monotonic()
        try:
            req = from_parts(self.jobs.inputs(claim))
            log.info("job %s started", claim.job_id, extra={"fields": {"job_id": claim.job_id, "owner": claim.owner}})
            deadline = time.monotonic() + self.settings.job_timeout_s
            gone, pace = self._checker(beat), Pace("job")
            render = self.registry.start(req, deadline, gone=gone, progress=beat.progress, fragmented=False, pace=pace)
            result = render.complete()
            kept = self.jobs.finish(claim, result.mp4)
            outcome = "done" if kept else "discarded"
        except ClientGone:  # our heartbeat stopped it: cancelled, or taken over by another worker
            outcome = "stopped"
        except StoreUnavailable as e:  # the lease runs out; another worker (or this one) runs it again
            log.warning("job %s: store unavailable, left to be retried: %s", claim.job_id, e.message)
            outcome = "interrupted"
        except LipSyncError as e:  # the request's own problem (no face, bad audio, deadline): final
            outcome = "error" if self.jobs.fail(claim, {"code": e.code, "message": e.message}) else "discarded"
        except Exception as e:  # a bug: the job fails with the internal code, the worker goes on
            log.exception("job %s failed", claim.job_id)
            outcome = (
                "error"
                if self.jobs.fail(claim, {"code": "internal_error", "message": f"internal error: {type(e).__name__}"})
                else "discarded"
            )
        finally:
            beat.close()
        fields = {"job_id": claim.job_id, "owner": claim.owner, "outcome": outcome, "ms": round((time.monotonic() - t0) * 1000, 1)}
        log.info("job %s %s", claim.job_id, outcome, extra={"fields": fields})
        metrics.JOBS.labels(outcome=outcome).inc()
        if outcome in ("done", "error"):
            self.notify(claim.job_id)

    def _checker(self, beat: Heartbeat) -> Callable[[], bool]:
        """LipSync's `gone` hook for a job: True once the claim is lost or the worker stops."""

        def stopped() -> bool:
            return beat.lost.is_set() or self.stop.is_set()

        return stopped

    def notify(self, job_id: str) -> None:
        """The job's webhook, if it has one: its final state POSTed once, retried with backoff, off this thread."""
        job = self.jobs.get(job_id)
        if job.webhook_url:
            payload = job.describe()
            threading.Thread(target=urls.post_json, args=(job.webhook_url, payload), name="webhook", daemon=True).start()


class Heartbeat:
    """Renews a claim's lease with the latest progress every HEARTBEAT_S; sets `lost` when the claim is gone."""

    def __init__(self, jobs: JobStore, claim: Claim):
        self.jobs, self.claim = jobs, claim
        self.lost = threading.Event()
        self._done = threading.Event()
        self._progress = 0.0
        self._thread = threading.Thread(target=self._beat, name=f"lease-{claim.job_id[:8]}", daemon=True)
        self._thread.start()

    def progress(self, done: int, total: int) -> None:
        self._progress = done / max(total, 1)

    def _beat(self) -> None:
        while not self._done.wait(HEARTBEAT_S):
            try:
                if not self.jobs.renew(self.claim, self._progress):
                    self.lost.set()
                    return
            except StoreUnavailable as e:  # keep working: if the store is back before the lease ends, nothing was lost
                log.warning("job %s: lease not renewed: %s", self.claim.job_id, e.message)
                self._done.wait(1.0)

    def close(self) -> None:
        self._done.set()
        self._thread.join()
