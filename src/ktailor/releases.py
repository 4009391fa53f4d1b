"""What kernel.org says about a series: its newest point release, whether it is end-of-life, and
which longterm series to move to next.

The source is kernel.org's releases.json (https://www.kernel.org/releases.json, or KTAILOR_RELEASES_URL
for a local copy): {"latest_stable": {...}, "releases": [{"moniker": "longterm", "version": "6.1.192",
"iseol": false, ...}, ...]}. kernel.org stops listing a series some time after its end of life; for
those, a mirror's directory listing (<mirror>/v6.x/) still tells the newest point release.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import DownloadError
from .remote import read_url
from .versions import VERSION_RE, parse_version

DEFAULT_RELEASES_URL = "https://www.kernel.org/releases.json"
RELEASES_URL_ENV = "KTAILOR_RELEASES_URL"
LISTED_TARBALL_RE = re.compile(r"linux-(\d+\.\d+(?:\.\d+)?)\.tar\.xz(?![\w.])")


@dataclass(frozen=True)
class Release:
    version: str
    moniker: str  # mainline | stable | longterm (linux-next and -rc releases are skipped)
    iseol: bool

    @property
    def series(self) -> str:
        return series_of(self.version)


def series_of(version: str) -> str:
    return ".".join(version.split(".")[:2])


def series_tuple(series: str) -> tuple[int, int]:
    major, minor = series.split(".")
    return int(major), int(minor)


def releases_url(explicit: str | None = None, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return explicit or env.get(RELEASES_URL_ENV) or DEFAULT_RELEASES_URL


def parse_releases(data: bytes, url: str) -> list[Release]:
    """The numbered releases in a releases.json body; raise DownloadError when it is not one."""
    try:
        document = json.loads(data)
        entries = document["releases"]
        if not isinstance(entries, list):
            raise TypeError("releases is not a list")
        releases = []
        for entry in entries:
            version = str(entry["version"])
            if VERSION_RE.match(version):  # skips "6.13-rc1" and "next-20241128"
                releases.append(Release(version, str(entry.get("moniker", "")), bool(entry.get("iseol", False))))
    except (ValueError, KeyError, TypeError) as exc:
        raise DownloadError(f"{url} is not kernel.org's releases.json format ({type(exc).__name__}: {exc}); "
                            f"point {RELEASES_URL_ENV} at a copy of {DEFAULT_RELEASES_URL}.") from None
    return releases


def fetch_releases(url: str) -> list[Release]:
    return parse_releases(read_url(url, what="releases.json"), url)


@dataclass(frozen=True)
class SeriesStatus:
    series: str
    listed: bool  # kernel.org still lists the series
    eol: bool  # listed with iseol, or no longer listed at all
    latest: str | None  # the newest point release kernel.org lists for the series
    moniker: str | None


def series_status(releases: list[Release], series: str) -> SeriesStatus:
    mine = [r for r in releases if r.series == series]
    if not mine:
        return SeriesStatus(series, listed=False, eol=True, latest=None, moniker=None)
    newest = max(mine, key=lambda r: parse_version(r.version))
    return SeriesStatus(series, listed=True, eol=any(r.iseol for r in mine), latest=newest.version, moniker=newest.moniker)


def next_longterm(releases: list[Release], series: str) -> Release | None:
    """The lowest longterm series newer than `series` that is not end-of-life, as its newest release."""
    newer = [r for r in releases if r.moniker == "longterm" and not r.iseol and series_tuple(r.series) > series_tuple(series)]
    if not newer:
        return None
    lowest = min(series_tuple(r.series) for r in newer)
    return max((r for r in newer if series_tuple(r.series) == lowest), key=lambda r: parse_version(r.version))


def mirror_versions(mirror: str, major: str) -> list[str]:
    """Every linux-<version>.tar.xz in <mirror>/v<major>.x/, from its directory listing."""
    folder = f"{mirror.rstrip('/')}/v{major}.x/"
    parsed = urlparse(folder)
    if parsed.scheme == "file":
        directory = Path(unquote(parsed.path))
        names = " ".join(p.name for p in directory.iterdir()) if directory.is_dir() else ""
    else:
        names = read_url(folder, what="the directory listing").decode(errors="replace")
    return sorted(set(LISTED_TARBALL_RE.findall(names)), key=parse_version)


def newest_on_mirror(mirror: str, series: str) -> str | None:
    found = [v for v in mirror_versions(mirror, series.partition(".")[0]) if series_of(v) == series]
    return found[-1] if found else None
