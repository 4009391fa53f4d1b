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
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from ktailor.core.errors import DownloadError, number_setting
from ktailor.farm.remote import read_url
from ktailor.project.versions import VERSION_RE, parse_version

DEFAULT_RELEASES_URL = "https://www.kernel.org/releases.json"
RELEASES_URL_ENV = "KTAILOR_RELEASES_URL"
# kernel.org cuts a release every few days; a releases.json (or a signed sha256sums.asc) whose newest
# date is older than this is stale or replayed, and trusting it would keep a vulnerable kernel in place.
MAX_AGE_ENV = "KTAILOR_MAX_SOURCE_AGE_DAYS"  # 0: no bound (an air-gapped farm with a frozen copy)
DEFAULT_MAX_AGE_DAYS = 30
LISTED_TARBALL_RE = re.compile(r"linux-(\d+\.\d+(?:\.\d+)?)\.tar\.xz(?![\w.])")


@dataclass(frozen=True)
class Release:
    version: str
    moniker: str  # mainline | stable | longterm (linux-next and -rc releases are skipped)
    iseol: bool
    released: int | None = None  # Unix time of the release ("released": {"timestamp": …})

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
                stamp = (entry.get("released") or {}).get("timestamp")
                releases.append(Release(version, str(entry.get("moniker", "")), bool(entry.get("iseol", False)),
                                        int(stamp) if isinstance(stamp, int | float) and stamp > 0 else None))
    except (ValueError, KeyError, TypeError) as exc:
        raise DownloadError(f"{url} is not kernel.org's releases.json format ({type(exc).__name__}: {exc}); "
                            f"point {RELEASES_URL_ENV} at a copy of {DEFAULT_RELEASES_URL}.") from None
    return releases


def fetch_releases(url: str, env: dict[str, str] | None = None, now: float | None = None) -> list[Release]:
    releases = parse_releases(read_url(url, what="releases.json"), url)
    check_fresh(releases, url, max_age_days(env), time.time() if now is None else now)
    return releases


class StaleSource(DownloadError):
    """releases.json or a signed checksum file is older than the freshness bound."""


def max_age_days(env: dict[str, str] | None = None) -> float:
    env = os.environ if env is None else env
    return number_setting(env, MAX_AGE_ENV, DEFAULT_MAX_AGE_DAYS,
                          f"is not a number of days; unset it (default {DEFAULT_MAX_AGE_DAYS}), or 0 for no bound.")


def check_fresh(releases: list[Release], url: str, max_days: float, now: float) -> None:
    """Refuse a releases.json whose newest release is older than `max_days` (0: no bound)."""
    if not max_days:
        return
    dated = [r.released for r in releases if r.released]
    if not dated:
        raise StaleSource(f"{url} gives no release dates, so ktailor cannot tell a current releases.json from a stale "
                          f"or replayed one; use kernel.org's (or an unchanged copy), or set {MAX_AGE_ENV}=0 to accept "
                          "it unchecked.")
    age = (now - max(dated)) / 86400
    if age > max_days:
        newest = time.strftime("%Y-%m-%d", time.gmtime(max(dated)))
        raise StaleSource(f"{url} is stale: its newest release is from {newest}, {age:.0f} days ago, over the "
                          f"{max_days:g}-day bound ({MAX_AGE_ENV}). A stale or replayed releases.json would hide newer "
                          "security releases, so nothing was decided from it; refresh the copy (or fix the clock).")


def check_signed_recently(signed_at: int | None, source: str, env: dict[str, str] | None = None,
                          now: float | None = None) -> None:
    """kernel.org re-signs sha256sums.asc with every release: an old signature is a stale or replayed file, and
    one without a time cannot be shown fresh, so it is refused as well."""
    days = max_age_days(env)
    if not days:
        return
    if signed_at is None or signed_at <= 0:
        raise StaleSource(f"{source}: its signature carries no signing time, so ktailor cannot tell a current checksum "
                          "file from a stale or replayed one; nothing was decided from it. Fetch sha256sums.asc from "
                          f"kernel.org (or an unchanged copy) and check that `gpgv` is GnuPG's own, or set "
                          f"{MAX_AGE_ENV}=0 to accept it unchecked.")
    age = ((time.time() if now is None else now) - signed_at) / 86400
    if age > days:
        raise StaleSource(f"{source} was signed {age:.0f} days ago ({time.strftime('%Y-%m-%d', time.gmtime(signed_at))}), "
                          f"over the {days:g}-day bound ({MAX_AGE_ENV}): a stale or replayed checksum file. Refresh the "
                          "mirror from kernel.org.")


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
