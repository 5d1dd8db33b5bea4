"""A server process of the harness (nginx, redis-server): wait until it answers, stop it politely then firmly."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable

POLL_S = 0.05


def wait_ready(proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout_s: float, what: str, tail: Callable[[], str]) -> None:
    """Poll `ready()` until it is true; if the process exits or `timeout_s` passes, stop it and raise with the log's `tail()`."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc, signal.SIGTERM, 5.0)
            raise RuntimeError(f"{what} did not start:\n{tail()}")
        time.sleep(POLL_S)


def stop(
    proc: subprocess.Popen[bytes] | None, sig: signal.Signals, timeout_s: float, fallback: signal.Signals | None = None, group: bool = False
) -> None:
    """`sig` (the server's graceful stop), then `fallback` if given, each for `timeout_s`, then SIGKILL; with
    `group` (a process started with start_new_session) SIGKILL goes to its whole group, children included."""
    if proc is None or proc.poll() is not None:
        return
    for s in (sig, fallback):
        if s is None:
            continue
        proc.send_signal(s)
        try:
            proc.wait(timeout_s)
            return
        except subprocess.TimeoutExpired:
            pass
    if group:
        with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
            os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.kill()
    proc.wait()
