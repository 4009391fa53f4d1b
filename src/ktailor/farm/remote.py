"""Small remote reads: releases.json, a mirror's sha256sums.asc and directory listings.

Tarballs go through download.py (streamed, resumed, checksummed); these files are a few kilobytes,
so they are read whole into memory, over http(s) or file://, with a short retry on transient
failures. A file the server says does not exist raises NotOnMirror, so callers can tell "this
mirror has no such file" (a fact about the data) from "the mirror cannot be reached".
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests

from ktailor.core.errors import DownloadError
from ktailor.core.progress import info

RETRY_STATUSES = {429, 500, 502, 503, 504}


class NotOnMirror(DownloadError):
    """The server answered, and the file is not there (HTTP 404/410, or no such file://)."""


def read_url(url: str, *, what: str, timeout: float = 30.0, retries: int = 3, backoff: float = 1.0,
             session: requests.Session | None = None) -> bytes:
    """The body of `url`; `what` names the file in messages ("releases.json", "sha256sums.asc")."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotOnMirror(f"{url}: no such file ({what}); check the mirror directory and its v<major>.x layout.") from None
        except OSError as exc:
            raise DownloadError(f"{url}: cannot read {what} ({exc.strerror}).") from None
    if parsed.scheme not in ("http", "https"):
        raise DownloadError(f"{url!r} is not an http://, https:// or file:// URL; cannot fetch {what} from it.")
    session = session or requests.Session()
    last_problem = "no attempt made"
    for attempt in range(1, retries + 1):
        try:
            response = session.get(url, timeout=timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            last_problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code in (404, 410):
                raise NotOnMirror(f"{url} does not exist (HTTP {response.status_code}); the server has no {what} there.")
            if response.status_code < 400:
                return response.content
            if response.status_code not in RETRY_STATUSES:
                raise DownloadError(f"{url} answered HTTP {response.status_code} for {what}; check the URL and your access.")
            last_problem = f"HTTP {response.status_code}"
        if attempt < retries:
            delay = backoff * 2 ** (attempt - 1)
            info(f"fetching {what} from {url} failed ({last_problem}); retry {attempt}/{retries - 1} in {delay:.0f}s")
            time.sleep(delay)
    raise DownloadError(f"could not fetch {what} from {url} after {retries} attempts (last: {last_problem}). "
                        "Check the network, or point the URL at a reachable copy (KTAILOR_MIRROR, KTAILOR_RELEASES_URL).")
