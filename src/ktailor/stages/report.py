"""The traceability report: requirement group → option → requested → final → fragment:line → reason → status.

One Markdown and one JSON file per target, built from the fragments, the final .config and the
audit: the document a platform team puts in front of its security review.
"""

from __future__ import annotations

import json
from pathlib import Path

from ktailor.core.progress import info, warn
from ktailor.core.records import read_optional, read_report, sha256_of, write_text_atomically
from ktailor.guest.probes import Probe
from ktailor.kconfig.configdiff import error_count, render_changes, target_drift
from ktailor.kconfig.dotconfig import final_value, parse_dotconfig, same_value
from ktailor.kconfig.fragments import Fragment
from ktailor.stages.base import Context, Stage
from ktailor.stages.verify import hardening_of, verdict_state


def report_rows(fragments: list[Fragment], requested_symbols: dict, final: dict[str, str], audit: dict) -> list[dict]:
    differences = {d["symbol"]: d for d in audit.get("differences", [])}
    rows = []
    for fragment in fragments:
        for option in fragment.options:
            if requested_symbols.get(option.symbol) is not option:
                continue  # scoped out for this arch/version, or overridden by a later fragment
            value = final_value(final, option.symbol)
            difference = differences.get(option.symbol)
            if same_value(option.value, value):
                status = "landed"
            elif difference and difference.get("expected"):
                status = "expected drop"
            else:
                status = "NOT LANDED"
            rows.append({
                "requirement": fragment.requirement or "(no header)",
                "option": f"CONFIG_{option.symbol}",
                "requested": option.value,
                "final": value,
                "where": option.where,
                "reason": option.reason,
                "status": status,
                "explanation": (difference or {}).get("explanation", "") or (difference or {}).get("expected", ""),
            })
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(target: str, version: str, rows: list[dict]) -> str:
    landed = sum(r["status"] == "landed" for r in rows)
    lines = [f"# {target} on Linux {version}: requirements traceability", "",
             f"{landed} of {len(rows)} requested options landed in the final .config.", ""]
    for requirement in dict.fromkeys(r["requirement"] for r in rows):
        lines += [f"## {requirement}", "", "| option | requested | final | fragment:line | reason | status |",
                  "|---|---|---|---|---|---|"]
        for row in (r for r in rows if r["requirement"] == requirement):
            status = row["status"] + (f" ({row['explanation']})" if row["explanation"] else "")
            lines.append(f"| `{row['option']}` | {row['requested']} | {row['final']} | {row['where']} | "
                         f"{_cell(row['reason'])} | {_cell(status)} |")
        lines.append("")
    return "\n".join(lines)


def render_drift(version: str, drifts: dict[str, tuple[list, list]]) -> str:
    """The whole-config comparison with each other tracked version, as a Markdown section."""
    from ktailor.kconfig.configdiff import render_changes

    if not drifts:
        return ""
    lines = ["## Unrequested differences from the other tracked kernels", "",
             "Options no fragment requests whose final value differs (grouped by kconfig menu); "
             "`E:` marks a feature of `fragments/must-stay.toml` that is lost.", ""]
    for other, (changes, missing) in drifts.items():
        lines += [f"### Linux {other} → {version}", "", "```",
                  render_changes(other, version, changes, missing), "```", ""]
    return "\n".join(lines)


def observed_rows(probes: list[Probe], hardening: dict | None, final: dict[str, str], boot: dict | None,
                  config_sha256: str) -> list[dict]:
    """The hardening the booted guest reported beside what the .config says: every probe of the target that
    reads runtime state a hardening check is about (requirement "hardening", or a checked symbol). Observed
    values come from boot.json only when it judged this very .config; otherwise "not booted yet"."""
    checked = {r["symbol"] for r in (hardening or {}).get("checks", [])}
    judged = boot is not None and (boot.get("evidence") or {}).get("config") == config_sha256
    results = {p["name"]: p for p in (boot or {}).get("probes", [])} if judged else {}
    rows = []
    for probe in probes:
        if probe.requirement != "hardening" and not checked & set(probe.symbols):
            continue
        result = results.get(probe.name)
        rows.append({"probe": probe.name,
                     "configured": {f"CONFIG_{s}": final_value(final, s) for s in probe.symbols},
                     "observed": result.get("detail", "") if result else "not booted yet",
                     "status": result.get("status", "") if result else "not booted"})
    return rows


def render_observed(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["## Hardening observed in the booted guest (boot.json)", "",
             "| probe | configured | observed | status |", "|---|---|---|---|"]
    lines += [f"| {r['probe']} | {_cell(', '.join(f'{k}={v}' for k, v in r['configured'].items()))} | "
              f"{_cell(r['observed'])} | {r['status']} |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(*, target: str, version: str, fragments: list[Fragment], requested: dict, config: Path,
                 audit_file: Path, out_md: Path, out_json: Path,
                 drifts: dict[str, tuple[list, list]] | None = None, hardening: dict | None = None,
                 probes: list[Probe] | None = None, boot: dict | None = None) -> list[dict]:
    """`drifts`: other version -> (configdiff changes, must-stay losses) of this target; `hardening`: the
    hardening audit of its final .config (hardening.py); `probes` and `boot`: the target's probes and its
    boot.json, for the configured / observed table (the boot stage writes the report again once it has run)."""
    from ktailor.kconfig.configdiff import to_json as drift_json
    from ktailor.kconfig.hardening import render_hardening

    audit = read_report(audit_file, "config") if audit_file.is_file() else {}
    final = parse_dotconfig(config)
    rows = report_rows(fragments, requested, final, audit)
    observed = observed_rows(probes or [], hardening, final, boot, sha256_of(config))
    drifts = drifts or {}
    write_text_atomically(out_md, render_markdown(target, version, rows) + "\n" + render_drift(version, drifts)
                          + ("\n" + render_hardening(hardening) if hardening else "")
                          + ("\n" + render_observed(observed) if observed else ""))
    write_text_atomically(out_json, json.dumps({
        "target": target, "version": version, "rows": rows,
        "config_drift": {other: drift_json(*pair) for other, pair in drifts.items()},
        "hardening": hardening, "hardening_observed": observed,
    }, indent=2) + "\n")
    return rows


# --- the stage ---------------------------------------------------------------------------------
def run(ctx: Context) -> None:
    write_target_report(ctx)


def write_target_report(ctx: Context, *, quiet: bool = False) -> None:
    """report.md/report.json: the report stage's, and the boot stage's again once boot.json holds the
    observed hardening (the configured / observed table)."""
    from ktailor.guest.probes import load_probe_table
    from ktailor.kconfig.fragments import load_fragments, requested_options
    from ktailor.project.tables import PROBES

    project, kernel, row, files = ctx.project, ctx.the_kernel, ctx.the_target, ctx.files
    fragments = load_fragments(project.fragment_paths(row), project.root)
    drifts = {}
    for other in project.versions.kernels:
        if other.version != kernel.version and row.name in other.targets:
            drifted = target_drift(project, row, other.version, kernel)
            if drifted is not None:
                drifts[other.version] = drifted
    hardening = hardening_of(ctx)
    rows = write_report(target=row.name, version=kernel.version, fragments=fragments,
                        requested=requested_options(fragments, row.arch.name, kernel.version_tuple),
                        config=files.config, audit_file=files.audit, out_md=files.report_md,
                        out_json=files.report_json, drifts=drifts, hardening=hardening,
                        probes=load_probe_table(project.guest_dir / PROBES).for_target(row),
                        boot=read_optional(files.boot))
    if quiet:
        return
    landed = sum(r["status"] == "landed" for r in rows)
    if hardening:
        failing = ", ".join(r["symbol"] for r in hardening["failing"])
        info(f"hardening {ctx.label}: {hardening['score']} checks pass, {hardening['waived']} waived"
             + (f"; failing: {failing}" if failing else ""))
    errors = sum(error_count(*pair) for pair in drifts.values())
    compared = f"; whole .config compared with {', '.join(drifts)}: {errors} must-stay loss(es)" if drifts else ""
    info(f"report {ctx.label}: {landed}/{len(rows)} landed{compared} → {project.display(files.report_md)}")
    for other, (changes, missing) in drifts.items():
        if error_count(changes, missing):
            warn(f"{row.name}: {other} → {kernel.version} loses what must stay:\n"
                 f"{render_changes(other, kernel.version, changes, missing)}")


def _other_configs(ctx: Context) -> list[Path]:
    """The same target's final .config on the other kernels: the report compares the whole config with them."""
    return [ctx.project.artifacts(other, ctx.the_target).config for other in ctx.project.versions.kernels
            if other.version != ctx.the_kernel.version and ctx.the_target.name in other.targets]


STAGE = Stage(
    "report", "write each target's requirement → option → final value table (report.md, report.json)",
    doc=lambda ctx: f"requirement → option → final value table for {ctx.label.replace(' ', ' on ')}",
    run=run,
    inputs=lambda ctx: [ctx.files.config, ctx.files.audit, *ctx.project.fragment_paths(ctx.the_target), *_other_configs(ctx)],
    outputs=lambda ctx: [ctx.files.report_md, ctx.files.report_json],
    state=verdict_state,
)
