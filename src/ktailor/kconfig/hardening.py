"""The hardening audit: a final .config against the checks of fragments/hardening-checks.toml.

Each check says what a symbol should be (y, n, or a number at least N), where it applies (arch, kernel
versions, and whether a feature it guards is on), and where the recommendation comes from. A target may
waive a check with a reason. The result is a score (checks passed of those that apply), every failing
check with its why, and every waiver with its reason; `doit report` shows it, and bench/reference.py runs
the same checks over other projects' configs (without ktailor's waivers) to compare.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ktailor.core.errors import InputError, line_of
from ktailor.kconfig.fragments import Scope, parse_scope, toml_entries

CHECKS_FILE = "hardening-checks.toml"
WANT_RE = re.compile(r"^(y|n|>=\d+)$")


@dataclass(frozen=True)
class Check:
    symbol: str
    want: str  # y, n or >=N
    scope: Scope | None
    when: str | None  # applies only when this symbol is y
    source: str
    why: str
    line: int | None

    def applies(self, arch: str, version: tuple[int, int, int], config: dict[str, str]) -> bool:
        if self.scope is not None and not self.scope.applies(arch, version):
            return False
        return self.when is None or config.get(self.when) == "y"

    def passes(self, value: str | None) -> bool:
        if self.want == "y":
            return value == "y"
        if self.want == "n":
            return value in (None, "n")
        try:
            return value is not None and int(value, 0) >= int(self.want[2:])
        except ValueError:
            return False


@dataclass(frozen=True)
class Checks:
    path: Path
    checks: tuple[Check, ...]
    waivers: dict[tuple[str, str], str]  # (target, symbol) -> why


def load_checks(path: Path) -> Checks:
    text, entries = toml_entries(path, "check")
    checks = []
    for index, entry in enumerate(entries, start=1):
        symbol = str(entry.get("symbol", ""))
        line = line_of(text, f'"{symbol}"') if symbol else None
        want = str(entry.get("want", ""))
        well_formed = re.fullmatch(r"[A-Z0-9_]+", symbol) and not symbol.startswith("CONFIG_") and WANT_RE.match(want)
        if not well_formed or not entry.get("why") or not entry.get("source"):
            raise InputError(f'[[check]] #{index} needs symbol = "FOO" (no CONFIG_), want = "y", "n" or ">=N", '
                             'source = "KSPP" and a why = "…" sentence.', path=path, line=line)
        try:
            scope = parse_scope(entry["only"]) if entry.get("only") else None
        except ValueError as exc:
            raise InputError(f'[[check]] {symbol}: only = "{entry["only"]}" has {exc}, which is not arch=… or '
                             "version<op>X.Y; write e.g. only = \"arch=x86_64 version>=5.13\".", path=path, line=line) from None
        checks.append(Check(symbol, want, scope, entry.get("when"), str(entry["source"]), str(entry["why"]), line))
    _, waiver_entries = toml_entries(path, "waiver")
    waivers = {}
    for index, entry in enumerate(waiver_entries, start=1):
        if not entry.get("target") or not entry.get("symbol") or not entry.get("why"):
            raise InputError(f'[[waiver]] #{index} needs target = "x86_64-micro", symbol = "FOO" and why = "…": a '
                             "waiver without a reason is not one.", path=path, line=line_of(text, str(entry.get("symbol"))))
        waivers[(str(entry["target"]), str(entry["symbol"]))] = str(entry["why"])
    return Checks(path, tuple(checks), waivers)


def audit_hardening(checks: Checks, config: dict[str, str], *, arch: str, version: tuple[int, int, int],
                    target: str | None) -> dict:
    """Every applicable check's status (pass / fail / waived) and the score; `target` None: no waivers."""
    results = []
    for check in checks.checks:
        if not check.applies(arch, version, config):
            continue
        value = config.get(check.symbol)
        status = "pass" if check.passes(value) else "fail"
        entry = {"symbol": check.symbol, "want": check.want, "value": value if value is not None else "not set",
                 "status": status, "source": check.source, "why": check.why}
        if status == "fail" and target is not None and (target, check.symbol) in checks.waivers:
            entry |= {"status": "waived", "waiver": checks.waivers[(target, check.symbol)]}
        results.append(entry)
    passed = sum(r["status"] == "pass" for r in results)
    return {"score": f"{passed}/{len(results)}", "passed": passed, "applicable": len(results),
            "waived": sum(r["status"] == "waived" for r in results),
            "failing": [r for r in results if r["status"] == "fail"], "checks": results}


def render_hardening(result: dict) -> str:
    lines = [f"## Hardening audit: {result['score']} checks pass ({result['waived']} waived)", ""]
    shown = [r for r in result["checks"] if r["status"] != "pass"]
    if shown:
        lines += ["| check | wanted | final | status | why it matters / waiver |", "|---|---|---|---|---|"]
        lines += [f"| CONFIG_{r['symbol']} | {r['want']} | {r['value']} | {r['status']} | "
                  f"{'waived: ' + r['waiver'] if 'waiver' in r else r['why'] + ' (' + r['source'] + ')'} |" for r in shown]
    else:
        lines.append("Every applicable check passes.")
    return "\n".join(lines) + "\n"
