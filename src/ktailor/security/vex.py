"""OpenVEX for an installed kernel: for every CVE that affects its version, whether this build has the code.

A scanner that sees "Linux 6.1.192" on a host flags every CVE of that version. The document written
beside the install manifest answers each of them: `not_affected` with justification
`vulnerable_code_not_present` when none of the files the fix touches was compiled into this kernel,
`affected` (with the fixing release when there is one) when one was, and `under_investigation` when that
cannot be told: the record names no files, or leaves this version's status unknown. Format: OpenVEX v0.2.0.

The same inputs give the same document: statements are sorted (by status, then CVE id), the `@id` is a
digest of them, and the caller passes the timestamp (the build's finished time); only without one is
the document stamped with the current time.
"""

from __future__ import annotations

import hashlib
import json
import time

from ktailor.farm.compiled import Compiled
from ktailor.security.cves import Cve, Exposure, series_of

CONTEXT = "https://openvex.dev/ns/v0.2.0"


def product_id(version: str, target: str, config_sha256: str) -> str:
    return f"pkg:generic/linux@{version}?target={target}&config_sha256={config_sha256}"


def openvex(found: Exposure, compiled: Compiled, *, config_sha256: str, source: str,
            timestamp: str | None = None) -> dict:
    product = {"@id": product_id(found.version, found.target, config_sha256)}
    series = series_of(found.version)
    statements = ([_affected(cve, product, compiled, series) for cve in _by_id(found.applicable)]
                  + [_under_investigation(cve, product, found.version) for cve in _by_id(found.unknown)]
                  + [_not_affected(cve, product) for cve in _by_id(found.not_applicable)])
    digest = hashlib.sha256(json.dumps(statements, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "@context": CONTEXT,
        "@id": f"https://ktailor.invalid/vex/{found.target}/{found.version}/{digest}",
        "author": "ktailor", "role": "build system", "version": 1,
        "timestamp": timestamp or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tooling": f"ktailor (CVE records: {source})",
        "statements": statements,
    }


def _by_id(cves: list[Cve]) -> list[Cve]:
    return sorted(cves, key=lambda cve: cve.id)


def _affected(cve: Cve, product: dict, compiled: Compiled, series: tuple[int, int]) -> dict:
    fixed = cve.fixed_in(series)
    return {"vulnerability": {"name": cve.id}, "products": [product], "status": "affected",
            "action_statement": (f"fixed in {fixed}: run `invoke security-update --apply`" if fixed else
                                 "no fix in this series is recorded yet"),
            "status_notes": "compiled in: " + ", ".join(sorted(compiled.touched(cve.files)))}


def _under_investigation(cve: Cve, product: dict, version: str) -> dict:
    reasons = []
    if cve.status(version) == "unknown":
        reasons.append(f"the CVE record leaves the status of Linux {version} unknown")
    if not cve.files:
        reasons.append("the CVE record names no files (programFiles), so whether this kernel compiles the "
                       "vulnerable code cannot be told")
    return {"vulnerability": {"name": cve.id}, "products": [product], "status": "under_investigation",
            "status_notes": "; ".join(reasons)}


def _not_affected(cve: Cve, product: dict) -> dict:
    return {"vulnerability": {"name": cve.id}, "products": [product], "status": "not_affected",
            "justification": "vulnerable_code_not_present",
            "impact_statement": "none of the files its fix touches is compiled into this kernel: "
                                + ", ".join(sorted(cve.files)[:6]) + (" …" if len(cve.files) > 6 else "")}
