"""Typed errors: each carries the HTTP status and a stable machine-readable code.

The server maps any `LipSyncError` to `{"error": {"code", "message"}}` (plus a `Retry-After` header
when the error carries `retry_after`); the CLI prints the message. Codes are part of the API contract:
never rename one.
"""

from __future__ import annotations


class LipSyncError(Exception):
    """Base class: `status` is the HTTP status, `code` the stable error code, `retry_after` the seconds
    after which retrying may succeed (None: no `Retry-After`, retrying as is cannot help)."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class BadRequest(LipSyncError):
    status, code = 400, "bad_request"


class Unauthorized(LipSyncError):
    status, code = 401, "unauthorized"


class PayloadTooLarge(LipSyncError):
    status, code = 413, "payload_too_large"


class UnsupportedMedia(LipSyncError):
    status, code = 415, "unsupported_media"


class AvatarNotFound(LipSyncError):
    status, code = 404, "avatar_not_found"


class NoFace(LipSyncError):
    status, code = 422, "no_face"


class LimitExceeded(LipSyncError):
    """Media that decodes but is over a configured limit (duration, pixels)."""

    status, code = 422, "limit_exceeded"


class Busy(LipSyncError):
    """Over capacity; the gate that raises it sets `retry_after` to its estimate."""

    status, code = 503, "busy"


class NotReady(LipSyncError):
    """Models still loading; raised with a `retry_after`."""

    status, code = 503, "not_ready"


class MemoryBusy(LipSyncError):
    """Running work holds this worker's memory budget (WORKER_MEMORY_MB); raised with a `retry_after`. A request
    that could never fit is a `LimitExceeded` with code `exceeds_memory_budget` instead."""

    status, code = 503, "memory_budget"


class DeadlineExceeded(LipSyncError):
    status, code = 504, "deadline_exceeded"


class ClientGone(LipSyncError):
    """The client closed the connection of a streamed reply (barge-in): the work stops; nobody reads an answer."""

    status, code = 499, "client_gone"


class ModelsMissing(LipSyncError):
    """The IR is absent or incomplete; the message names the command that creates it (no `retry_after`)."""

    status, code = 503, "models_missing"


class CheckpointError(LipSyncError):
    """A PyTorch checkpoint given to the converter is missing, unreadable or of the wrong shape."""

    code = "bad_checkpoint"


class WeightsError(LipSyncError):
    """`make weights` put nothing in checkpoints/: the licence not accepted (`licence_not_accepted`), a malformed
    sources list (`bad_sources`), a name that is no checkpoint (`unknown_checkpoint`), or no source of a checkpoint
    gave a verified file (`weights_unavailable`, or `weights_unreachable` when none could even be downloaded; each
    source's reason: `download_failed`, `wrong_size`, `wrong_digest`)."""

    code = "weights_unavailable"


class DiskFull(LipSyncError):
    """No disk space left for frame files (frames.py): AVATAR_STORE_MB is above what the disk has free."""

    status, code = 507, "disk_full"


class Int8FloorNotMet(CheckpointError):
    """`--int8` found no mix of float blocks that meets the quality floor while beating bf16 enough: no INT8 files."""

    code = "int8_floor_not_met"


class StoreUnavailable(LipSyncError):
    """The shared store (Redis) cannot be reached; raised with a `retry_after`: the server recovers when it is back."""

    status, code = 503, "store_unavailable"


class JobNotFound(LipSyncError):
    """No such job, or it expired (`JOB_TTL_S`), or it was deleted."""

    status, code = 404, "job_not_found"


class JobNotDone(LipSyncError):
    """The job's video was asked for before the job is `done`."""

    status, code = 409, "job_not_done"


class UrlRefused(LipSyncError):
    """A URL to fetch from or post to whose host is not in the allow-list (SSRF), or that could not be fetched."""

    status, code = 400, "url_not_allowed"
