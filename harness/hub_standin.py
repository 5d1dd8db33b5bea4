"""A stand-in for the Hugging Face Hub's download route and for a plain file server, on loopback: what
`make weights` talks to in the tests and in a proof by hand (no weights can be downloaded here).

    python -m harness.checkpoints SEEDED --wav2lip-seed 1234 --s3fd-seed 4321
    python -m harness.hub_standin SEEDED [--port 8765]

serves SEEDED/wav2lip.pth as every hf:// generator file of the default sources (what `hf_hub_download`
asks: HEAD and GET on /{repo}/resolve/{revision}/{file}, read for ETag, X-Repo-Commit, Content-Length,
Range) and SEEDED/s3fd.pth as a plain URL /files/s3fd-<its sha256's first digits>.pth (the torch.hub
naming `make weights` checks), writes SEEDED/sources.txt (those sources with the seeded files' sizes and
digests: the published ones would rightly refuse them) and prints the environment for `make weights`
(with HF_HOME in SEEDED: the seeded files stay out of your own Hub cache).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from wav2lip_core import transfer
from wav2lip_core.weights import ACCEPT_ENV, DEFAULT_SOURCES, SOURCES_ENV, Expected, SourceList, file_sha256, parse_sources

HUB_COMMIT = hashlib.sha1(b"hub stand-in").hexdigest()  # X-Repo-Commit of every repository: 40 hex digits, as the Hub's
_RANGE = re.compile(r"bytes=(\d+)-")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Route:
    """A file served at one path; `truncate`: the whole length announced, half the bytes sent, the connection closed."""

    file: Path
    truncate: bool = False
    etag: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "etag", file_sha256(self.file))  # the Hub's LFS ETag is the sha256


@dataclass(frozen=True)
class Seen:
    """One request as the stand-in saw it."""

    method: str
    path: str
    range: str | None


def hub_path(repo: str, filename: str, revision: str = "main") -> str:
    """The Hub's download route for a file (huggingface_hub's HUGGINGFACE_CO_URL_TEMPLATE)."""
    return f"/{repo}/resolve/{revision}/{filename}"


class HubStandin:
    """A threaded HTTP server on 127.0.0.1 serving `routes` (path → Route; anything else is a 404), with its request log."""

    def __init__(self, routes: dict[str, Route] | None = None, port: int = 0):
        self.routes = dict(routes or {})
        self.requests: list[Seen] = []
        self.httpd = _Server(("127.0.0.1", port), _Handler)
        self.httpd.standin = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> HubStandin:
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Server(ThreadingHTTPServer):
    standin: HubStandin


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        standin, path = self.server.standin, urlsplit(self.path).path
        standin.requests.append(Seen(self.command, path, self.headers.get("Range")))
        route = standin.routes.get(path)
        if route is None:  # X-Error-Code: what hf_raise_for_status turns into RemoteEntryNotFoundError
            return self._empty(404, {"X-Error-Code": "EntryNotFound"})
        size = route.file.stat().st_size
        start = self._start(route)
        if start >= size > 0:
            return self._empty(416, {"Content-Range": f"bytes */{size}"})
        self._headers(route, start, size)
        if body:
            self._send(route.file, start, size // 2 if route.truncate else size)

    def _empty(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in (headers | {"Content-Length": "0"}).items():
            self.send_header(k, v)
        self.end_headers()

    def _start(self, route: Route) -> int:
        """Where the body starts: a `Range: bytes=N-` honoured unless its If-Range names another version."""
        m = _RANGE.fullmatch(self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        return int(m.group(1)) if m and (if_range is None or if_range.strip('"') == route.etag) else 0

    def _headers(self, route: Route, start: int, size: int) -> None:
        self.send_response(206 if start else 200)
        html = route.file.suffix == ".html"
        self.send_header("Content-Type", "text/html; charset=utf-8" if html else "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        self.send_header("ETag", f'"{route.etag}"')
        self.send_header("X-Repo-Commit", HUB_COMMIT)
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()

    def _send(self, file: Path, start: int, end: int) -> None:
        """Bytes `start` to `end` of `file`, then the connection closes (before the announced end when truncating)."""
        with file.open("rb") as f:
            f.seek(start)
            while start < end and (chunk := f.read(min(CHUNK, end - start))):
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client hung up: its business, not a server error
                start += len(chunk)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def seeded_routes(seeded: Path, url: str) -> tuple[dict[str, Route], SourceList]:
    """The routes that play the default hf:// generator sources and a plain S3FD URL with the seeded checkpoints
    of `seeded`, and the sources list (with their sizes and digests) that points `make weights` at them."""
    generator, s3fd = Route(seeded / "wav2lip.pth"), Route(seeded / "s3fd.pth")
    routes: dict[str, Route] = {}
    listed = SourceList()
    for name, uris in parse_sources(DEFAULT_SOURCES, "the default sources").sources.items():
        if name == "s3fd":
            continue
        for uri in (u for u in uris if u.startswith(transfer.HF_SCHEME)):
            hub = transfer.parse_hub(uri)
            routes[hub_path(hub.id, hub.path_in_repo, hub.revision or "main")] = generator
            listed.sources.setdefault(name, []).append(uri)
            listed.expected[name] = Expected(generator.etag, generator.file.stat().st_size)
    s3fd_path = f"/files/s3fd-{s3fd.etag[:10]}.pth"
    routes[s3fd_path] = s3fd
    listed.sources["s3fd"] = [url + s3fd_path]
    listed.expected["s3fd"] = Expected(s3fd.etag, s3fd.file.stat().st_size)
    return routes, listed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("seeded", type=Path, help="a folder with wav2lip.pth and s3fd.pth (python -m harness.checkpoints)")
    p.add_argument("--port", type=int, default=0, help="default: a free one")
    args = p.parse_args(argv)
    standin = HubStandin(port=args.port)
    routes, listed = seeded_routes(args.seeded, standin.url)
    standin.routes.update(routes)
    (args.seeded / "sources.txt").write_text(listed.format())
    print(f"serving {len(routes)} files on {standin.url}; for make weights:", flush=True)
    # its own Hub cache: the seeded files must never sit in the user's cache under the real repositories' names
    hf_home = (args.seeded / "hf-home").resolve()
    print(f"  HF_ENDPOINT={standin.url} HF_HOME={hf_home} {SOURCES_ENV}=@{(args.seeded / 'sources.txt').resolve()} {ACCEPT_ENV}=1",
          flush=True)  # fmt: skip
    try:
        standin.httpd.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass  # Ctrl-C: the way to stop it by hand
    finally:
        standin.httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
