"""OpenVEX for an installed kernel: for every CVE that affects its version, whether this build has the code.

A scanner that sees "Linux 6.1.192" on a host flags every CVE of that version. The document written
beside the install manifest answers each of them: `not_affected` with justification
`vulnerable_code_not_present` when none of the files the fix touches was compiled into this kernel,
`affected` (with the fixing release when there is one) otherwise. Format: OpenVEX v0.2.0.
"""

from __future__ import annotations

import hashlib
import json
import time

from .compiled import Compiled
from .cves import Exposure, series_of

CONTEXT = "https://openvex.dev/ns/v0.2.0"


def product_id(version: str, target: str, config_sha256: str) -> str:
    return f"pkg:generic/linux@{version}?target={target}&config_sha256={config_sha256}"


def openvex(found: Exposure, compiled: Compiled, *, config_sha256: str, source: str) -> dict:
    product = {"@id": product_id(found.version, found.target, config_sha256)}
    series = series_of(found.version)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    statements = []
    for cve in found.applicable:
        fixed = cve.fixed_in(series)
        statements.append({
            "vulnerability": {"name": cve.id}, "products": [product], "status": "affected",
            "action_statement": (f"fixed in {fixed}: run `invoke security-update --apply`" if fixed else
                                 "no fix in this series is recorded yet"),
            "status_notes": "compiled in: " + ", ".join(sorted(compiled.touched(cve.files))),
        })
    for cve in found.not_applicable:
        statements.append({
            "vulnerability": {"name": cve.id}, "products": [product], "status": "not_affected",
            "justification": "vulnerable_code_not_present",
            "impact_statement": "none of the files its fix touches is compiled into this kernel: "
                                + ", ".join(sorted(cve.files)[:6]) + (" …" if len(cve.files) > 6 else ""),
        })
    digest = hashlib.sha256(json.dumps(statements, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "@context": CONTEXT,
        "@id": f"https://ktailor.invalid/vex/{found.target}/{found.version}/{digest}",
        "author": "ktailor", "role": "build system", "timestamp": now, "version": 1,
        "tooling": f"ktailor (CVE records: {source})",
        "statements": statements,
    }
