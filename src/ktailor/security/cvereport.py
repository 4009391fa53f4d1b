"""CVE exposure of the project's kernels: `invoke cves`, the install's VEX, and what an upgrade fixes.

Glue between the records (cves.py), what each build compiled (compiled.py, `sources.json`) and the
project's layout. An installed kernel is judged by the `sources.json` in its install directory, a
built one by the one beside its build.
"""

from __future__ import annotations

import json

from ktailor.core.errors import InputError, KtailorError
from ktailor.core.progress import warn
from ktailor.core.records import read_optional, sha256_of, write_json_atomically
from ktailor.farm.compiled import Compiled, read_sources
from ktailor.project.layout import Project
from ktailor.project.targets import Target
from ktailor.project.versions import Kernel
from ktailor.security.cves import SEVERITIES, Database, exposure, exposure_json, open_database, render_exposure, split, unknown_of
from ktailor.security.vex import openvex


def compiled_of(project: Project, kernel: Kernel, target: Target) -> tuple[Compiled, str]:
    """What this kernel compiled, preferring the installed copy; (compiled, where it was read)."""
    installed = project.artifacts(kernel, target).installed_sources
    path = installed if installed.is_file() else project.artifacts(kernel, target).sources
    return read_sources(path), str(project.display(path))


def cves_command(project: Project, *, target: str, version: str | None, vulns: str | None, as_json: bool,
                 fail_on: str = "") -> tuple[str, int]:
    """The exposure of one target's kernel: (text or JSON, how many applicable CVEs reach `fail_on`)."""
    if fail_on and fail_on not in SEVERITIES[1:]:
        raise InputError(f"--fail-on {fail_on.lower()!r} is not a severity; use critical, high, medium or low.")
    kernel = project.versions.get_or_default(version)
    row = project.catalog.target(target)
    compiled, where = compiled_of(project, kernel, row)
    database = open_database(vulns, project.env, project.cache_dir)
    found = exposure(database, row.name, kernel.version, compiled)
    over = found.count_at_least(fail_on) if fail_on else 0
    if as_json:
        return json.dumps(exposure_json(found, compiled, database.source) | {"compiled_files_from": where}, indent=2), over
    return render_exposure(found, compiled, database.source) + f"\n  compiled files: {where}", over


def write_vex(project: Project, kernel: Kernel, target: Target) -> str | None:
    """Write the OpenVEX document of the build about to be installed, from *its* sources.json (never an
    earlier install's), dated by the build so the same inputs give the same document; None on success,
    else why it was not written (the install goes on: a kernel is not less safe for lacking the document)."""
    files = project.artifacts(kernel, target)
    try:
        compiled = read_sources(files.sources)
        database = open_database(None, project.env, project.cache_dir)
    except KtailorError as exc:
        warn(f"{target.name} {kernel.version}: no VEX document: {exc}")
        files.vex.unlink(missing_ok=True)  # an older build's document must not be installed with this one
        return str(exc)
    found = exposure(database, target.name, kernel.version, compiled)
    built_at = (read_optional(files.build_json) or {}).get("finished_at")
    document = openvex(found, compiled, config_sha256=sha256_of(files.config), source=database.source,
                       timestamp=built_at)
    write_json_atomically(files.vex, document)
    return None


def upgrade_fixes(database: Database, project: Project, kernel: Kernel, new_version: str) -> dict:
    """The CVEs fixed between a tracked kernel and `new_version`, split per target by what it compiled."""
    fixed = database.fixed_between(kernel.version, new_version)
    targets: dict[str, dict] = {}
    for name in kernel.targets:
        row = project.catalog.targets[name]
        try:
            compiled, _ = compiled_of(project, kernel, row)
        except KtailorError as exc:
            targets[name] = {"error": str(exc)}
            continue
        applicable, not_applicable = split(fixed, compiled)
        targets[name] = {"applicable": [c.id for c in applicable], "not_applicable": len(not_applicable),
                         "unknown": len(unknown_of(fixed)),
                         "applicable_high": sum(c.rank >= 3 for c in applicable),
                         "highest": applicable[0].severity or "unscored" if applicable else None}
    return {"from": kernel.version, "to": new_version, "fixed": len(fixed), "records": database.source,
            "targets": targets}


def describe_fixes(cves: dict) -> str:
    """"6.1.192 → 6.1.193 fixes N CVEs; M touch code compiled into x86_64-micro, K of them high or critical"."""
    parts = []
    for name, entry in cves["targets"].items():
        if "error" in entry:
            parts.append(f"{name}: unknown ({entry['error']})")
        else:
            parts.append(f"{len(entry['applicable'])} touch code compiled into {name}, "
                         f"{entry['applicable_high']} of them high or critical")
    return f"{cves['from']} → {cves['to']} fixes {cves['fixed']} CVEs; " + "; ".join(parts)


def installed_exposure(database: Database, project: Project, versions: list[str], targets: list[str],
                       severity: str) -> dict[str, dict]:
    """Per target of a tracked kernel: the version installed in the prefix (the first of `versions` that has
    a manifest there) and its applicable CVEs of at least `severity`, judged by the sources.json installed
    with it. Targets with nothing installed are left out."""
    floor = SEVERITIES.index(severity)
    found: dict[str, dict] = {}
    for name in targets:
        for version in versions:
            files = project.artifacts_of(version, name)
            if read_optional(files.manifest) is None:
                continue
            result = exposure(database, name, version, read_sources(files.installed_sources))
            found[name] = {"version": version, "cves": [c.id for c in result.applicable if c.rank >= floor]}
            break
    return found
