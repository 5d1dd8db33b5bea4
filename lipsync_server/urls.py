"""Outbound HTTP, only to hosts an operator allowed: fetching `source_url` / `audio_url` (`FETCH_HOSTS`)
and a job's webhook (`WEBHOOK_HOSTS`). A server that fetches any URL it is given can be made to read
internal services (SSRF), so an empty list refuses every URL; `*` allows any host. Redirects are
not followed (a redirect could leave the allowed hosts).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from wav2lip_core.errors import UrlRefused

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 20.0
WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_ATTEMPTS = 4  # the first try and 3 retries, 1 s, 2 s, 4 s apart


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx becomes an HTTPError instead of a request to wherever it points


_OPENER = urllib.request.build_opener(_NoRedirect)


def checked(url: object, hosts: tuple[str, ...], field: str, setting: str) -> str:
    """`url` if it is http(s) and its host (or host:port) is allowed; else `UrlRefused` saying what to configure."""
    if not isinstance(url, str) or not url:
        raise UrlRefused(f"{field} must be an http(s) URL, got {json.dumps(url)[:80]}", code="invalid_field")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as e:
        raise UrlRefused(f"{field} has an invalid port: {url[:200]!r}", code="invalid_field") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefused(f"{field} must be an http(s) URL, got {url[:200]!r}", code="invalid_field")
    names = {parts.hostname, f"{parts.hostname}:{port or (443 if parts.scheme == 'https' else 80)}"}
    if "*" not in hosts and not names & set(hosts):
        allowed = f"the allowed hosts are {', '.join(hosts)}" if hosts else f"{setting} is empty, so no URL is fetched"
        raise UrlRefused(f"{field}: host {parts.netloc!r} is not allowed ({allowed}); send the file itself, or add the host to {setting}")
    return url


def fetch(url: str, max_bytes: int, field: str) -> bytes:
    """GET an allowed URL's body, at most `max_bytes`; failures are `UrlRefused` (code fetch_failed) naming the URL."""
    try:
        with _OPENER.open(url, timeout=FETCH_TIMEOUT_S) as resp:
            data = resp.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UrlRefused(f"{field}: could not fetch {url[:200]}: {e}", code="fetch_failed") from e
    if len(data) > max_bytes:
        raise UrlRefused(f"{field}: {url[:200]} is larger than {max_bytes} bytes", code="fetch_failed")
    return data


def post_json(url: str, payload: dict[str, Any]) -> bool:
    """POST `payload` to a webhook: up to WEBHOOK_ATTEMPTS tries with backoff; True once it answered 2xx."""
    body = json.dumps(payload).encode()
    for attempt in range(WEBHOOK_ATTEMPTS):
        if attempt:
            time.sleep(2 ** (attempt - 1))
        req = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
        try:
            with _OPENER.open(req, timeout=WEBHOOK_TIMEOUT_S):
                return True
        except (urllib.error.URLError, OSError) as e:  # HTTPError (a non-2xx answer) is a URLError
            log.warning("webhook %s, try %d of %d: %s", url[:200], attempt + 1, WEBHOOK_ATTEMPTS, e)
    log.error("webhook %s not delivered after %d tries: job %s", url[:200], WEBHOOK_ATTEMPTS, payload.get("id"))
    return False
