"""A reply streamed as it is made (`"stream": true`): a fragmented MP4, a chunk per generator batch.

Everything that can fail early (the body, decoding, face detection, the gate, the first batch) runs
before the headers, so those failures are the usual JSON errors. The headers carry what a client
needs to know the stream is whole (`X-Frames`, `X-Duration`) and the codecs for Media Source
Extensions. While frames are made the client's socket is looked at every few ms: a client gone (tab
closed, barge-in, `AbortController.abort()`) cancels the batch in flight and frees the seat. A failure after the first byte is
logged with the request id and cuts the connection: the chunked body then lacks its last, empty
chunk, which every HTTP client reports as an error.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from wav2lip_core.errors import ClientGone
from wav2lip_core.pipeline import Render

from . import metrics

log = logging.getLogger("wav2lip.app")


@dataclass
class StreamStats:
    """What the access log and the metrics report of one stream, filled in as it goes."""

    first_byte_s: float | None = None  # request start → first body byte handed to the server
    frames_sent: int = 0
    bytes_sent: int = 0
    outcome: str = "started"  # → completed | aborted | failed
    error: str | None = None

    def fields(self) -> dict[str, Any]:
        ttfb = None if self.first_byte_s is None else round(self.first_byte_s * 1000, 1)
        return {"stream": self.outcome, "ttfb_ms": ttfb, "frames_sent": self.frames_sent, "bytes_sent": self.bytes_sent} | (
            {"stream_error": self.error} if self.error else {}
        )


@dataclass
class StreamBody:
    """The WSGI body of a streamed reply. It owns the render and the seat (`hold`) until `close()`,
    which the server calls when the body is done or the client has gone."""

    render: Render
    hold: ExitStack  # the stream's seat (gate.Capacity) and the in-flight gauge
    started: float  # time.perf_counter() at the request's start
    request_id: str
    stats: StreamStats = field(default_factory=StreamStats)

    def __post_init__(self) -> None:
        self._batches = self.render.batches()
        next(self._batches)  # the first batch, before any header: its errors are still JSON
        self.first = self.render.writer.take()  # ftyp + empty moov + the first frames' fragments
        self.render.pace.start_playback()  # from now the player's clock runs: later frames are due at playback time
        self._closed = False

    @property
    def content_type(self) -> str:
        return f'video/mp4; codecs="{self.render.writer.codecs()}"'

    def headers(self) -> dict[str, str]:
        r = self.render
        return {"X-Frames": str(r.frames), "X-Duration": f"{r.sound.duration_s:.3f}", "X-Fps": f"{r.fps:g}",
                "X-Face-Box": ",".join(map(str, r.face_box)), "X-End-Frame": str(r.end_frame),
                "Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # fmt: skip

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield self._sent(self.first)
            for _ in self._batches:  # the render checks client_gone() every few ms: ClientGone when it left
                yield self._sent(self.render.writer.take())
            yield self._sent(self.render.finish())
            self.stats.outcome = "completed"
        except GeneratorExit:  # the server stopped: the client left while it was written to
            self.stats.outcome = "aborted"
            raise
        except ClientGone:  # the render saw the client leave: stop, nobody reads an answer
            self.stats.outcome = "aborted"
        except Exception as e:
            self.stats.outcome, self.stats.error = "failed", f"{type(e).__name__}: {e}"
            log.exception("stream %s failed after %d frames: the connection is cut", self.request_id, self.stats.frames_sent)
            raise
        finally:
            self.close()  # the seat is free as soon as the body ends, before the server's own close()

    def _sent(self, data: bytes) -> bytes:
        if self.stats.first_byte_s is None:
            self.stats.first_byte_s = time.perf_counter() - self.started
            metrics.FIRST_BYTE.observe(self.stats.first_byte_s)
        self.stats.frames_sent = self.render.writer.frames
        self.stats.bytes_sent += len(data)
        return data

    def close(self) -> None:
        """Stop the work (in-flight batches cancelled), release the encoder and the seat, count the outcome.
        Called when the body ends, and again by the server (WSGI `close()`): the second call does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._batches.close()
            self.render.close()
        finally:
            self.hold.close()
            if self.stats.outcome == "started":  # closed before the first chunk was asked for
                self.stats.outcome = "aborted"
            metrics.record_stream(self.stats.outcome, self.stats.frames_sent)


def client_gone(client: socket.socket | None) -> bool:
    """True when the client has closed its end (a read would give EOF) or reset the connection."""
    if client is None:
        return False
    try:
        return client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:  # nothing to read: still connected
        return False
    except OSError:  # reset, or a socket already closed: nobody is reading
        return True
