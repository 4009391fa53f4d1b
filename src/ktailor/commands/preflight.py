"""Pre-flight of a kernel upgrade: configure every target on the new version and say, before
anything is built, which requested options no longer land (and which land now) compared with the
version it replaces.

The config stage runs through the doit graph (`doit config:<target>[@version]`), so download,
extraction and the audit are exactly what a later build will use. The comparison reads the two
versions' audit.json files (build/<version>/<target>/audit.json, `differences` entries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ktailor.commands.runner import run_doit, task_name
from ktailor.core.records import read_optional
from ktailor.kconfig.configdiff import Change, MustStay, error_count, render_changes, target_drift
from ktailor.kconfig.configdiff import to_json as drift_json
from ktailor.project.layout import Project


@dataclass
class TargetPreflight:
    target: str
    audit: str  # passed | failed | missing (config did not get as far as the audit)
    compared_with: str | None  # the old version whose audit.json was read, or None when it has none
    no_longer_land: list[dict] = field(default_factory=list)
    now_land: list[dict] = field(default_factory=list)
    drift: list[Change] = field(default_factory=list)  # unrequested changes of the whole .config
    must_stay_missing: list[MustStay] = field(default_factory=list)
    drift_compared: bool = False  # both versions had a final .config to compare
    root_causes: list[str] = field(default_factory=list)  # the new audit's grouped causes, as sentences

    @property
    def drift_errors(self) -> int:
        return error_count(self.drift, self.must_stay_missing)

    def to_json(self) -> dict:
        return {"target": self.target, "audit": self.audit, "compared_with": self.compared_with,
                "no_longer_land": self.no_longer_land, "now_land": self.now_land,
                "config_drift": drift_json(self.drift, self.must_stay_missing) if self.drift_compared else None,
                "root_causes": self.root_causes}


@dataclass
class Preflight:
    old_version: str
    new_version: str
    returncode: int  # of `doit config:…`
    targets: list[TargetPreflight]

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and all(t.audit == "passed" and not t.drift_errors for t in self.targets)

    def to_json(self) -> dict:
        return {"ok": self.ok, "old_version": self.old_version, "new_version": self.new_version,
                "doit_returncode": self.returncode, "targets": [t.to_json() for t in self.targets]}


def compare_audits(old: dict | None, new: dict) -> tuple[list[dict], list[dict]]:
    """(differences only the new audit has, differences only the old one had), keyed by symbol and final value."""
    def keyed(audit: dict | None) -> dict[tuple[str, str], dict]:
        return {(d["symbol"], d["final"]): d for d in (audit or {}).get("differences", [])}

    before, after = keyed(old), keyed(new)
    return [d for k, d in after.items() if k not in before], [d for k, d in before.items() if k not in after]


def run_preflight(root: Path, new_version: str, old_version: str, env: dict[str, str] | None = None) -> Preflight:
    """`doit config` for every target of `new_version`, then compare each audit with `old_version`'s."""
    project = Project.from_env(root) if env is None else Project(root.resolve(), env)
    kernel = project.versions.get(new_version)
    default = project.versions.default.version
    tasks = [task_name("config", target, kernel.version, default) for target in kernel.targets]
    result = run_doit(root, "--continue", *tasks, env=env)
    targets = []
    for name in kernel.targets:
        row = project.catalog.targets[name]
        new_audit = read_optional(project.artifacts(kernel, row).audit)
        old_audit = read_optional(project.artifacts_of(old_version, name).audit)
        if new_audit is None:
            targets.append(TargetPreflight(name, "missing", old_version if old_audit else None))
            continue
        no_longer, now = compare_audits(old_audit, new_audit)
        drifted = target_drift(project, row, old_version, kernel)
        changes, missing = drifted if drifted is not None else ([], [])
        targets.append(TargetPreflight(name, str(new_audit.get("status", "failed")), old_version if old_audit else None,
                                       no_longer, now, changes, missing, drifted is not None,
                                       [c.get("summary", "") for c in new_audit.get("root_causes", [])]))
    return Preflight(old_version, new_version, result.returncode, targets)


def render_preflight(preflight: Preflight) -> str:
    """What changed for each target, in words, for the terminal."""
    old, new = preflight.old_version, preflight.new_version
    lines = [f"pre-flight {old} → {new}: configured {len(preflight.targets)} target(s), "
             + ("every requested option lands and nothing that must stay was lost." if preflight.ok
                else "PROBLEMS, see below.")]
    for target in preflight.targets:
        if target.audit == "missing":
            lines.append(f"  {target.target}: the config stage did not finish (see the doit output above); nothing to compare.")
            continue
        if target.drift_compared:
            lines.append(f"  {target.target}: whole .config {old} → {new}:")
            lines += ["  " + line for line in render_changes(old, new, target.drift, target.must_stay_missing).splitlines()]
        if not target.no_longer_land and not target.now_land:
            fate = "no option changed its fate" if target.compared_with else f"no audit of {old} here to compare with"
            lines.append(f"  {target.target}: audit {target.audit}; {fate}.")
            continue
        base = f"compared with {old}" if target.compared_with else f"no audit of {old} here, so every difference is listed"
        lines.append(f"  {target.target}: audit {target.audit} ({base}):")
        lines += [f"    root cause: {summary}" for summary in target.root_causes]
        for difference in target.no_longer_land:
            expected = " (declared in expected-drops.toml)" if difference.get("status") == "expected" else ""
            lines.append(f"    no longer lands: CONFIG_{difference['symbol']} requested {difference['requested']}, "
                         f"final {difference['final']} ({difference.get('where', '?')}){expected}")
            if difference.get("explanation"):
                lines.append(f"      why: {difference['explanation']}")
            if difference.get("fix"):
                lines.append(f"      fix: add {' '.join(difference['fix'])}")
        for difference in target.now_land:
            lines.append(f"    lands now:       CONFIG_{difference['symbol']} (was {difference['final']} on {old})")
    return "\n".join(lines)
