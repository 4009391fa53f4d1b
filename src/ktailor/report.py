"""The traceability report: requirement group → option → requested → final → fragment:line → reason → status.

One Markdown and one JSON file per target, built from the fragments, the final .config and the
audit: the document a platform team puts in front of its security review.
"""

from __future__ import annotations

import json
from pathlib import Path

from .dotconfig import final_value, parse_dotconfig, same_value
from .evidence import read_report
from .fragments import Fragment


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
    from .configdiff import render_changes

    if not drifts:
        return ""
    lines = ["## Unrequested differences from the other tracked kernels", "",
             "Options no fragment requests whose final value differs (grouped by kconfig menu); "
             "`E:` marks a feature of `fragments/must-stay.toml` that is lost.", ""]
    for other, (changes, missing) in drifts.items():
        lines += [f"### Linux {other} → {version}", "", "```",
                  render_changes(other, version, changes, missing), "```", ""]
    return "\n".join(lines)


def write_report(*, target: str, version: str, fragments: list[Fragment], requested: dict, config: Path,
                 audit_file: Path, out_md: Path, out_json: Path,
                 drifts: dict[str, tuple[list, list]] | None = None, hardening: dict | None = None) -> list[dict]:
    """`drifts`: other version -> (configdiff changes, must-stay losses) of this target; `hardening`: the
    hardening audit of its final .config (hardening.py)."""
    from .configdiff import to_json as drift_json
    from .hardening import render_hardening

    audit = read_report(audit_file, "config") if audit_file.is_file() else {}
    rows = report_rows(fragments, requested, parse_dotconfig(config), audit)
    drifts = drifts or {}
    out_md.write_text(render_markdown(target, version, rows) + "\n" + render_drift(version, drifts)
                      + ("\n" + render_hardening(hardening) if hardening else ""))
    out_json.write_text(json.dumps({
        "target": target, "version": version, "rows": rows,
        "config_drift": {other: drift_json(*pair) for other, pair in drifts.items()},
        "hardening": hardening,
    }, indent=2) + "\n")
    return rows
