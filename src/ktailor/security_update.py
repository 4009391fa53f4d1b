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

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .cvereport import describe_fixes
from .errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_ERROR, EXIT_UNREACHABLE, DownloadError, KtailorError, exit_code_for
from .evidence import ALLOW_UNBOOTED_ENV, allow_unbooted
from .layout import Project
from .locks import BUILD_LOCK_ENV, acquire, no_wait, release
from .progress import info, warn
from .releases import RELEASES_URL_ENV, Release, fetch_releases, newest_on_mirror, next_longterm, series_status
from .releases import releases_url as resolve_releases_url
from .runner import run_doit, task_name
from .signature import AUTOSIGNER_FINGERPRINT
from .upgrade import upgrade
from .versions import Kernel, parse_version

EXIT_UP_TO_DATE = 0  # every tracked series is current (and, with --apply, installed)
# EXIT_ERROR 1, EXIT_BAD_INPUT 2, EXIT_CHECK_FAILED 20, EXIT_UNREACHABLE 30: errors.py, shared by every command
EXIT_UPDATED = 10  # --apply: upgraded, verified and installed; without --apply: a newer point release is available
EXIT_END_OF_LIFE = 40  # a tracked series is end-of-life (nothing worse happened): move to the next longterm series
EXIT_EXPOSED = 50  # --fail-on: an installed kernel has an applicable CVE of that severity and no working upgrade
# Worst first: the exit code of a run is the first of these that any kernel hit.
SEVERITY = (EXIT_BAD_INPUT, EXIT_ERROR, EXIT_EXPOSED, EXIT_UNREACHABLE, EXIT_CHECK_FAILED, EXIT_END_OF_LIFE, EXIT_UPDATED,
            EXIT_UP_TO_DATE)
FAIL_ON = {"applicable-critical": "CRITICAL", "applicable-high": "HIGH", "applicable-medium": "MEDIUM",
           "applicable-low": "LOW"}
EXIT_NAMES = {EXIT_UP_TO_DATE: "up to date", EXIT_ERROR: "error", EXIT_BAD_INPUT: "bad input", EXIT_UPDATED: "updated",
              EXIT_CHECK_FAILED: "check failed, not installed", EXIT_UNREACHABLE: "unreachable",
              EXIT_END_OF_LIFE: "end of life", EXIT_EXPOSED: "exposed: applicable CVE without a working upgrade"}


def worst(codes: list[int]) -> int:
    return min(codes, key=SEVERITY.index, default=EXIT_UP_TO_DATE)


@dataclass
class KernelReport:
    version: str
    series: str
    listed: bool
    eol: bool
    latest: str | None
    latest_from: str  # releases.json | mirror listing | unknown
    next_longterm: str | None  # the newest release of the series to move to when this one is end-of-life
    installed: bool  # every target of this version is in the prefix
    action: str = "none"  # none | update available | upgraded | installed | failed
    new_version: str | None = None
    targets: dict[str, dict] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    upgrade: dict | None = None
    code: int = EXIT_UP_TO_DATE
    cves: dict | None = None  # what the newest point release fixes, per target (cvereport.upgrade_fixes)
    forecast: dict | None = None  # the pre-flight of the move to the next longterm series (nothing built)
    exposed: dict[str, list[str]] | None = None  # --fail-on: applicable CVEs left in the installed kernel

    @property
    def update(self) -> bool:
        return self.latest is not None and parse_version(self.latest) > parse_version(self.version)


def is_installed(project: Project, kernel: Kernel) -> bool:
    """Every target of this kernel is in the prefix, built from the fragments as they are now (a fragment
    edit is rolled out by the next nightly run)."""
    from .install import fragments_digest

    for name in kernel.targets:
        target = project.catalog.targets[name]
        try:
            manifest = json.loads(project.artifacts(kernel, target).manifest.read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(manifest, dict) or manifest.get("fragments_sha256") != fragments_digest(project, target):
            return False
    return True


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


def end_of_life_banner(report: KernelReport, url: str, others: tuple[str, ...] = ()) -> str:
    """`others`: the other versions versions.toml tracks (the next series may already be one of them)."""
    why = "releases.json marks it end-of-life" if report.listed else f"{url} no longer lists it"
    tracked = report.new_version or report.version  # new_version: versions.toml was rewritten (built or not)
    lines = [f"END OF LIFE: kernel series {report.series} (versions.toml: {tracked}) gets no more fixes from "
             f"kernel.org ({why})."]
    series = ".".join(report.next_longterm.split(".")[:2]) if report.next_longterm else ""
    already = [v for v in others if ".".join(v.split(".")[:2]) == series]
    if already:
        lines += [f"The next longterm series, {series}, is already tracked ({already[0]}): make it the default",
                  f'(default = "{already[0]}" in versions.toml) and remove the {tracked} entry once nothing needs it;',
                  "an `upgrade --replace` would leave two entries of one series."]
    elif report.next_longterm:
        lines += [f"Move to the next longterm series, {series}:",
                  f"    invoke upgrade --version {report.next_longterm} --allow-series-change --replace {tracked}",
                  "and read the pre-flight (options that no longer land) before building."]
    else:
        lines.append("kernel.org lists no newer longterm series that is still maintained; pick a stable series by hand.")
    bar = "!" * 78
    return "\n".join([bar, *(f"!!! {line}" for line in lines), bar])


def _status_of(path: Path, missing: str) -> str:
    try:
        return str(json.loads(path.read_text()).get("status", "unknown"))
    except (OSError, ValueError, AttributeError):
        return missing


def build_and_install(root: Path, version: str, report: KernelReport) -> None:
    """doit verify and boot for every target of `version`; doit install only if all of it passed."""
    project = Project.from_env(root)
    kernel = project.versions.get(version)
    default = project.versions.default.version
    unbooted_ok = allow_unbooted(project.env)
    checks = [task_name(stage, target, version, default) for target in kernel.targets for stage in ("verify", "boot")]
    info(f"building and checking {version}: doit {' '.join(checks)}")
    checked = run_doit(root, "--continue", *checks)
    for name in kernel.targets:
        files = project.artifacts(kernel, project.catalog.targets[name])
        report.targets[name] = {"verify": _status_of(files.verify, "not reached"),
                                "boot": _status_of(files.boot, "not reached"), "installed": False}
    booted = {"pass", "skipped"} if unbooted_ok else {"pass"}
    failed = [f"{name} (verify {t['verify']}, boot {t['boot']})" for name, t in report.targets.items()
              if t["verify"] != "passed" or t["boot"] not in booted]
    if checked.returncode != 0 or failed:
        why = f"doit {' '.join(checks)} failed (exit {checked.returncode})" if checked.returncode else "not every check passed"
        skipped = any(t["boot"] == "skipped" for t in report.targets.values())
        hint = (f" A skipped boot test blocks the install; install QEMU, or set {ALLOW_UNBOOTED_ENV}=1 to accept "
                "kernels that were not boot-tested." if skipped and not unbooted_ok else "")
        report.problems.append(f"{why}: {', '.join(failed) or 'see above'}; nothing was installed.{hint} "
                               f"Logs: {project.display(project.version_dir_of(version))}/<target>/")
        report.action, report.code = "failed", EXIT_CHECK_FAILED
        return
    installs = [task_name("install", target, version, default) for target in kernel.targets]
    installed = run_doit(root, *installs)
    if installed.returncode != 0:
        report.problems.append(f"doit {' '.join(installs)} failed (exit {installed.returncode}); see its output above.")
        report.action, report.code = "failed", EXIT_CHECK_FAILED
        return
    for name in kernel.targets:
        report.targets[name]["installed"] = True
    report.installed = True
    report.action = "upgraded" if report.new_version else "installed"
    report.code = EXIT_END_OF_LIFE if report.eol else EXIT_UPDATED


def apply_one(root: Path, report: KernelReport, *, keyring: Path | None, insecure_skip_signature: bool,
              expected_fingerprint: str) -> None:
    """Upgrade (when there is a newer point release) and build, check and install one kernel; fills in `report`."""
    try:
        _apply(root, report, keyring=keyring, insecure_skip_signature=insecure_skip_signature,
               expected_fingerprint=expected_fingerprint)
    except KtailorError as exc:
        print(f"E: {exc}", file=sys.stderr, flush=True)
        report.problems.append(str(exc))
        report.action, report.code = "failed", exit_code_for(exc)


def _apply(root: Path, report: KernelReport, *, keyring: Path | None, insecure_skip_signature: bool,
           expected_fingerprint: str) -> None:
    version = report.version
    if report.code == EXIT_UNREACHABLE:
        return  # the source is stale or replayed (assess said why): nothing is decided from it
    if report.update:
        assert report.latest is not None
        result = upgrade(root, report.latest, replace=report.version, keyring=keyring,
                         insecure_skip_signature=insecure_skip_signature, expected_fingerprint=expected_fingerprint)
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
    build_and_install(root, version, report)


def describe(report: KernelReport, apply: bool) -> str:
    head = f"{report.version} (series {report.series}{', END OF LIFE' if report.eol else ''})"
    if report.action == "upgraded":
        return f"{head}: upgraded to {report.new_version}, checked ({_checks(report)}) and installed."
    if report.action == "installed":
        return f"{head}: current; built, checked ({_checks(report)}) and installed."
    if report.action == "failed":
        what = f"upgrade to {report.new_version}" if report.new_version else "update" if report.update else "build"
        return f"{head}: {what} FAILED, NOT installed: " + " ".join(report.problems)
    if report.update:
        hint = "" if apply else " Run `invoke security-update --apply` (or `invoke upgrade --latest`)."
        return f"{head}: {report.latest} is available ({report.latest_from}).{hint}"
    state = "end-of-life" if report.eol else "up to date"
    installed = "" if report.installed else " (not installed in the prefix)"
    return f"{head}: {state}{installed}." + (" " + " ".join(report.problems) if report.problems else "")


def _checks(report: KernelReport) -> str:
    return "; ".join(f"{name}: verify {t['verify']}, boot {t['boot']}" for name, t in report.targets.items())


def forecast_move(root: Path, report: KernelReport, releases: list[Release], *, keyring: Path | None,
                  insecure_skip_signature: bool, expected_fingerprint: str) -> None:
    """The pre-flight of moving this kernel to the next longterm series, on a scratch copy of versions.toml:
    config + audit + whole-config drift of the new series' newest release, nothing built or installed."""
    project = Project.from_env(root)
    target = next_longterm(releases, report.series)
    if target is None:
        report.forecast = {"to": None, "ok": None, "problem": "kernel.org lists no newer longterm series"}
        return
    scratch = project.build_dir / "forecast" / report.series
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / "versions.toml"
    copy.write_text(project.versions_path.read_text())
    env = dict(project.env, KTAILOR_VERSIONS=str(copy))
    info(f"forecast: pre-flight of {report.version} → {target.version} (next longterm), on {project.display(copy)}")
    try:
        result = upgrade(root, target.version, replace=report.new_version or report.version, allow_series_change=True,
                         keyring=keyring, insecure_skip_signature=insecure_skip_signature,
                         expected_fingerprint=expected_fingerprint, env=env)
    except KtailorError as exc:
        report.forecast = {"to": target.version, "ok": None, "problem": str(exc)}
        return
    preflight = result.preflight
    report.forecast = {"to": target.version, "ok": result.ok, "versions_copy": str(copy),
                       "preflight": preflight.to_json() if preflight else None}


def describe_forecast(report: KernelReport) -> str:
    forecast = report.forecast or {}
    head = f"forecast {report.series} → {forecast.get('to')}:"
    if forecast.get("ok") is None:
        return f"{head} could not be run: {forecast.get('problem')}"
    targets = (forecast.get("preflight") or {}).get("targets", [])
    lost = sum(len(t["no_longer_land"]) for t in targets)
    drift = [t["config_drift"] for t in targets if t.get("config_drift")]
    changes = sum(len(d["changes"]) for d in drift)
    errors = sum(d["errors"] for d in drift)
    verdict = "every requested option lands" if forecast["ok"] else "PROBLEMS"
    return (f"{head} {verdict}; {lost} requested option(s) would not land, {changes} unrequested option(s) change, "
            f"{errors} must-stay loss(es) (details: the pre-flight above and the JSON summary).")


def cve_context(project: Project, vulns: str | None, needed: bool):
    """The CVE records, or None (with a warning) when they cannot be had: CVE figures are a help, the
    update itself does not depend on them."""
    if not needed:
        return None
    from .cves import open_database

    try:
        return open_database(vulns, project.env, project.cache_dir)
    except KtailorError as exc:
        warn(f"no CVE figures: {exc}")
        return None


def add_cve_figures(database, project: Project, kernels: list[Kernel], reports: list[KernelReport]) -> None:
    from .cvereport import upgrade_fixes

    for kernel, report in zip(kernels, reports, strict=True):
        if database is not None and report.update and report.latest:
            report.cves = upgrade_fixes(database, project, kernel, report.latest)


def check_exposure(database, root: Path, reports: list[KernelReport], severity: str) -> None:
    """--fail-on: an installed kernel with an applicable CVE of `severity` or worse and no working upgrade."""
    from .cvereport import installed_exposure

    project = Project.from_env(root)  # versions.toml as apply left it
    for report in reports:
        if report.update and report.action != "failed":
            continue  # the newest release is (being) installed
        kernel = next((k for k in project.versions.kernels if k.version == (report.new_version or report.version)), None)
        if kernel is None or database is None:
            continue
        found = {t: ids for t, ids in installed_exposure(database, project, kernel, severity).items() if ids}
        report.exposed = found
        if found:
            report.code = worst([report.code, EXIT_EXPOSED])


def security_update(root: Path, *, apply: bool = False, releases_url: str | None = None, json_out: Path | None = None,
                    keyring: Path | None = None, insecure_skip_signature: bool = False,
                    expected_fingerprint: str = AUTOSIGNER_FINGERPRINT, vulns: str | None = None,
                    fail_on: str = "", forecast: bool = False) -> int:
    """Check every tracked series against kernel.org (and with `apply`, patch it); return the exit code.
    The whole run holds the build dir's lock (a person's `doit` waits for it, and it for them); its own
    doit children are told they may use the build dir."""
    project = Project.from_env(root)
    if fail_on and fail_on not in FAIL_ON:
        print(f"E: --fail-on {fail_on!r} is not a policy; use one of {', '.join(FAIL_ON)}.", file=sys.stderr)
        return EXIT_BAD_INPUT
    lock = project.build_dir / ".lock"
    try:
        acquire(lock, f"the build dir {project.build_dir}", wait=not no_wait(project.env))
    except KtailorError as exc:
        print(f"E: {exc}", file=sys.stderr, flush=True)
        return exit_code_for(exc)
    os.environ[BUILD_LOCK_ENV] = str(lock.resolve())
    try:
        return _security_update(root, project, apply=apply, releases_url=releases_url, json_out=json_out,
                                keyring=keyring, insecure_skip_signature=insecure_skip_signature,
                                expected_fingerprint=expected_fingerprint, vulns=vulns, fail_on=fail_on,
                                forecast=forecast)
    finally:
        os.environ.pop(BUILD_LOCK_ENV, None)
        release(lock)


def _security_update(root: Path, project: Project, *, apply: bool, releases_url: str | None, json_out: Path | None,
                     keyring: Path | None, insecure_skip_signature: bool, expected_fingerprint: str,
                     vulns: str | None, fail_on: str, forecast: bool) -> int:
    url = resolve_releases_url(releases_url, project.env)
    summary: dict = {"checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "releases_url": url,
                     "apply": apply, "kernels": []}
    reports: list[KernelReport] = []
    try:
        kernels = project.versions.kernels
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
            apply_one(root, report, keyring=keyring, insecure_skip_signature=insecure_skip_signature,
                      expected_fingerprint=expected_fingerprint)
    if fail_on:
        check_exposure(database, root, reports, FAIL_ON[fail_on])
    for report in reports:  # always for an end-of-life series, on request for the others
        if report.eol or forecast:
            forecast_move(root, report, releases, keyring=keyring, insecure_skip_signature=insecure_skip_signature,
                          expected_fingerprint=expected_fingerprint)
    print("security-update: " + ("applied" if apply else "report only (no --apply)") + f", releases from {url}")
    for report in reports:
        if report.cves:
            print("  " + describe_fixes(report.cves))
        print("  " + describe(report, apply))
        if report.forecast:
            print("  " + describe_forecast(report))
        if report.exposed:
            for target, ids in report.exposed.items():
                print(f"  EXPOSED: {target} {report.new_version or report.version} has {len(ids)} applicable CVE(s) "
                      f"of {FAIL_ON[fail_on].lower()} severity or worse and no working upgrade: {', '.join(ids[:8])}")
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
        temp = path.with_name(path.name + ".tmp")
        temp.write_text(json.dumps(summary, indent=2) + "\n")
        temp.replace(path)
    except OSError as exc:
        warn(f"could not write the JSON summary to {path} ({exc.strerror}).")
    else:
        print(f"exit {code} ({EXIT_NAMES[code]}); summary in {path}")
    return code
