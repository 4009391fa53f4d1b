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
compiled into it (compiled.py). CVSS comes from `metrics[].cvssV3_1` where the CNA scored it.
Parsing is tolerant: a record without usable version data is counted as unparsed, never guessed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .compiled import Compiled
from .errors import EnvironmentProblem, InputError
from .progress import info

DEFAULT_VULNS = "https://git.kernel.org/pub/scm/linux/security/vulns.git"
# a stalled server (under 1 kB/s for a minute) fails the fetch instead of hanging the nightly job
GIT = ("git", "-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=60")
SEVERITIES = ("NONE", "LOW", "MEDIUM", "HIGH", "CRITICAL")
Version = tuple[int, int, int, int]  # major, minor, patch, 0 for an -rc (before the release) else 1


def version_key(text: str) -> Version | None:
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?(-rc\d+)?", text.strip())
    if not match:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0), 0 if match[4] else 1


@dataclass(frozen=True)
class Rule:
    """Where the default-affected entry says the kernel is unaffected."""

    low: Version
    below: Version | None = None  # lessThan (exclusive)
    series: tuple[int, int] | None = None  # lessThanOrEqual "6.6.*": the rest of that series
    # neither: lessThanOrEqual "*": every version from `low` on

    def covers(self, version: Version) -> bool:
        if self.below is not None:
            return self.low <= version < self.below
        if self.series is not None:
            return version[:2] == self.series and version >= self.low
        return version >= self.low


@dataclass(frozen=True)
class Cve:
    id: str
    title: str
    files: frozenset[str]
    score: float | None
    severity: str  # one of SEVERITIES, or "" when not scored
    backports: tuple[tuple[Version, Version], ...] = ()  # affected [from, to) ranges on stable branches
    default_affected: bool = False  # there is a defaultStatus "affected" entry, with these exceptions:
    unaffected: tuple[Rule, ...] = ()

    def affects(self, version: str | Version) -> bool:
        key = version_key(version) if isinstance(version, str) else version
        if key is None:
            raise InputError(f"{version!r} is not a kernel version (like 6.1.192).")
        if any(low <= key < high for low, high in self.backports):
            return True
        return self.default_affected and not any(rule.covers(key) for rule in self.unaffected)

    def fixed_in(self, series: tuple[int, int]) -> str | None:
        """The first release of `series` without the bug, when the CNA records one."""
        for rule in self.unaffected:
            if rule.series == series or (rule.series is None and rule.below is None and rule.low[:2] == series):
                return _text(rule.low)
        for low, high in self.backports:
            if low[:2] == series and high[:2] == series:
                return _text(high)
        return None

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
    files: set[str] = set()
    backports: list[tuple[Version, Version]] = []
    rules: list[Rule] = []
    default_affected = False
    for entry in cna.get("affected") or []:
        files.update(entry.get("programFiles") or [])
        affected_default = entry.get("defaultStatus") == "affected"
        default_affected |= affected_default
        for item in entry.get("versions") or []:
            if item.get("versionType") == "git":
                continue
            low = version_key(str(item.get("version", "")))
            if low is None and str(item.get("version")) == "0":
                low = (0, 0, 0, 1)
            if low is None:
                continue
            status = item.get("status")
            if status == "affected" and not affected_default and "lessThan" in item:
                high = version_key(str(item["lessThan"]))
                if high is not None:
                    backports.append((low, high))
            elif status == "unaffected" and affected_default:
                rule = _rule(low, item)
                if rule is not None:
                    rules.append(rule)
    if not backports and not default_affected:
        return None
    score, severity = None, ""
    for metric in cna.get("metrics") or []:
        cvss = metric.get("cvssV3_1") or metric.get("cvssV3_0") or metric.get("cvssV4_0")
        if cvss and cvss.get("baseSeverity"):
            score, severity = cvss.get("baseScore"), str(cvss["baseSeverity"]).upper()
            break
    return Cve(str(cve_id), str(cna.get("title", "")), frozenset(files), score, severity, tuple(backports),
               default_affected, tuple(rules))


def _rule(low: Version, item: dict) -> Rule | None:
    if "lessThan" in item:
        below = version_key(str(item["lessThan"]))
        return Rule(low, below=below) if below else None
    bound = str(item.get("lessThanOrEqual", ""))
    if bound == "*":
        return Rule(low)
    match = re.fullmatch(r"(\d+)\.(\d+)\.\*", bound)
    return Rule(low, series=(int(match[1]), int(match[2]))) if match else None


@dataclass
class Database:
    cves: list[Cve]
    unparsed: int
    source: str  # where the records came from (path or URL, and the commit when known)

    def affecting(self, version: str) -> list[Cve]:
        return [c for c in self.cves if c.affects(version)]

    def fixed_between(self, old: str, new: str) -> list[Cve]:
        return [c for c in self.cves if c.affects(old) and not c.affects(new)]


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
    target: str
    version: str
    applicable: list[Cve] = field(default_factory=list)
    not_applicable: list[Cve] = field(default_factory=list)

    def count_at_least(self, severity: str) -> int:
        floor = SEVERITIES.index(severity)
        return sum(c.rank >= floor for c in self.applicable)


def split(cves: list[Cve], compiled: Compiled) -> tuple[list[Cve], list[Cve]]:
    """(applicable: the fix touches code compiled in, not applicable), applicable ones worst first."""
    applicable = [c for c in cves if compiled.touched(c.files)]
    not_applicable = [c for c in cves if not compiled.touched(c.files)]
    applicable.sort(key=lambda c: (-c.rank, -(c.score or 0), c.id))
    return applicable, not_applicable


def exposure(database: Database, target: str, version: str, compiled: Compiled) -> Exposure:
    applicable, not_applicable = split(database.affecting(version), compiled)
    return Exposure(target, version, applicable, not_applicable)


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
            "affecting": len(found.applicable) + len(found.not_applicable),
            "applicable": [cve_json(c, compiled, series) for c in found.applicable],
            "not_applicable": len(found.not_applicable)}


def render_exposure(found: Exposure, compiled: Compiled, source: str, limit: int = 40) -> str:
    series = series_of(found.version)
    counts = {s: sum(c.severity == s for c in found.applicable) for s in reversed(SEVERITIES)}
    unscored = sum(not c.severity for c in found.applicable)
    lines = [f"{found.target} on Linux {found.version}: {len(found.applicable) + len(found.not_applicable)} CVEs "
             f"affect this version; {len(found.applicable)} touch code compiled into this kernel ("
             + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) + (", " if any(counts.values()) else "")
             + f"{unscored} unscored), {len(found.not_applicable)} do not (their files are not compiled in).",
             f"  records: {source}"]
    for cve in found.applicable[:limit]:
        entry = cve_json(cve, compiled, series)
        fixed = f"fixed in {entry['fixed_in']}" if entry["fixed_in"] else "no fix in this series yet"
        lines.append(f"  {cve.id:16} {entry['severity']:9} {fixed:24} {', '.join(entry['files'][:3])}"
                     + (f" (+{len(entry['files']) - 3})" if len(entry["files"]) > 3 else ""))
    if len(found.applicable) > limit:
        lines.append(f"  … and {len(found.applicable) - limit} more (--json lists all)")
    return "\n".join(lines)
