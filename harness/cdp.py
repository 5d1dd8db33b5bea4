"""Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`): the
tests and the bench evaluate JavaScript in the page and fill its file inputs, with no websocket library and no
debugging port. Chromium reads commands on fd 3 and writes answers and events on fd 4, each a JSON
object ending with a NUL byte.

    with Chromium(exe, tmp_path) as browser:
        browser.navigate("http://localhost:8123/clients/browser/index.html?server=…")
        browser.wait_for("window.lipsyncState?.phase === 'idle'", timeout_s=60)
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic", "--autoplay-policy=no-user-gesture-required",
         "--remote-debugging-pipe"]  # fmt: skip
COMMAND_TIMEOUT_S = 30.0  # one DevTools command (a navigation included)
POLL_S = 0.05  # between evaluations in wait_for
CONSOLE_TAIL = 30  # console lines quoted when a wait fails


class CdpError(RuntimeError):
    """A DevTools command failed, timed out, or the page threw."""


class Chromium:
    """One headless Chromium (its own process group and profile under `workdir`), attached to its first tab."""

    def __init__(self, exe: str, workdir: Path):
        self.exe = exe
        self.workdir = workdir
        self.pid = 0
        self.console: list[str] = []  # the page's console messages and uncaught exceptions, oldest first
        self._next_id = 0
        self._buffer = b""
        self._session: str | None = None
        self._tmp: str | None = None

    def __enter__(self) -> Chromium:
        to_chrome, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome = os.pipe()
        log = os.open(self.workdir / "chromium.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        argv = [self.exe, *FLAGS, f"--user-data-dir={self.workdir / 'profile'}", "about:blank"]
        dup2 = [(os.POSIX_SPAWN_DUP2, to_chrome, 3), (os.POSIX_SPAWN_DUP2, from_chrome, 4), (os.POSIX_SPAWN_DUP2, log, 1),
                (os.POSIX_SPAWN_DUP2, log, 2)]  # fmt: skip
        # its temporary files (which SIGKILL leaves behind) in a folder close() removes; a short path, as
        # Chromium puts sockets there (108 bytes at most)
        self._tmp = tempfile.mkdtemp(prefix="chromium-")
        try:
            env = os.environ | {"TMPDIR": self._tmp}
            self.pid = os.posix_spawn(self.exe, argv, env, file_actions=dup2, setsid=True)  # its own group: killed whole
        except OSError:
            os.close(self._to_chrome)
            os.close(self._from_chrome)
            self._remove_tmp()
            raise
        finally:
            for fd in (to_chrome, from_chrome, log):
                os.close(fd)
        try:
            page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
            self._session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
            self.send("Runtime.enable")
            self.send("Page.enable")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """SIGKILL the process group (browser, renderers, GPU and utility processes) and reap it."""
        if self.pid:
            os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = 0
            os.close(self._to_chrome)
            os.close(self._from_chrome)
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp)
            self._tmp = None

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One command (on the page's session once attached); its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params} | ({"sessionId": self._session} if self._session else {})
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while True:
            reply = self._read(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                return reply["result"]
            self._on_event(reply)

    def _read(self, deadline: float, method: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise CdpError(f"{method}: no answer from chromium in {COMMAND_TIMEOUT_S:g} s")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise CdpError(f"{method}: chromium closed the pipe (see {self.workdir / 'chromium.log'})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _on_event(self, event: dict[str, Any]) -> None:
        params = event.get("params", {})
        if event.get("method") == "Runtime.consoleAPICalled":
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif event.get("method") == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console.append(f"uncaught: {details.get('exception', {}).get('description', details.get('text'))}")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError(f"{expression}: {details.get('exception', {}).get('description', details.get('text'))}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float) -> Any:
        """Evaluate until the value is truthy; that value. CdpError after `timeout_s`, with the console's tail."""
        deadline = time.monotonic() + timeout_s
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                tail = "\n  ".join(self.console[-CONSOLE_TAIL:])
                raise CdpError(f"not true after {timeout_s:g} s: {expression}\nconsole:\n  {tail}")
            time.sleep(POLL_S)
        return value

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def set_files(self, selector: str, *paths: Path) -> None:
        """Choose files in an <input type=file> as a user would: the page gets its `change` event."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise CdpError(f"no element matches {selector!r}")
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(p) for p in paths])
