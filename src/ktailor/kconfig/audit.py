"""Requested versus final: compare what the fragments asked with the .config kconfig produced.

The kernel's kconfig is the authority; this module only reads its result, finds every
difference (dropped, demoted y→m, forced on), asks the explainer (kconfiglib) why, proposes a fix
and writes audit.json. Expected drops (fragments/expected-drops.toml) are reported, not failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ktailor.kconfig.dotconfig import final_value, same_value
from ktailor.kconfig.fragments import ExpectedDrop, Option


@dataclass
class Difference:
    symbol: str
    requested: str
    final: str
    where: str  # fragment:line
    reason: str  # the fragment's why
    kind: str  # dropped | demoted | promoted | forced-on | changed
    explanation: str = ""
    explanation_kind: str = ""
    fix: list[str] = field(default_factory=list)
    fix_verified: bool | None = None
    expected: str = ""  # the expected-drops.toml 'why', when declared

    @property
    def status(self) -> str:
        return "expected" if self.expected else "unexpected"


def classify(requested: str, final: str) -> str:
    if requested == "n":
        return "forced-on"
    if final == "n":
        return "dropped"
    if requested == "y" and final == "m":
        return "demoted"
    if requested == "m" and final == "y":
        return "promoted"
    return "changed"


def compare(requested: dict[str, Option], final: dict[str, str]) -> list[Difference]:
    differences = []
    for symbol, option in requested.items():
        value = final_value(final, symbol)
        if same_value(option.value, value):
            continue
        differences.append(Difference(symbol, option.value, value, option.where, option.reason, classify(option.value, value)))
    return differences


def mark_expected(differences: list[Difference], drops: list[ExpectedDrop], arch: str,
                  version: tuple[int, int, int]) -> list[ExpectedDrop]:
    """Tag declared drops; return the declarations that apply here but no longer drop (stale)."""
    applicable = [d for d in drops if d.applies(arch, version)]
    by_symbol = {d.symbol: d for d in applicable}
    for difference in differences:
        if difference.symbol in by_symbol:
            difference.expected = by_symbol[difference.symbol].why
    dropped = {d.symbol for d in differences}
    return [d for d in applicable if d.symbol not in dropped]


@dataclass
class AuditResult:
    target: str
    version: str
    requested_count: int
    differences: list[Difference]
    stale_expected: list[str]
    explainer: str  # "kconfiglib" or "unavailable: why"
    causes: list = field(default_factory=list)  # rootcause.Cause: differences grouped by what started them
    config_sha256: str = ""  # the .config this audit judged (evidence.py: install and `doit config` check it)

    @property
    def unexpected(self) -> list[Difference]:
        return [d for d in self.differences if not d.expected]

    @property
    def passed(self) -> bool:
        return not self.unexpected

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "version": self.version,
            "status": "passed" if self.passed else "failed",
            "requested": self.requested_count,
            "explainer": self.explainer,
            "differences": [asdict(d) | {"status": d.status} for d in self.differences],
            "stale_expected_drops": self.stale_expected,
            "root_causes": [cause.to_json() for cause in self.causes],
            "config_sha256": self.config_sha256,
        }

    def write(self, path: Path) -> None:
        temp = path.with_suffix(".json.tmp")
        temp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        temp.replace(path)


def render_causes(causes: list) -> str:
    """One paragraph per root cause, before the table, so the one fix is read before 27 symptoms."""
    if not causes:
        return ""
    lines = ["Root cause" + ("s" if len(causes) > 1 else "") + ":"]
    lines += [f"  * {cause.sentence()}" for cause in causes]
    return "\n".join(lines) + "\n"


def render_table(differences: list[Difference]) -> str:
    """A plain-text table: option, requested, final, fragment:line, then why and the fix."""
    if not differences:
        return ""
    header = ("option", "requested", "final", "fragment:line", "status")
    rows = [(f"CONFIG_{d.symbol}", d.requested, d.final, d.where, d.status) for d in differences]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for difference, row in zip(differences, rows, strict=True):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if difference.explanation:
            lines.append(f"    why: {difference.explanation}")
        if difference.expected:
            lines.append(f"    expected (fragments/expected-drops.toml): {difference.expected}")
        if difference.fix:
            verified = {True: " (checked: with these it lands)", False: " (checked: still does not land)", None: ""}
            lines.append(f"    fix: add {' '.join(difference.fix)}{verified[difference.fix_verified]}")
    return "\n".join(lines)
