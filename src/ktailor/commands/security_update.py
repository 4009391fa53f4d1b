"""`invoke security-update`: are the tracked kernels still patched upstream, and if not, patch them.

For every kernel in versions.toml, kernel.org's releases.json says whether its series has a newer
point release, and whether the series is end-of-life (marked iseol, or no longer listed: then the
next longterm series to move to is named, loudly). With apply, each newer point release goes
through `upgrade` (signed checksum, pre-flight) and then the whole doit graph for that kernel's
targets (build, verify, boot when the tree has a boot stage); only when every check of every
target passed does `doit install` put it into the prefix. A kernel whose version is already
current but is not installed in the prefix (an earlier night failed) is built and installed too,
so a failure keeps reporting until it is fixed.

The result is printed for humans and written as JSON (default build/security-update.json). The
exit code is the worst outcome over all kernels (EXIT_* below, worst first: 2, 1, 30, 20, 40, 10, 0).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from ktailor.commands.preflight import render_preflight, run_preflight
from ktailor.commands.runner import run_doit, task_name
from ktailor.commands.update_report import (
    EXIT_END_OF_LIFE,
    EXIT_EXPOSED,
    EXIT_NAMES,
    EXIT_UP_TO_DATE,
    EXIT_UPDATED,
    FAIL_ON,
    KernelReport,
    describe,
    describe_forecast,
    end_of_life_banner,
    worst,
)
from ktailor.commands.upgrade import upgrade
from ktailor.core.errors import (
    EXIT_BAD_INPUT,
    EXIT_CHECK_FAILED,
    EXIT_UNREACHABLE,
    DownloadError,
    KtailorError,
    exit_code_for,
)
from ktailor.core.locks import holding_build_dir
from ktailor.core.progress import info, warn
from ktailor.core.records import write_json_atomically
from ktailor.project.layout import Project
from ktailor.project.versions import Kernel, parse_version
from ktailor.security.cvereport import describe_fixes
from ktailor.security.evidence import ALLOW_UNACCEPTED_ENV, ALLOW_UNBOOTED_ENV, allow_unbooted, status_of
from ktailor.sources.releases import (
    RELEASES_URL_ENV,
    Release,
    fetch_releases,
    newest_on_mirror,
    next_longterm,
    series_of,
    series_status,
)
from ktailor.sources.releases import releases_url as resolve_releases_url
from ktailor.sources.signature import AUTOSIGNER_FINGERPRINT


def is_installed(project: Project, kernel: Kernel) -> bool:
    """Every target of this kernel is installed as this checkout would install it now (install.is_current,
    the same test as doit's install task: a fragment edit is rolled out by the next nightly run)."""
    from ktailor.stages.install import is_current

    return all(is_current(project, kernel, project.catalog.targets[name]) for name in kernel.targets)


def assess(project: Project, kernel: Kernel, releases: list[Release]) -> KernelReport:
    status = series_status(releases, kernel.series)
    latest, source = status.latest, "releases.json"
    problems = []
    if not status.listed:
        source = "mirror listing"
        try:
            latest = newest_on_mirror(kernel.mirror, kernel.series)
        except DownloadError as exc:
            source = "unknown"
            problems.append(f"the series is not in releases.json and the mirror's listing could not be read: {exc}")
    if latest is not None and parse_version(latest) < parse_version(kernel.version):
        problems.append(f"{source} says {latest} is the newest release of {kernel.series}, but versions.toml already "
                        f"has {kernel.version}: the source is stale or replayed, so nothing was changed. Check "
                        f"{RELEASES_URL_ENV} (or the mirror) against kernel.org.")
    move_to = next_longterm(releases, kernel.series) if status.eol else None
    report = KernelReport(kernel.version, kernel.series, status.listed, status.eol, latest, source,
                          move_to.version if move_to else None, is_installed(project, kernel), problems=problems)
    report.code = EXIT_END_OF_LIFE if report.eol else EXIT_UP_TO_DATE
    if latest is not None and parse_version(latest) < parse_version(kernel.version):
        report.code = EXIT_UNREACHABLE
    if report.update:
        report.action = "update available"
        report.code = worst([report.code, EXIT_UPDATED])
    return report


def build_and_install(project: Project, version: str, report: KernelReport) -> None:
    """`doit install` for every target of `version`: doit runs whatever stage is stale before it (build,
    verify, boot, …), and the install gate decides; this run only reports what the stages' results say."""
    from ktailor.stages.install import is_current

    kernel = project.versions.get(version)
    default = project.versions.default.version
    installs = [task_name("install", target, version, default) for target in kernel.targets]
    info(f"building, checking and installing {version}: doit {' '.join(installs)}")
    done = run_doit(project.root, "--continue", *installs, env=project.env)
    for name in kernel.targets:
        row = project.catalog.targets[name]
        files = project.artifacts(kernel, row)
        report.targets[name] = {"verify": status_of(files.verify), "boot": status_of(files.boot),
                                "accept": status_of(files.accept),
                                "installed": is_current(project, kernel, row)}
    if done.returncode != 0 or not all(t["installed"] for t in report.targets.values()):
        failed = [f"{name} (verify {t['verify']}, boot {t['boot']}, accept {t['accept']})" for name, t in report.targets.items()
                  if not t["installed"]]
        skipped = any(t["boot"] == "skipped" for t in report.targets.values())
        hint = (f" A skipped boot test blocks the install; install QEMU, or set {ALLOW_UNBOOTED_ENV}=1 to accept "
                "kernels that were not boot-tested." if skipped and not allow_unbooted(project.env) else "")
        if any(t["accept"] == "skipped" and t["boot"] != "skipped" for t in report.targets.values()):
            hint += (f" A skipped acceptance blocks the install; see accept.json for why, or set "
                     f"{ALLOW_UNACCEPTED_ENV}=1 to install kernels not accepted with real userspace.")
        report.problems.append(f"doit {' '.join(installs)} failed (exit {done.returncode}): "
                               f"{', '.join(failed) or 'see above'} not installed.{hint} "
                               f"Logs: {project.display(project.version_dir_of(version))}/<target>/")
        report.action, report.code = "failed", EXIT_CHECK_FAILED
        return
    report.installed = True
    report.action = "upgraded" if report.new_version else "installed"
    report.code = EXIT_END_OF_LIFE if report.eol else EXIT_UPDATED


def apply_one(project: Project, report: KernelReport, *, keyring: Path | None, insecure_skip_signature: bool,
              expected_fingerprint: str) -> None:
    """Upgrade (when there is a newer point release) and build, check and install one kernel; fills in `report`."""
    try:
        _apply(project, report, keyring=keyring, insecure_skip_signature=insecure_skip_signature,
               expected_fingerprint=expected_fingerprint)
    except KtailorError as exc:
        print(f"E: {exc}", file=sys.stderr, flush=True)
        report.problems.append(str(exc))
        report.action, report.code = "failed", exit_code_for(exc)


def _apply(project: Project, report: KernelReport, *, keyring: Path | None, insecure_skip_signature: bool,
           expected_fingerprint: str) -> None:
    version = report.version
    if report.code == EXIT_UNREACHABLE:
        return  # the source is stale or replayed (assess said why): nothing is decided from it
    if report.update:
        assert report.latest is not None
        result = upgrade(project.root, report.latest, replace=report.version, keyring=keyring,
                         insecure_skip_signature=insecure_skip_signature, expected_fingerprint=expected_fingerprint,
                         env=project.env)
        report.upgrade = result.to_json()
        report.new_version = version = result.new_version
        if not result.ok:
            report.problems.append(f"the pre-flight of {version} failed; versions.toml names {version} but nothing was built "
                                   "or installed. " + result.revert_hint())
            report.action, report.code = "failed", EXIT_CHECK_FAILED
            return
    elif report.installed:
        return
    else:
        info(f"{version} is current but not installed in the prefix: building and installing it")
    build_and_install(_reloaded(project), version, report)


def _reloaded(project: Project) -> Project:
    """The same project read afresh (versions.toml as an upgrade left it), with the same environment."""
    return Project(project.root, project.env)


def forecast_move(project: Project, report: KernelReport, releases: list[Release], *, keyring: Path | None,
                  insecure_skip_signature: bool, expected_fingerprint: str) -> None:
    """The pre-flight of moving this kernel to the next longterm series: config + audit + whole-config drift
    of the new series' newest release, nothing built or installed. When versions.toml already tracks that
    series, its entry is configured and compared; otherwise a scratch copy of versions.toml is upgraded in a
    scratch build dir (build/forecast/<series>/), whose ~1.4 GB source tree is removed afterwards."""
    project = _reloaded(project)  # an --apply before may have rewritten versions.toml
    move_to = next_longterm(releases, report.series)
    if move_to is None:
        report.forecast = {"to": None, "ok": None, "problem": "kernel.org lists no newer longterm series"}
        return
    old = report.new_version or report.version
    tracked = [k for k in project.versions.kernels if k.series == series_of(move_to.version)]
    try:
        if tracked:
            info(f"forecast: pre-flight of {old} → {tracked[0].version} (the next longterm series, already tracked)")
            preflight = run_preflight(project.root, tracked[0].version, old, env=project.env)
            print(render_preflight(preflight))
            report.forecast = {"to": tracked[0].version, "ok": preflight.ok, "tracked": True,
                               "preflight": preflight.to_json()}
            return
        report.forecast = _forecast_in_scratch(project, report.series, old, move_to.version, keyring=keyring,
                                               insecure_skip_signature=insecure_skip_signature,
                                               expected_fingerprint=expected_fingerprint)
    except KtailorError as exc:
        report.forecast = {"to": move_to.version, "ok": None, "problem": str(exc)}


def _forecast_in_scratch(project: Project, series: str, old: str, new: str, *, keyring: Path | None,
                         insecure_skip_signature: bool, expected_fingerprint: str) -> dict:
    scratch = project.forecast_dir / series
    build_dir = scratch / "build"
    build_dir.mkdir(parents=True, exist_ok=True)
    reference = build_dir / old  # the tracked kernel's configs, read in place to compare with
    if not reference.is_symlink() and project.version_dir_of(old).is_dir():
        reference.symlink_to(project.version_dir_of(old))
    copy = scratch / "versions.toml"
    copy.write_text(project.versions_path.read_text())
    env = dict(project.env, KTAILOR_VERSIONS=str(copy), KTAILOR_BUILD_DIR=str(build_dir))
    info(f"forecast: pre-flight of {old} → {new} (next longterm), in {project.display(scratch)}")
    try:
        result = upgrade(project.root, new, replace=old, allow_series_change=True, keyring=keyring,
                         insecure_skip_signature=insecure_skip_signature, expected_fingerprint=expected_fingerprint,
                         env=env)
    finally:
        shutil.rmtree(build_dir / new / "linux", ignore_errors=True)
    preflight = result.preflight
    return {"to": new, "ok": result.ok, "versions_copy": str(copy),
            "preflight": preflight.to_json() if preflight else None}


def cve_context(project: Project, vulns: str | None, needed: bool):
    """The CVE records, or None (with a warning) when they cannot be had: CVE figures are a help, the
    update itself does not depend on them."""
    if not needed:
        return None
    from ktailor.security.cves import open_database

    try:
        return open_database(vulns, project.env, project.cache_dir)
    except KtailorError as exc:
        warn(f"no CVE figures: {exc}")
        return None


def add_cve_figures(database, project: Project, kernels: list[Kernel], reports: list[KernelReport]) -> None:
    from ktailor.security.cvereport import upgrade_fixes

    for kernel, report in zip(kernels, reports, strict=True):
        if database is not None and report.update and report.latest:
            report.cves = upgrade_fixes(database, project, kernel, report.latest)


def check_exposure(database, project: Project, kernels: list[Kernel], reports: list[KernelReport], severity: str) -> None:
    """--fail-on, in every mode: the kernel each target has *installed* in the prefix (the upgrade's when it
    was installed, else the one before it), judged by the sources.json installed with it."""
    from ktailor.security.cvereport import installed_exposure

    if database is None:
        return
    project = _reloaded(project)
    for kernel, report in zip(kernels, reports, strict=True):
        versions = [v for v in (report.new_version, report.version) if v]
        try:
            found = installed_exposure(database, project, versions, list(kernel.targets), severity)
        except KtailorError as exc:
            report.problems.append(f"the exposure of the installed kernel could not be judged: {exc}")
            report.code = worst([report.code, exit_code_for(exc)])
            continue
        report.exposed = {target: entry for target, entry in found.items() if entry["cves"]}
        if report.exposed:
            report.code = worst([report.code, EXIT_EXPOSED])


def security_update(root: Path, *, apply: bool = False, releases_url: str | None = None, json_out: Path | None = None,
                    keyring: Path | None = None, insecure_skip_signature: bool = False,
                    expected_fingerprint: str = AUTOSIGNER_FINGERPRINT, vulns: str | None = None,
                    fail_on: str = "", forecast: bool = False, env: Mapping[str, str] | None = None) -> int:
    """Check every tracked series against kernel.org (and with `apply`, patch it); return the exit code.
    The whole run holds the build dir's lock (a person's `doit` waits for it, and it for them); its own
    doit children are told they may use the build dir (through the environment they are given: `env`,
    the process's when None, plus the lock's name)."""
    project = Project(root.resolve(), dict(os.environ if env is None else env))
    if fail_on and fail_on not in FAIL_ON:
        print(f"E: --fail-on {fail_on!r} is not a policy; use one of {', '.join(FAIL_ON)}.", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        with holding_build_dir(project.build_dir, project.env) as children:
            return _security_update(Project(project.root, children), apply=apply, releases_url=releases_url, json_out=json_out,
                                    keyring=keyring, insecure_skip_signature=insecure_skip_signature,
                                    expected_fingerprint=expected_fingerprint, vulns=vulns, fail_on=fail_on,
                                    forecast=forecast)
    except KtailorError as exc:  # the lock: busy with KTAILOR_NO_WAIT=1, or an unusable build dir
        print(f"E: {exc}", file=sys.stderr, flush=True)
        return exit_code_for(exc)


def _security_update(project: Project, *, apply: bool, releases_url: str | None, json_out: Path | None,
                     keyring: Path | None, insecure_skip_signature: bool, expected_fingerprint: str,
                     vulns: str | None, fail_on: str, forecast: bool) -> int:
    url = resolve_releases_url(releases_url, project.env)
    summary: dict = {"checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "releases_url": url,
                     "apply": apply, "kernels": []}
    reports: list[KernelReport] = []
    try:
        kernels = tuple(k for k in project.versions.kernels if k.source is None)
        for tree_kernel in (k for k in project.versions.kernels if k.source is not None):
            note = (f"leaves {tree_kernel.version}{tree_kernel.extraversion} alone: it is built from the source tree "
                    f"{tree_kernel.source}, not from a kernel.org release; update that tree yourself (doit rebuilds "
                    "its targets when it changes).")
            print(f"I: {note}", file=sys.stderr, flush=True)
            summary.setdefault("left_alone", []).append({"version": tree_kernel.version, "source": str(tree_kernel.source),
                                                         "why": note})
        releases = fetch_releases(url)
    except KtailorError as exc:
        print(f"E: {exc}", file=sys.stderr, flush=True)
        summary["error"] = str(exc)
        return _finish(project, summary, reports, exit_code_for(exc), json_out)
    reports = [assess(project, kernel, releases) for kernel in kernels]
    database = cve_context(project, vulns, any(r.update for r in reports) or bool(fail_on))
    add_cve_figures(database, project, list(kernels), reports)  # before apply: the old builds say what they compiled
    if apply:
        for report in reports:
            apply_one(project, report, keyring=keyring, insecure_skip_signature=insecure_skip_signature,
                      expected_fingerprint=expected_fingerprint)
    if fail_on:
        check_exposure(database, project, list(kernels), reports, FAIL_ON[fail_on])
    for report in reports:  # always for an end-of-life series, on request for the others
        if report.eol or forecast:
            forecast_move(project, report, releases, keyring=keyring, insecure_skip_signature=insecure_skip_signature,
                          expected_fingerprint=expected_fingerprint)
    print("security-update: " + ("applied" if apply else "report only (no --apply)") + f", releases from {url}")
    for report in reports:
        if report.cves:
            print("  " + describe_fixes(report.cves))
        print("  " + describe(report, apply))
        if report.forecast:
            print("  " + describe_forecast(report))
        for target, entry in (report.exposed or {}).items():
            ids = entry["cves"]
            remedy = ("an update is available: run with --apply" if report.update and not apply else
                      "and no working upgrade")
            print(f"  EXPOSED: {target} {entry['version']} (installed) has {len(ids)} applicable CVE(s) of "
                  f"{FAIL_ON[fail_on].lower()} severity or worse, {remedy}: {', '.join(ids[:8])}")
    for report in reports:  # last, so it is what a cron mail or a journal tail shows
        if report.eol:
            others = tuple(r.new_version or r.version for r in reports if r is not report)
            print(end_of_life_banner(report, url, others))
    return _finish(project, summary, reports, worst([r.code for r in reports]), json_out)


def _finish(project: Project, summary: dict, reports: list[KernelReport], code: int, json_out: Path | None) -> int:
    summary |= {"exit_code": code, "status": EXIT_NAMES[code], "kernels": [asdict(r) for r in reports]}
    path = json_out or project.build_dir / "security-update.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(path, summary)
    except OSError as exc:
        warn(f"could not write the JSON summary to {path} ({exc.strerror}).")
    else:
        print(f"exit {code} ({EXIT_NAMES[code]}); summary in {path}")
    return code
