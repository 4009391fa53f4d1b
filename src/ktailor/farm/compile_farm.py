"""Compiling beyond this machine: ccache's remote storage shared by a farm, and distcc's compile hosts.

Neither changes what is built (a remote hit is the object a local compile would give; distcc runs the
preprocessor here and the same compiler there), so neither is part of a task's staleness: switching a
farm on or off reruns nothing. What they did is recorded in build.json ("ccache": remote hits;
"engine": which hosts compiled how many objects, read from distcc's own client log).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ktailor.core.errors import InputError

REMOTE_ENV = "KTAILOR_CCACHE_REMOTE"  # ccache remote_storage: redis://host:port, http://host/path, …
DISTCC_HOSTS_ENV = "KTAILOR_DISTCC_HOSTS"  # distcc host list: "127.0.0.1/2 buildhost:3632/8"
REMOTE_SCHEMES = ("redis", "redis+unix", "http", "https", "file")  # ccache 4.4+ storage back ends
# distcc(1): HOST[:PORT][/LIMIT][,OPTIONS] or localhost[/LIMIT]; the default limit is 4, 2 for localhost.
HOST_RE = re.compile(r"^(?P<host>[A-Za-z0-9_.\-\[\]]+)(?::(?P<port>\d{1,5}))?(?:/(?P<limit>\d{1,4}))?"
                     r"(?:,(?P<options>[a-z0-9,]+))?$")
COMPILED_RE = re.compile(r"\bcompile \S+ on (?P<host>\S+) completed ok\b")
FALLBACK_RE = re.compile(r"failed to distribute|running locally instead", re.IGNORECASE)


@dataclass(frozen=True)
class Host:
    host: str
    port: int | None
    slots: int

    @property
    def local(self) -> bool:
        return self.host == "localhost"  # distcc runs "localhost" itself; 127.0.0.1 goes to a distccd


def remote_storage(env: dict[str, str]) -> str | None:
    """KTAILOR_CCACHE_REMOTE checked: one or more space-separated ccache storage URLs."""
    value = env.get(REMOTE_ENV, "").strip()
    if not value:
        return None
    for url in value.split():
        scheme = url.split(":", 1)[0] if ":" in url else ""
        if scheme not in REMOTE_SCHEMES:
            raise InputError(f"${REMOTE_ENV} item {url!r} is not a ccache remote storage URL; use one of "
                             f"{', '.join(s + '://' for s in REMOTE_SCHEMES)}… (e.g. redis://cachehost:6379).")
    return value


def redacted(urls: str) -> str:
    """The storage URLs without passwords (redis://:secret@host → redis://***@host), for build.json."""
    shown = []
    for url in urls.split():
        parts = urlsplit(url)
        if parts.password is not None or (parts.username and "@" in parts.netloc):
            host = parts.netloc.rsplit("@", 1)[1]
            parts = parts._replace(netloc=f"***@{host}")
        shown.append(urlunsplit(parts))
    return " ".join(shown)


def distcc_hosts(env: dict[str, str]) -> list[Host]:
    """KTAILOR_DISTCC_HOSTS parsed; an empty list when distcc is not asked for."""
    value = env.get(DISTCC_HOSTS_ENV, "").strip()
    hosts = []
    for word in value.split():
        match = HOST_RE.match(word)
        if not match or (match["port"] and not 0 < int(match["port"]) < 65536) or match["limit"] == "0":
            raise InputError(f"${DISTCC_HOSTS_ENV} item {word!r} is not a distcc host; write HOST[:PORT][/SLOTS], "
                             f"e.g. {DISTCC_HOSTS_ENV}=\"127.0.0.1/2 buildhost:3632/8\" (see distcc(1)).")
        default = 2 if match["host"] == "localhost" else 4
        hosts.append(Host(match["host"], int(match["port"]) if match["port"] else None,
                          int(match["limit"]) if match["limit"] else default))
    return hosts


def slots(hosts: list[Host]) -> int:
    return sum(host.slots for host in hosts)


def make_env(env: dict[str, str], *, uses_ccache: bool, distcc_log: Path) -> dict[str, str]:
    """What make's environment gains: ccache's remote storage, and distcc's hosts and log (behind ccache
    through CCACHE_PREFIX, so a cache hit never leaves the machine)."""
    extra = {}
    if uses_ccache and (urls := remote_storage(env)):
        extra["CCACHE_REMOTE_STORAGE"] = urls
    if distcc_hosts(env):
        # DISTCC_NO_REWRITE_CROSS: keep "gcc" as it is named; the rewritten name reaches the image (toolchain.py)
        extra |= {"DISTCC_HOSTS": env[DISTCC_HOSTS_ENV].strip(), "DISTCC_LOG": str(distcc_log),
                  "DISTCC_NO_REWRITE_CROSS": "1"}
        if uses_ccache:
            extra["CCACHE_PREFIX"] = "distcc"
    return extra


def engine_record(env: dict[str, str], distcc_log: Path) -> dict:
    """Which engine compiled: "local", or "distcc" with the objects each host compiled (from distcc's log)."""
    hosts = distcc_hosts(env)
    if not hosts:
        return {"compile": "local"}
    counts: Counter[str] = Counter()
    fallbacks = 0
    if distcc_log.is_file():
        for line in distcc_log.read_text(errors="replace").splitlines():
            if match := COMPILED_RE.search(line):
                counts[match["host"]] += 1
            elif FALLBACK_RE.search(line):
                fallbacks += 1
    return {"compile": "distcc", "hosts": env[DISTCC_HOSTS_ENV].strip(), "slots": slots(hosts),
            "objects": dict(sorted(counts.items())), "local_fallbacks": fallbacks}
