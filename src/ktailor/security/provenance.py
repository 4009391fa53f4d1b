"""Provenance of an install: an in-toto Statement (v1) with a SLSA Provenance (v1) predicate, unsigned.

It links what went in to what came out: the kernel tarball (URL and the sha256 versions.toml pins),
the fragments (each file's sha256, and the checkout's git commit when there is one), the toolchain and
make variables, and, as the statement's subjects, every installed file with its sha256. It goes into
the install's manifest.json (`provenance`), beside the evidence the install gate checked.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ktailor import __version__
from ktailor.core.records import sha256_of

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/ktailor/ktailor/build/v1"  # what externalParameters mean: README, "Install"


def checkout_commit(root: Path) -> dict | None:
    """The git commit of the checkout the fragments came from (and whether it had local changes), or None."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "fragments"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"sha1": head.stdout.strip(), "fragments_modified": bool(status.stdout.strip())}


def statement(*, subjects: dict[str, str], version: str, target: str, tarball_url: str, tarball_sha256: str,
              fragments: dict[str, Path], commit: dict | None, make_vars: dict, toolchain: str,
              build: dict, checks: dict, checksum_source: dict | None = None, source_tree: dict | None = None) -> dict:
    """`subjects`: installed name -> sha256; `fragments`: display path -> file; `checks`: verify/boot/reproduce
    verdicts; `checksum_source`: the signed sha256sums line the pinned tarball sha256 came from (upgrade.py)."""
    dependencies = []
    if checksum_source:
        dependencies.append({"uri": checksum_source["url"], "digest": {"sha256": checksum_source["sha256sums_sha256"]},
                             "annotations": {"line": checksum_source["line"],
                                             "authenticated": checksum_source["authenticated"],
                                             "signed_at": checksum_source.get("signed_at")}})
    if source_tree is not None:  # the user's own tree (source_tree.py): its path and what it held
        tree_uri = Path(source_tree["path"]).as_uri()
        if source_tree.get("kind") == "git":
            dependencies.append({"uri": f"git+{tree_uri}@{source_tree['commit']}",
                                 "digest": {"gitCommit": source_tree["commit"]},
                                 "annotations": {"uncommitted_changes": source_tree.get("dirty"),
                                                 "changes_sha256": source_tree.get("digest")}})
        else:
            dependencies.append({"uri": tree_uri, "annotations": {"stat_sha256": source_tree.get("digest"),
                                                                  "files": source_tree.get("files")}})
    else:
        dependencies.append({"uri": tarball_url, "digest": {"sha256": tarball_sha256},
                             "annotations": {"checksum_from": checksum_source["url"] if checksum_source else
                                             "the sha256 pinned in versions.toml"}})
    dependencies += [{"uri": name, "digest": {"sha256": sha256_of(path)}} for name, path in fragments.items()]
    if commit:
        dependencies.append({"uri": "git+checkout", "digest": {"sha1": commit["sha1"]},
                             "annotations": {"fragments_modified": commit["fragments_modified"]}})
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest}} for name, digest in sorted(subjects.items())],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"version": version, "target": target, "fragments": sorted(fragments)},
                "internalParameters": {"make_vars": make_vars, "toolchain": toolchain},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": f"ktailor/{__version__}"},
                "metadata": {"finishedOn": build.get("finished_at")},
                "byproducts": [{"name": "checks", "annotations": checks}],
            },
        },
    }
