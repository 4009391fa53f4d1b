"""Kernel CVEs from the kernel CNA's vulns repository, and which of them apply to a tailored kernel.

Data: `cve/published/<year>/CVE-*.json` (CVE JSON 5 records) of
https://git.kernel.org/pub/scm/linux/security/vulns.git, a local clone of it, or an internal mirror
(`--vulns` / KTAILOR_VULNS). Each record's `containers.cna.affected[]` has
- an entry with `defaultStatus: "unaffected"` whose semver versions are the affected ranges of the
  stable branches a buggy commit was backported to (`{"version": "6.1.43", "lessThan": "6.1.78",
  "status": "affected"}`), and
- an entry with `defaultStatus: "affected"` whose semver versions say where it is *not* affected:
  before it was introduced (`{"version": "0", "lessThan": "6.5"}`), from the first fixed release of
  a stable series (`{"version": "6.6.17", "lessThanOrEqual": "6.6.*"}`), and from the mainline fix on
  (`{"version": "6.8", "lessThanOrEqual": "*", "versionType": "original_commit_for_fix"}`).
Both carry `programFiles`, the files the fix touches: a CVE applies to a target when one of them was
compiled into it (compiled.py). Older records name no files: whether those apply cannot be told, so they
are reported as unknown, never as not applicable. CVSS comes from `metrics[].cvssV3_1` where the CNA
scored it.

A version's status follows the CVE JSON 5 rules (cve-schema `docs/versions.md`): a version item is one
version (`version` alone) or a range up to `lessThan` (exclusive) or `lessThanOrEqual` (inclusive), where a
`*` in a bound is infinity ("6.1.*": the whole 6.1 series, "*": no bound), optionally with `changes`; a
version no item of an entry matches takes that entry's `defaultStatus`. Where items overlap, or entries
disagree, the worse status wins: affected, then unknown, then unaffected — so an `unknown` range is never
read as unaffected. A missing `defaultStatus` means unknown in the schema; such an entry speaks only through
its listed versions (an unlisted version is not reported), else every kernel would list every such CVE.
Git ranges (`versionType: git`) name commits, not releases, and are skipped. Parsing is tolerant: a
record without usable version data is counted as unparsed, never guessed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ktailor.core.errors import EnvironmentProblem, InputError
from ktailor.core.progress import info
from ktailor.farm.compiled import Compiled

DEFAULT_VULNS = "https://git.kernel.org/pub/scm/linux/security/vulns.git"
# a stalled server (under 1 kB/s for a minute) fails the fetch instead of hanging the nightly job
GIT = ("git", "-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=60")
SEVERITIES = ("NONE", "LOW", "MEDIUM", "HIGH", "CRITICAL")
STATUSES = ("affected", "unknown", "unaffected")  # worst first: where statuses meet, the first one wins
Version = tuple[int, int, int, int]  # major, minor, patch, 0 for an -rc (before the release) else 1
INFINITY = 1 << 30  # a `*` in an upper bound: above every version number
NO_LOWER_BOUND: Version = (0, 0, 0, 0)  # `"version": "0"`


def version_key(text: str) -> Version | None:
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?(-rc\d+)?", text.strip())
    if not match:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0), 0 if match[4] else 1


def _lower(text: str) -> Version | None:
    return NO_LOWER_BOUND if text.strip() == "0" else version_key(text)


def _upper(text: str) -> Version | None:
    """An upper bound: a version, or one ending in `*` ("6.1.*", "6.*", "*")."""
    match = re.fullmatch(r"(\d+\.)?(\d+\.)?\*", text.strip())
    if not match:
        return version_key(text)
    numbers = [int(group[:-1]) for group in match.groups() if group] + [INFINITY] * 4
    return numbers[0], numbers[1], numbers[2], numbers[3]


def _key(version: str | Version) -> Version:
    key = version_key(version) if isinstance(version, str) else version
    if key is None:
        raise InputError(f"{version!r} is not a kernel version (like 6.1.192).")
    return key


def _worst(statuses: Iterable[str | None]) -> str | None:
    found = set(statuses)
    return next((status for status in STATUSES if status in found), None)


@dataclass(frozen=True)
class Span:
    """One item of an entry's `versions`: one version, or a range with its status changes."""

    status: str
    low: Version
    high: Version
    inclusive: bool  # lessThanOrEqual (or a single version) rather than lessThan
    changes: tuple[tuple[Version, str], ...] = ()  # (at, status), sorted

    def status_of(self, version: Version) -> str | None:
        """The status this item gives `version`, None when it does not match it."""
        if version < self.low or version > self.high or (version == self.high and not self.inclusive):
            return None
        status = self.status
        for at, changed in self.changes:
            if at <= version:
                status = changed
        return status

    def fixes(self, series: tuple[int, int]) -> list[Version]:
        """Releases of `series` from which this item says the bug is gone."""
        found = [at for at, status in self.changes if status == "unaffected" and at[:2] == series]
        if self.status == "unaffected" and self.low[:2] == series and self.high >= (*series, INFINITY, INFINITY):
            found.append(self.low)  # from here to the end of the series
        if self.status == "affected" and not self.inclusive and self.low[:2] == series == self.high[:2] \
                and INFINITY not in self.high:
            found.append(self.high)  # a stable backport's range, fixed at its end
        return found


@dataclass(frozen=True)
class Product:
    """One entry of `affected[]`: its version items and its `defaultStatus`."""

    spans: tuple[Span, ...]
    default: str | None  # None: defaultStatus missing or "unknown", so unlisted versions are not reported

    def status(self, version: Version) -> str | None:
        return _worst(span.status_of(version) for span in self.spans) or self.default


@dataclass(frozen=True)
class Cve:
    id: str
    title: str
    files: frozenset[str]  # programFiles; empty when the record names none
    score: float | None
    severity: str  # one of SEVERITIES, or "" when not scored
    products: tuple[Product, ...] = ()

    def status(self, version: str | Version) -> str:
        """affected, unaffected or unknown, as the record says of `version`."""
        key = _key(version)
        return _worst(product.status(key) for product in self.products) or "unaffected"

    def affects(self, version: str | Version) -> bool:
        return self.status(version) == "affected"

    def fixed_in(self, series: tuple[int, int]) -> str | None:
        """The release of `series` from which the record says it is unaffected, when it records one (the
        latest such release, and only one the record itself calls unaffected)."""
        candidates = [at for product in self.products for span in product.spans for at in span.fixes(series)]
        fixed = [at for at in candidates if self.status(at) == "unaffected"]
        return _text(max(fixed)) if fixed else None

    @property
    def rank(self) -> int:
        return SEVERITIES.index(self.severity) if self.severity in SEVERITIES else -1


def _text(version: Version) -> str:
    major, minor, patch, release = version
    base = f"{major}.{minor}" + (f".{patch}" if patch else "")
    return base if release else base + "-rc"


def parse_record(data: dict) -> Cve | None:
    """One CVE JSON 5 record; None when it is not a published Linux record with usable versions."""
    meta = data.get("cveMetadata") or {}
    if meta.get("state", "PUBLISHED") != "PUBLISHED":
        return None
    cve_id = meta.get("cveId") or meta.get("cveID")
    cna = (data.get("containers") or {}).get("cna") or {}
    if not cve_id:
        return None
    entries = cna.get("affected") or []
    products = tuple(_product(entry) for entry in entries)
    if not any(product.spans or product.default == "affected" for product in products):
        return None
    files = frozenset(name for entry in entries for name in entry.get("programFiles") or [])
    score, severity = None, ""
    for metric in cna.get("metrics") or []:
        cvss = metric.get("cvssV3_1") or metric.get("cvssV3_0") or metric.get("cvssV4_0")
        if cvss and cvss.get("baseSeverity"):
            score, severity = cvss.get("baseScore"), str(cvss["baseSeverity"]).upper()
            break
    return Cve(str(cve_id), str(cna.get("title", "")), files, score, severity, products)


def _product(entry: dict) -> Product:
    spans = (_span(item) for item in entry.get("versions") or [])
    default = entry.get("defaultStatus")
    return Product(tuple(span for span in spans if span), default if default in ("affected", "unaffected") else None)


def _span(item: dict) -> Span | None:
    """One version item; None for a git range (commit ids) or one that cannot be read."""
    status, low = item.get("status"), _lower(str(item.get("version", "")))
    if item.get("versionType") == "git" or status not in STATUSES or low is None:
        return None
    if "lessThan" in item:
        high, inclusive = _upper(str(item["lessThan"])), False
    elif "lessThanOrEqual" in item:
        high, inclusive = _upper(str(item["lessThanOrEqual"])), True
    else:
        high, inclusive = low, True  # a single version: exactly that one
    changes = _changes(item)
    if high is None or changes is None:
        return None
    return Span(str(status), low, high, inclusive, changes)


def _changes(item: dict) -> tuple[tuple[Version, str], ...] | None:
    """A range's status changes, sorted (the schema asks readers to sort them); None if one cannot be read."""
    changes = []
    for change in item.get("changes") or []:
        at, status = _lower(str(change.get("at", ""))), change.get("status")
        if at is None or status not in STATUSES:
            return None
        changes.append((at, str(status)))
    return tuple(sorted(changes))


@dataclass
class Database:
    cves: list[Cve]
    unparsed: int
    source: str  # where the records came from (path or URL, and the commit when known)

    def affecting(self, version: str) -> list[Cve]:
        return [c for c in self.cves if c.affects(version)]

    def unknown_at(self, version: str) -> list[Cve]:
        """The CVEs whose record leaves the status of `version` unknown."""
        return [c for c in self.cves if c.status(version) == "unknown"]

    def fixed_between(self, old: str, new: str) -> list[Cve]:
        return [c for c in self.cves if c.affects(old) and c.status(new) == "unaffected"]


def load_database(root: Path, source: str = "") -> Database:
    published = root / "cve" / "published"
    if not published.is_dir():
        raise InputError(f"{root} has no cve/published/ directory; it is not a clone of the kernel CNA's vulns "
                         f"repository ({DEFAULT_VULNS}). Point --vulns or KTAILOR_VULNS at one.")
    cves, unparsed = [], 0
    for path in sorted(published.glob("*/CVE-*.json")):
        try:
            record = parse_record(json.loads(path.read_text(errors="replace")))
        except (ValueError, AttributeError, TypeError):
            record = None
        if record is None:
            unparsed += 1
        else:
            cves.append(record)
    return Database(cves, unparsed, source or str(root))


# --- where the records come from ------------------------------------------------------------


def _is_local(spec: str) -> bool:
    return not re.match(r"^[a-z+]+://|^[\w.-]+@[\w.-]+:", spec)


@functools.cache
def vulns_checkout(spec: str, cache_dir: Path) -> tuple[Path, str]:
    """A checkout of the vulns repository: a local directory as it is, or a URL cloned (shallow) into
    the cache and fetched at most once per run. Returns (path, description with the commit)."""
    if _is_local(spec):
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise InputError(f"--vulns/KTAILOR_VULNS names {spec}, which is not a directory; give a clone of "
                             f"{DEFAULT_VULNS} or its URL.")
        return path, f"{path}{_commit_note(path)}"
    target = cache_dir / "vulns" / hashlib.sha256(spec.encode()).hexdigest()[:16]
    if (target / ".git").is_dir():
        info(f"updating the CVE records from {spec}")
        steps = [[*GIT, "-C", str(target), "fetch", "--depth", "1", "-q", "origin"],
                 [*GIT, "-C", str(target), "reset", "-q", "--hard", "FETCH_HEAD"]]
    else:
        info(f"fetching the CVE records from {spec} (shallow clone into {target})")
        target.parent.mkdir(parents=True, exist_ok=True)
        steps = [[*GIT, "clone", "-q", "--depth", "1", spec, str(target)]]
    for argv in steps:
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise EnvironmentProblem(
                f"could not fetch the CVE records from {spec} ({' '.join(argv[5:8])}…: "
                f"{(result.stderr or result.stdout).strip().splitlines()[-1:] or ['no output']}); without network, point "
                "--vulns or KTAILOR_VULNS at a local clone or an internal mirror of the vulns repository.")
    return target, f"{spec}{_commit_note(target)}"


def _commit_note(path: Path) -> str:
    result = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h %cs"], capture_output=True, text=True)
    return f" at {result.stdout.strip()}" if result.returncode == 0 and result.stdout.strip() else ""


def vulns_spec(explicit: str | None, env: dict[str, str]) -> str:
    return explicit or env.get("KTAILOR_VULNS") or DEFAULT_VULNS


def open_database(explicit: str | None, env: dict[str, str], cache_dir: Path) -> Database:
    path, source = vulns_checkout(vulns_spec(explicit, env), cache_dir)
    return _load_cached(path.resolve(), source)


@functools.cache
def _load_cached(path: Path, source: str) -> Database:
    return load_database(path, source)


# --- exposure of one kernel ------------------------------------------------------------------


@dataclass
class Exposure:
    """The CVEs a kernel's version is exposed to, split by what that kernel compiled."""

    target: str
    version: str
    applicable: list[Cve] = field(default_factory=list)  # affected, the fix touches code compiled in
    not_applicable: list[Cve] = field(default_factory=list)  # affected, none of the files it names compiled in
    # cannot be told: affected but the record names no files, or the record leaves this version's status unknown
    unknown: list[Cve] = field(default_factory=list)

    def count_at_least(self, severity: str) -> int:
        floor = SEVERITIES.index(severity)
        return sum(c.rank >= floor for c in self.applicable)

    @property
    def affecting(self) -> int:
        return len(self.applicable) + len(self.not_applicable) + len(self.unknown)


def split(cves: list[Cve], compiled: Compiled) -> tuple[list[Cve], list[Cve]]:
    """(applicable: the fix touches code compiled in, not applicable: none of its files is), applicable ones
    worst first. A CVE whose record names no files is in neither (see unknown_of)."""
    applicable = [c for c in cves if compiled.touched(c.files)]
    not_applicable = [c for c in cves if c.files and not compiled.touched(c.files)]
    applicable.sort(key=lambda c: (-c.rank, -(c.score or 0), c.id))
    return applicable, not_applicable


def unknown_of(cves: list[Cve]) -> list[Cve]:
    """The CVEs whose record names no files, so whether a kernel compiles their code cannot be told."""
    return [c for c in cves if not c.files]


def exposure(database: Database, target: str, version: str, compiled: Compiled) -> Exposure:
    affecting = database.affecting(version)
    applicable, not_applicable = split(affecting, compiled)
    unknown = sorted(unknown_of(affecting) + database.unknown_at(version), key=lambda c: c.id)
    return Exposure(target, version, applicable, not_applicable, unknown)


def series_of(version: str) -> tuple[int, int]:
    key = version_key(version)
    if key is None:
        raise InputError(f"{version!r} is not a kernel version (like 6.1.192).")
    return key[0], key[1]


def cve_json(cve: Cve, compiled: Compiled, series: tuple[int, int]) -> dict:
    return {"id": cve.id, "title": cve.title, "severity": cve.severity or "unscored", "score": cve.score,
            "files": sorted(compiled.touched(cve.files)), "fixed_in": cve.fixed_in(series)}


def exposure_json(found: Exposure, compiled: Compiled, source: str) -> dict:
    series = series_of(found.version)
    return {"target": found.target, "version": found.version, "records": source,
            "affecting": found.affecting,
            "applicable": [cve_json(c, compiled, series) for c in found.applicable],
            "not_applicable": len(found.not_applicable), "unknown": len(found.unknown)}


def render_exposure(found: Exposure, compiled: Compiled, source: str, limit: int = 40) -> str:
    series = series_of(found.version)
    lines = [_summary(found), f"  records: {source}"]
    for cve in found.applicable[:limit]:
        entry = cve_json(cve, compiled, series)
        fixed = f"fixed in {entry['fixed_in']}" if entry["fixed_in"] else "no fix in this series yet"
        lines.append(f"  {cve.id:16} {entry['severity']:9} {fixed:24} {', '.join(entry['files'][:3])}"
                     + (f" (+{len(entry['files']) - 3})" if len(entry["files"]) > 3 else ""))
    if len(found.applicable) > limit:
        lines.append(f"  … and {len(found.applicable) - limit} more (--json lists all)")
    return "\n".join(lines)


def _summary(found: Exposure) -> str:
    counts = [f"{n} {s.lower()}" for s in reversed(SEVERITIES) if (n := sum(c.severity == s for c in found.applicable))]
    counts.append(f"{sum(not c.severity for c in found.applicable)} unscored")
    unknown = (f", {len(found.unknown)} cannot be told (their record names no files, or leaves this version's "
               "status unknown)") if found.unknown else ""
    return (f"{found.target} on Linux {found.version}: {found.affecting} CVEs affect this version; "
            f"{len(found.applicable)} touch code compiled into this kernel ({', '.join(counts)}), "
            f"{len(found.not_applicable)} do not (their files are not compiled in){unknown}.")
