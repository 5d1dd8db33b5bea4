"""Bytes from one weights source into a partial file (`make weights`; `weights.py` decides what counts).

Two kinds of source: `hf://REPO[@REVISION]/FILE` goes through huggingface_hub (`HF_ENDPOINT`, its cache
under `HF_HOME`, `HF_HUB_OFFLINE` and its own resuming all honoured) and is then copied out of that cache;
an http(s) URL is fetched here, resuming a partial file of an earlier run with an HTTP Range request
(`If-Range` with the server's validator, so a file changed in between restarts instead of splicing).
Progress bars go to stdout: stderr is kept for the one error line. Failures raise `WeightsError`
(`download_failed`) with the reason in one line.
"""

from __future__ import annotations

import http.client
import logging
import re
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .errors import WeightsError

HF_SCHEME = "hf://"
URL_TIMEOUT_S = 60.0  # per connect and per read: a stalled mirror fails, a slow one goes on
CHUNK = 1 << 20
USER_AGENT = "wav2lip-openvino-server (make weights)"
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-\d+|\*)/(\d+)")  # RFC 9110 14.4: "bytes 10-99/100" or "bytes */100"


class Progress(tqdm):
    """A byte progress bar on stdout (also handed to huggingface_hub as its `tqdm_class`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("file", sys.stdout)
        kwargs.setdefault("unit", "B")
        kwargs.setdefault("unit_scale", True)
        kwargs.setdefault("unit_divisor", 1024)
        super().__init__(*args, **kwargs)


def one_line(e: BaseException) -> str:
    """An exception and its cause as one short line (a reason in a list of failed sources)."""
    text = " ".join(str(e).split())[:200] or type(e).__name__
    cause = e.__cause__ or e.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({' '.join(str(cause).split())[:160]})"
    return text


def fetch(uri: str, part: Path, label: str) -> None:
    """The bytes of `uri` into `part` (created or resumed; `label` names the progress bar); WeightsError
    (download_failed) when they cannot be had whole."""
    if uri.startswith(HF_SCHEME):
        _fetch_hub(uri, part)
    else:
        _fetch_url(uri, part, label)


def validator_of(part: Path) -> Path:
    """Where a plain URL's partial file keeps the server's ETag / Last-Modified (its If-Range on a resume)."""
    return part.with_suffix(".validator")


def parse_hub(uri: str) -> Any:
    """`hf://[TYPE/]REPO[@REVISION]/FILE` → huggingface_hub's HfUri; ValueError (HfUriError) when malformed."""
    from huggingface_hub.utils import parse_hf_uri  # conversion-only dependency, imported when used

    parsed = parse_hf_uri(uri)
    if not parsed.is_repo or not parsed.path_in_repo:
        raise ValueError(f"{uri}: an hf:// source names a file in a repository: hf://OWNER/REPO[@REVISION]/PATH")
    return parsed


def _fetch_hub(uri: str, part: Path) -> None:
    """hf_hub_download into the Hub cache (resumes there), then a copy of the cached file into `part`."""
    import httpx2  # huggingface_hub's HTTP client: its transport errors are not OSErrors
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    _hub_logs_to_stdout()
    src = parse_hub(uri)
    try:
        cached = hf_hub_download(src.id, src.path_in_repo, repo_type=src.type, revision=src.revision, tqdm_class=Progress)
        shutil.copyfile(cached, part)  # a new file (and mtime): `make models` sees checkpoints newer than the IR
    except LocalEntryNotFoundError as e:  # the HEAD failed (offline, refused, HF_HUB_OFFLINE) and the cache has no copy
        raise WeightsError(
            f"cannot reach {constants.ENDPOINT}, and the Hub cache has no copy ({one_line(e.__cause__ or e)})", code="download_failed"
        ) from e
    except (OSError, httpx2.HTTPError) as e:  # HfHubHTTPError (404, 5xx), LocalEntryNotFoundError (offline), size mismatch
        raise WeightsError(one_line(e), code="download_failed") from e


def _hub_logs_to_stdout() -> None:
    """huggingface_hub logs (its retries, ~23 s of them when offline) through its own stderr handler: move them to
    stdout with the rest of the story, stderr is for the one error line."""
    hub = logging.getLogger("huggingface_hub")
    for handler in hub.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stdout)
    hub.propagate = False  # and not a second time through the root logger


def _fetch_url(url: str, part: Path, label: str) -> None:
    """GET `url` into `part`, resuming what an earlier run left there."""
    validator = validator_of(part)
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have and validator.exists():
        headers |= {"Range": f"bytes={have}-", "If-Range": validator.read_text()}
    elif have:
        have = 0  # no validator: the bytes cannot be matched to the file now served
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=URL_TIMEOUT_S) as resp:
            start, total = _span(resp.status, resp.headers, have)
            validator.unlink(missing_ok=True)
            if tag := resp.headers.get("ETag") or resp.headers.get("Last-Modified"):
                validator.write_text(tag)
            _save(resp, part, start, total, label)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have and _span(206, e.headers, have)[1] == have:
            return  # "bytes */SIZE" with SIZE = what we have: an earlier run got every byte, nothing more to fetch
        raise WeightsError(one_line(e), code="download_failed") from e
    except (OSError, http.client.HTTPException) as e:  # refused, no route, DNS, timeout, connection reset
        raise WeightsError(one_line(e), code="download_failed") from e
    if total is not None and part.stat().st_size != total:
        raise WeightsError(f"broke off at {part.stat().st_size} of {total} bytes (run again to resume)", code="download_failed")


def _span(status: int, headers: Any, have: int) -> tuple[int, int | None]:
    """(where the body starts in the file, the file's whole size or None) from a 200 or a 206/416."""
    if status != 206:
        length = headers.get("Content-Length")
        return 0, int(length) if length is not None else None
    m = _CONTENT_RANGE.fullmatch(headers.get("Content-Range", "").strip())
    if m is None or (m.group(1) is not None and int(m.group(1)) != have):
        raise WeightsError(
            f"answered a resume from byte {have} with Content-Range {headers.get('Content-Range')!r}", code="download_failed"
        )
    return (have if m.group(1) is None else int(m.group(1))), int(m.group(2))


def _save(resp: http.client.HTTPResponse, part: Path, start: int, total: int | None, label: str) -> None:
    """Write the body into `part` from byte `start` (0: the whole file anew), with a progress bar."""
    with part.open("r+b" if start else "wb") as f, Progress(total=total, initial=start, desc=label) as bar:
        f.seek(start)
        f.truncate()
        while chunk := resp.read(CHUNK):
            f.write(chunk)
            bar.update(len(chunk))
