"""Download a kernel tarball: streaming, resumable, retried, checksummed, atomic.

The file is written to `<name>.part`, resumed with an HTTP Range request after an interruption,
and renamed into place only once its sha256 matches the pin in versions.toml. A mismatch deletes
the partial file and says which URL gave which hash. file:// mirrors are copied the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests

from ktailor.core.errors import ChecksumMismatch, DownloadError, number_setting
from ktailor.core.locks import locked, no_wait
from ktailor.core.progress import bar, info
from ktailor.core.records import sha256_of
from ktailor.stages.base import PER_KERNEL, Context, Stage

CHUNK = 1 << 20
READ_BLOCK = 64 << 10  # HTTP reads: small enough that a slow but acceptable link still shows progress often
RETRY_STATUSES = {429, 500, 502, 503, 504}
# A mirror that trickles (a byte every few seconds keeps a per-read timeout happy forever) is cut off when
# fewer than MIN_RATE bytes/s arrive over RATE_WINDOW seconds; the attempt is retried and resumes.
# KTAILOR_DOWNLOAD_MIN_RATE / KTAILOR_DOWNLOAD_RATE_WINDOW change them (see run below).
MIN_RATE = 10 * 1024
RATE_WINDOW = 60.0


def verified_marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def is_verified(path: Path, sha256: str) -> bool:
    """Cheap up-to-date check: the file exists and was verified with this sha256 at this size."""
    marker = verified_marker(path)
    if not path.is_file() or not marker.is_file():
        return False
    try:
        recorded, size = marker.read_text().split()
    except ValueError:
        return False
    return recorded == sha256 and int(size) == path.stat().st_size


def check_cached(path: Path, sha256: str) -> None:
    """Re-hash a cached tarball before it is used: the size marker only says it was right once."""
    actual = sha256_of(path) if path.is_file() else "missing"
    if actual != sha256:
        path.unlink(missing_ok=True)
        verified_marker(path).unlink(missing_ok=True)
        raise ChecksumMismatch(f"the cached {path} no longer has the sha256 versions.toml pins ({sha256}; it has "
                               f"{actual}): it changed on disk after it was verified. It was deleted; run `doit` again "
                               "to download it afresh.")


def fetch(url: str, destination: Path, sha256: str, *, retries: int = 5, timeout: float = 30.0,
          backoff: float = 1.0, session: requests.Session | None = None, min_rate: float = MIN_RATE,
          rate_window: float = RATE_WINDOW) -> Path:
    """Download `url` to `destination` and check its sha256; resume a `.part` file if one is there.
    Holds the cache entry's lock: a second run sharing the cache waits instead of truncating the .part."""
    if is_verified(destination, sha256):
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    with locked(destination.parent / ".locks" / f"{destination.name}.lock", f"the download of {destination.name}",
                wait=not no_wait(os.environ)):
        if is_verified(destination, sha256):  # the run we waited for fetched it
            return destination
        return _fetch(url, destination, sha256, retries=retries, timeout=timeout, backoff=backoff, session=session,
                      min_rate=min_rate, rate_window=rate_window)


def _fetch(url: str, destination: Path, sha256: str, *, retries: int, timeout: float, backoff: float,
           session: requests.Session | None, min_rate: float, rate_window: float) -> Path:
    part = destination.with_name(destination.name + ".part")
    if urlparse(url).scheme == "file":
        _copy_file_url(url, part)
    else:
        _download_http(url, part, retries=retries, timeout=timeout, backoff=backoff, session=session or requests.Session(),
                       rate=(min_rate, rate_window))
    actual = sha256_of(part)
    if actual != sha256:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}. The partial file was deleted. "
            "If the pin in versions.toml is right, the mirror serves a different file; if you changed the version, "
            "update its sha256 (`invoke upgrade --version …` fetches and verifies it)."
        )
    part.replace(destination)
    verified_marker(destination).write_text(f"{sha256} {destination.stat().st_size}\n")
    return destination


def _copy_file_url(url: str, part: Path) -> None:
    source = Path(unquote(urlparse(url).path))
    if not source.is_file():
        raise DownloadError(f"{url}: no such file on the file:// mirror; check KTAILOR_MIRROR and the v<major>.x layout.")
    with source.open("rb") as src, part.open("wb") as dst, bar(total=source.stat().st_size, unit="B",
                                                                  unit_scale=True, desc=source.name) as progress:
        while block := src.read(CHUNK):
            dst.write(block)
            progress.update(len(block))
    shutil.copystat(source, part)


def _download_http(url: str, part: Path, *, retries: int, timeout: float, backoff: float,
                   session: requests.Session, rate: tuple[float, float] = (MIN_RATE, RATE_WINDOW)) -> None:
    last_problem = "no attempt made"
    for attempt in range(1, retries + 1):
        try:
            if _attempt(url, part, timeout, session, rate):
                return
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            last_problem = f"{type(exc).__name__}: {exc}"
        except _Retryable as exc:
            last_problem = str(exc)
        if attempt < retries:
            delay = backoff * 2 ** (attempt - 1)
            info(f"download of {url} failed ({last_problem}); retry {attempt}/{retries - 1} in {delay:.0f}s, resuming")
            time.sleep(delay)
    raise DownloadError(
        f"could not download {url} after {retries} attempts (last: {last_problem}). The partial file {part} is kept "
        "and the next run resumes it. Check the network, or point KTAILOR_MIRROR at a reachable mirror."
    )


class _Retryable(Exception):
    pass


class _Watchdog:
    """Cuts the connection when fewer than min_rate bytes/s arrived over the last `window` seconds."""

    def __init__(self, response: requests.Response, min_rate: float, window: float) -> None:
        self.response, self.min_rate, self.window = response, min_rate, window
        self.received = 0
        self.fired = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _Watchdog:
        if self.min_rate > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        history = [(time.monotonic(), 0)]
        step = min(1.0, self.window / 4)
        while not self._done.wait(step):
            now = time.monotonic()
            history.append((now, self.received))
            while len(history) > 1 and now - history[1][0] >= self.window:
                history.pop(0)
            start, then = history[0]
            if now - start >= self.window and self.received - then < self.min_rate * self.window:
                self.fired = True
                self._cut()
                return

    def _cut(self) -> None:
        connection = getattr(self.response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        with contextlib.suppress(OSError, AttributeError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the read that is blocked in recv()
        with contextlib.suppress(Exception):
            self.response.close()


def _attempt(url: str, part: Path, timeout: float, session: requests.Session,
             rate: tuple[float, float] = (MIN_RATE, RATE_WINDOW)) -> bool:
    have = part.stat().st_size if part.exists() else 0
    # identity: byte offsets for Range must count the file's bytes, not a compressed transfer's
    headers = {"Accept-Encoding": "identity"} | ({"Range": f"bytes={have}-"} if have else {})
    with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416 and have:
            part.unlink()  # what we have is longer than the file: start over
            raise _Retryable("the partial file was larger than the remote one; starting over")
        if response.status_code in RETRY_STATUSES:
            raise _Retryable(f"HTTP {response.status_code}")
        if response.status_code == 404:
            raise DownloadError(
                f"{url} does not exist on the mirror (HTTP 404). Check the version in versions.toml, and that the "
                "mirror (KTAILOR_MIRROR) is laid out like kernel.org: <mirror>/v6.x/linux-6.1.1.tar.xz."
            )
        if response.status_code >= 400:
            raise DownloadError(f"{url} answered HTTP {response.status_code}; check the mirror URL and your access.")
        # urllib3 2 raises on a body shorter than Content-Length and drops the bytes it had already
        # read; let it hand them over instead, so the .part keeps them and the check below resumes.
        response.raw.enforce_content_length = False
        resumed = response.status_code == 206
        mode = "ab" if resumed else "wb"
        total = int(response.headers.get("Content-Length", 0)) + (have if resumed else 0)
        with part.open(mode) as handle, bar(total=total or None, initial=have if resumed else 0, unit="B",
                                            unit_scale=True, desc=part.name.removesuffix(".part")) as progress, \
                _Watchdog(response, *rate) as watchdog:
            try:
                for block in response.iter_content(READ_BLOCK):
                    handle.write(block)
                    watchdog.received += len(block)
                    progress.update(len(block))
            except (requests.RequestException, OSError, AttributeError):
                if not watchdog.fired:
                    raise
        if watchdog.fired:
            raise _Retryable(f"the mirror sent fewer than {rate[0]:.0f} bytes/s over {rate[1]:g}s "
                             f"({part.stat().st_size} bytes so far)")
        if total and part.stat().st_size < total:
            raise _Retryable(f"connection closed after {part.stat().st_size} of {total} bytes")
    return True


# --- the stage ---------------------------------------------------------------------------------
def run(ctx: Context) -> None:
    kernel, env = ctx.the_kernel, ctx.project.env
    fetch(kernel.url, ctx.project.tarball(kernel), kernel.sha256,
          min_rate=_number(env, "KTAILOR_DOWNLOAD_MIN_RATE", MIN_RATE),
          rate_window=_number(env, "KTAILOR_DOWNLOAD_RATE_WINDOW", RATE_WINDOW))


def _number(env: dict[str, str], variable: str, default: float) -> float:
    return number_setting(env, variable, default,
                          f"is not a number of bytes/seconds; unset it or give e.g. {variable}={default:g}.")


def tarball_verified(task, values, tarball: str, sha256: str) -> bool:  # doit uptodate callable
    return is_verified(Path(tarball), sha256)


STAGE = Stage(
    "download", "fetch kernel tarballs into the download cache (sha256-checked)",
    doc=lambda ctx: f"download {ctx.the_kernel.tarball_name} from {ctx.the_kernel.mirror}",
    run=run, per=PER_KERNEL,
    applies=lambda ctx: ctx.the_kernel.source is None,  # the user's own tree: nothing to download
    inputs=lambda ctx: [],  # never up to date by inputs alone: the pinned sha256 and the file decide
    outputs=lambda ctx: [ctx.project.tarball(ctx.the_kernel)],
    state=lambda ctx: {"sha256": ctx.the_kernel.sha256},
    check=lambda ctx: (tarball_verified, [str(ctx.project.tarball(ctx.the_kernel)), ctx.the_kernel.sha256]),
    clean=lambda ctx: [],  # the cache outlives `doit clean`; `invoke clean --downloads` empties it
)
