"""The browser page (clients/browser/index.html) for the tests and the bench: served from the origin
the servers allow (their CORS_ORIGINS), opened in headless Chromium with a registered avatar, made to
speak; what it measured of a streamed reply (`lipsyncState.lastStream`).

    with serve_page() as origin, Chromium(exe, tmp) as browser:
        open_page(browser, origin, server.url, avatar)
        state = speak(browser, speech)
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import soundfile as sf

from harness import ROOT
from harness.cdp import Chromium

PAGE_PORT = 8123
PAGE_ORIGIN = f"http://localhost:{PAGE_PORT}"  # a server's CORS_ORIGINS must list it
PAGE_DIR = "/clients/browser/"
REGISTER_TIMEOUT_S = 60.0  # registration detects the face in every frame of the avatar
SPEAK_TIMEOUT_S = 60.0  # from choosing the audio to the idle loop again


class PageError(RuntimeError):
    """The page went wrong: its error and its events say how."""


class _Handler(SimpleHTTPRequestHandler):
    """clients/browser/ of the repository, nothing else."""

    def do_GET(self) -> None:
        if not self.path.startswith(PAGE_DIR):
            self.send_error(404)
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve_page() -> Iterator[str]:
    """PAGE_ORIGIN serving clients/browser/ in a thread; yields the origin. OSError when the port is taken."""
    httpd = ThreadingHTTPServer(("127.0.0.1", PAGE_PORT), functools.partial(_Handler, directory=str(ROOT)))
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield PAGE_ORIGIN
    finally:
        httpd.shutdown()
        httpd.server_close()


def page_url(origin: str, server_url: str) -> str:
    return f"{origin}{PAGE_DIR}index.html?server={quote(server_url)}"


def open_page(browser: Chromium, origin: str, server_url: str, avatar: Path) -> dict[str, Any]:
    """Open the page on `server_url`, register `avatar` (a video or an image) through its file input and
    wait until it idles; the avatar's record."""
    browser.navigate(page_url(origin, server_url))
    browser.wait_for("window.lipsyncState?.phase === 'starting' && document.readyState === 'complete'", timeout_s=20)
    browser.set_files("#avatar-file", avatar)
    phase = browser.wait_for("['idle', 'error'].includes(lipsyncState.phase) && lipsyncState.phase", timeout_s=REGISTER_TIMEOUT_S)
    if phase != "idle":
        raise PageError(f"registering {avatar.name} failed: {browser.evaluate('lipsyncState.events')}")
    return browser.evaluate("lipsyncState.avatar")


def start_speaking(browser: Chromium, audio: Path) -> int:
    """Choose `audio` in the page's audio input (it then asks for a reply); the number of events before it."""
    before = browser.evaluate("lipsyncState.events.length")
    browser.set_files("#audio-file", audio)
    return before


def wait_idle(browser: Chromium, before: int, timeout_s: float = SPEAK_TIMEOUT_S) -> dict[str, Any]:
    """Wait until the page is idle again after event `before`; its state, with `events` only those since."""
    back = f"lipsyncState.events.slice({before}).some(e => e.event === 'phase' && ['idle', 'error'].includes(e.phase))"
    browser.wait_for(back, timeout_s=timeout_s)
    state = browser.evaluate("lipsyncState")
    return state | {"events": state["events"][before:]}


def speak(browser: Chromium, audio: Path) -> dict[str, Any]:
    """Make the page say `audio`; its state once idle again (PageError if speaking failed). The wait is
    bounded by the speech's own length (it plays in real time) plus SPEAK_TIMEOUT_S."""
    state = wait_idle(browser, start_speaking(browser, audio), SPEAK_TIMEOUT_S + sf.info(str(audio)).duration)
    if state["phase"] != "idle" or any(e["event"] == "error" for e in state["events"]):
        raise PageError(f"speaking {audio.name} failed: {json.dumps(state['events'])}")
    return state


def playback_rate(samples: list[list[float]]) -> float:
    """Media seconds played per wall second over (performance.now() ms, currentTime s) samples, from the first
    that moved on (the audio output's start-up is a latency, not a rate): 1.0 is real time."""
    moving = [s for s in samples if s[1] > samples[0][1]] if samples else []
    if len(moving) < 2:
        raise ValueError(f"a rate needs two samples after currentTime moved, got {samples}")
    (t0, c0), (t1, c1) = moving[0], moving[-1]
    return (c1 - c0) / ((t1 - t0) / 1000)


def stream_timings(stream: dict[str, Any]) -> dict[str, Any]:
    """A streamed reply as the page saw it: ms from the request to its first byte and first frame on screen, stalls, rate."""
    since = lambda key: None if stream[key] is None else round(stream[key] - stream["requestAt"], 1)
    return {
        "path": stream["path"], "outcome": stream["outcome"], "frames": stream["framesReceived"], "of": stream["framesExpected"],
        "ttfb_ms": since("firstByteAt"), "first_frame_ms": since("firstFrameAt"), "body_ms": since("doneAt"),
        "waiting": stream["waiting"], "playback_rate": round(playback_rate(stream["samples"]), 4),
    }  # fmt: skip
