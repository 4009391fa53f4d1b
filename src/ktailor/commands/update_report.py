"""What security-update says about each tracked kernel: its KernelReport, the exit codes and their order
of severity, and the lines printed for a person (the state of each series, the forecast, the end-of-life
banner a cron mail or a journal tail shows last)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ktailor.core.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_ERROR, EXIT_UNREACHABLE
from ktailor.project.versions import parse_version

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
    exposed: dict[str, dict] | None = None  # --fail-on: target -> {version installed, applicable CVEs}

    @property
    def update(self) -> bool:
        return self.latest is not None and parse_version(self.latest) > parse_version(self.version)


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
    return "; ".join(f"{name}: verify {t['verify']}, boot {t['boot']}, accept {t['accept']}"
                     for name, t in report.targets.items())


def describe_forecast(report: KernelReport) -> str:
    forecast = report.forecast or {}
    head = f"forecast {report.series} → {forecast.get('to')}:"
    if forecast.get("ok") is None:
        return f"{head} could not be run: {forecast.get('problem')}"
    targets = (forecast.get("preflight") or {}).get("targets", [])
    lost = sum(len(t["no_longer_land"]) for t in targets)
    drift = [t["config_drift"] for t in targets if t.get("config_drift")]
    if drift:
        changes = sum(len(d["changes"]) for d in drift)
        errors = sum(d["errors"] for d in drift)
        compared = (f"{changes} unrequested option(s) change, {errors} must-stay loss(es)"
                    + ("" if len(drift) == len(targets) else f" ({len(drift)} of {len(targets)} target(s) compared)"))
    else:
        compared = "whole .config not compared (no final .config of the current kernel here: run `doit config` first)"
    verdict = "every requested option lands" if forecast["ok"] else "PROBLEMS"
    return (f"{head} {verdict}; {lost} requested option(s) would not land, {compared} "
            "(details: the pre-flight above and the JSON summary).")
