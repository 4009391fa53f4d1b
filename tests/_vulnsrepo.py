"""A small vulns.git in tmp, in the kernel CNA's real layout and record format.

`cve/published/<year>/CVE-<year>-<n>.json` (CVE JSON 5: an `affected` entry with git ranges and the
stable-branch semver ranges, one with `defaultStatus: "affected"` and the unaffected rules, both with
`programFiles`; `metrics[].cvssV3_1` on some) plus `.sha1` and `.dyad` siblings, committed with git.
The records are written for these tests (same structure as the CNA's, e.g. CVE-2024-26581).
The records are placed around one kernel version (`base`, default 6.1.4): "{s}.{p+1}" below is the
next point release of its series. Their files are real kernel files: the fake kernel
(tests/fakelinux) compiles drivers/md/dm-crypt.c, fs/ext4/inode.c and arch/<ARCH>/kernel/setup.c,
all including include/linux/jbd2.h, and so does every real micro/mini target.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

# id, files, introduced, {series: first fixed release}, mainline fix, backport range, cvss (score, severity)
RECORDS = [
    ("CVE-2026-0001", ["drivers/md/dm-crypt.c"], "4.0", {"{s}": "{s}.{p+1}", "6.13": "6.13.9"}, "6.14", None,
     (7.8, "HIGH")),
    ("CVE-2026-0002", ["drivers/usb/core/hub.c"], "4.19", {"{s}": "{s}.{p+1}"}, "6.14", None, (9.1, "CRITICAL")),
    ("CVE-2026-0003", ["sound/core/pcm_native.c"], "5.4", {"{s}": "{s}.{p+2}"}, "6.15", None, None),
    # a bug backported into {s}.{p-2} by a stable commit, fixed in {s}.{p+1} (introduced upstream in 6.14)
    ("CVE-2026-0004", ["fs/ext4/inode.c", "include/linux/jbd2.h"], "6.14", {"6.14": "6.14.3"}, "6.15",
     ("{s}.{p-2}", "{s}.{p+1}"), (9.8, "CRITICAL")),
    ("CVE-2026-0005", ["arch/arm64/kernel/setup.c"], "4.0", {"{s}": "{s}.{p+1}"}, "6.14", None, (5.5, "MEDIUM")),
    # a fix in a header only, not yet in any release of the series
    ("CVE-2026-0006", ["include/linux/jbd2.h"], "4.0", {}, "6.16", None, (5.5, "MEDIUM")),
    # fixed long before the version under test
    ("CVE-2025-0007", ["drivers/md/dm-crypt.c"], "4.0", {"{s}": "{s}.{p-3}"}, "6.2", None, (7.0, "HIGH")),
]


def _at(text: str, base: str) -> str:
    series, _, patch = base.rpartition(".")
    for offset in (-3, -2, 2, 1):
        text = text.replace(f"{{p{offset:+d}}}", str(int(patch) + offset))
    return text.replace("{s}", series)


def record(cve_id: str, files: list[str], introduced: str, fixed: dict[str, str], mainline: str,
           backport: tuple[str, str] | None, cvss: tuple[float, str] | None) -> dict:
    git_versions = [{"version": "1da177e4c3f4" + "0" * 28, "lessThan": f"{abs(hash(cve_id + s)) % 16**12:012x}",
                     "status": "affected", "versionType": "git"} for s in fixed]
    first = {"product": "Linux", "vendor": "Linux", "defaultStatus": "unaffected",
             "repo": "https://git.kernel.org/pub/scm/linux/kernel/git/stable/linux.git", "programFiles": files,
             "versions": git_versions + ([{"version": backport[0], "lessThan": backport[1], "status": "affected",
                                           "versionType": "semver"}] if backport else [])}
    rules = [{"version": introduced, "status": "affected"},
             {"version": "0", "lessThan": introduced, "status": "unaffected", "versionType": "semver"}]
    rules += [{"version": version, "lessThanOrEqual": f"{series}.*", "status": "unaffected", "versionType": "semver"}
              for series, version in fixed.items()]
    rules.append({"version": mainline, "lessThanOrEqual": "*", "status": "unaffected",
                  "versionType": "original_commit_for_fix"})
    second = {"product": "Linux", "vendor": "Linux", "defaultStatus": "affected",
              "repo": "https://git.kernel.org/pub/scm/linux/kernel/git/stable/linux.git", "programFiles": files,
              "versions": rules}
    cna: dict = {"providerMetadata": {"orgId": "f4215fc3-5b6b-47ff-a258-f7189bd81038"},
                 "descriptions": [{"lang": "en", "value": f"In the Linux kernel, {cve_id} has been resolved."}],
                 "affected": [first, second], "title": f"test record {cve_id}",
                 "references": [{"url": "https://git.kernel.org/stable/c/" + "ab" * 20}],
                 "x_generator": {"engine": "bippy-1.2.0"}}
    if cvss:
        cna["metrics"] = [{"cvssV3_1": {"version": "3.1", "vectorString": "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H",
                                        "baseScore": cvss[0], "baseSeverity": cvss[1]}}]
    return {"containers": {"cna": cna}, "cveMetadata": {"assignerOrgId": "f4215fc3-5b6b-47ff-a258-f7189bd81038",
                                                        "cveId": cve_id, "state": "PUBLISHED"},
            "dataType": "CVE_RECORD", "dataVersion": "5.1"}


def make_vulns_repo(root: Path, base: str = "6.1.4") -> Path:
    """Write and commit the records around `base`; returns the repository (a path, or as file://…)."""
    for cve_id, files, introduced, fixed_at, mainline, backport_at, cvss in RECORDS:
        fixed = {_at(series, base): _at(version, base) for series, version in fixed_at.items()}
        backport = (_at(backport_at[0], base), _at(backport_at[1], base)) if backport_at else None
        year = cve_id.split("-")[1]
        folder = root / "cve" / "published" / year
        folder.mkdir(parents=True, exist_ok=True)
        data = record(cve_id, files, introduced, fixed, mainline, backport, cvss)
        (folder / f"{cve_id}.json").write_text(json.dumps(data, indent=3) + "\n")
        (folder / f"{cve_id}.sha1").write_text("ab" * 20 + "\n")
        dyad = [f"{introduced}:{'0' * 40}:{version}:{'ab' * 20}" for version in fixed.values()]
        (folder / f"{cve_id}.dyad").write_text("# dyad version: test\n" + "\n".join(dyad) + "\n")
    (root / "cve" / "rejected").mkdir(parents=True, exist_ok=True)
    (root / "cve" / "published" / "2026" / "CVE-2026-0099.json").write_text("{ not json")  # a broken record
    git = ["git", "-C", str(root), "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "records"], check=True)
    return root
