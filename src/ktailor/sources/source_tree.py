"""A kernel from the user's own tree (`source = "<path>"` in versions.toml): a vendor kernel, a git
checkout with local patches. Nothing is downloaded or extracted and the tree is never written to:
every build is out of tree (make O=…), and a tree that was built in place is refused (kbuild would
refuse it too, after minutes).

Staleness follows the tree's content, through its identity (source-identity.json in the build dir,
rewritten only when it changes, so that config and build rerun exactly then):
- a git work tree: HEAD, plus a digest of `git status --porcelain` and of `git diff HEAD` (tracked
  edits, staged or not) and of each untracked file's size and mtime — what a commit hash alone misses;
- any other tree: a digest of every file's path, size and mtime. Stat, not content: hashing a kernel
  tree's ~1.1 GB on every `doit` takes ~5 s here, the stat walk of its ~75,000 files a fraction of that,
  and an edit changes the mtime (a tool that restores mtimes while changing content is not caught).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

from ktailor.core.errors import InputError
from ktailor.core.records import read_optional, write_json_atomically

IN_TREE_BUILD = (".config", "include/config")  # what an in-tree build leaves, and kbuild's O= refuses


MAKEFILE_KEYS = ("VERSION", "PATCHLEVEL", "SUBLEVEL", "EXTRAVERSION")


def makefile_fields(tree: Path) -> dict[str, str]:
    """VERSION, PATCHLEVEL, SUBLEVEL and EXTRAVERSION as the tree's top Makefile assigns them (each stripped;
    absent keys left out): the one reader of a tree's release, for extraction, the explainer and source trees."""
    makefile = tree / "Makefile"
    head = makefile.read_text(errors="replace")[:4000]
    return {key: match[1].strip() for key in MAKEFILE_KEYS
            if (match := re.search(rf"^{key}\s*=[ \t]*(.*)$", head, re.MULTILINE))}


def makefile_version(tree: Path) -> tuple[str, str]:
    """("6.1.192", "-mine"): the release and EXTRAVERSION the tree's top Makefile declares."""
    try:
        values = makefile_fields(tree)
    except OSError as exc:
        raise InputError(f"is not a kernel source tree ({exc.strerror}: {tree / 'Makefile'}); point source at the top "
                         "directory of a Linux tree (the one holding Makefile, Kconfig and arch/).", path=tree) from None
    numbers = [values.get("VERSION", ""), values.get("PATCHLEVEL", ""), values.get("SUBLEVEL", "")]
    if not all(n.isdigit() for n in numbers):
        raise InputError(f"{tree / 'Makefile'} does not declare VERSION, PATCHLEVEL and SUBLEVEL as numbers; is this "
                         "the top of a Linux source tree?", path=tree)
    return ".".join(str(int(n)) for n in numbers), values.get("EXTRAVERSION", "")


def refuse_in_tree_build(tree: Path) -> None:
    if left := [name for name in IN_TREE_BUILD if (tree / name).exists()]:
        raise InputError(f"{tree} was built in place (it has {', '.join(left)}), and ktailor only builds out of tree "
                         f"(make O=…), which kbuild refuses for such a tree; run `make -C {tree} mrproper` "
                         "(it removes the in-tree build and its .config; save that first if you need it).")


def _git(tree: Path, *args: str) -> subprocess.CompletedProcess:
    # --no-optional-locks: a status must not rewrite the user's index
    return subprocess.run(["git", "--no-optional-locks", "-C", str(tree), *args], capture_output=True, check=False)


def is_git_tree(tree: Path) -> bool:
    done = _git(tree, "rev-parse", "--show-toplevel")
    return done.returncode == 0 and Path(done.stdout.decode().strip()).resolve() == tree.resolve()


def identity(tree: Path) -> dict:
    """What the tree holds now, as a small record: equal records mean nothing the build reads has changed."""
    if is_git_tree(tree):
        return _git_identity(tree)
    digest = hashlib.sha256()
    files = 0
    for directory, subdirs, names in os.walk(tree):
        subdirs[:] = sorted(d for d in subdirs if d != ".git")
        for name in sorted(names):
            path = os.path.join(directory, name)
            try:
                status = os.lstat(path)
            except OSError:
                continue
            digest.update(f"{os.path.relpath(path, tree)}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
            files += 1
    return {"path": str(tree), "kind": "stat", "files": files, "digest": digest.hexdigest()}


def _git_identity(tree: Path) -> dict:
    head = _git(tree, "rev-parse", "HEAD")
    if head.returncode != 0:
        raise InputError(f"{tree} is a git work tree without a commit ({head.stderr.decode().strip()}); commit the tree "
                         "first, so that its builds can name what they were made from.")
    status = _git(tree, "status", "--porcelain=v1", "-z", "--untracked-files=all").stdout
    diff = _git(tree, "diff", "HEAD", "--binary").stdout
    digest = hashlib.sha256(status + b"\0" + diff)
    for entry in status.split(b"\0"):
        if entry.startswith(b"?? "):  # untracked: no diff shows them
            try:
                stat = (tree / entry[3:].decode(errors="replace")).lstat()
                digest.update(entry + f"\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
            except OSError:
                pass
    commit_time = _git(tree, "log", "-1", "--format=%ct").stdout.decode().strip()
    return {"path": str(tree), "kind": "git", "commit": head.stdout.decode().strip(), "dirty": bool(status),
            "digest": digest.hexdigest(), "commit_time": int(commit_time) if commit_time.isdigit() else None}


def record_identity(tree: Path, out: Path) -> dict:
    """The identify step of a source kernel: check the tree, write its identity if it changed."""
    refuse_in_tree_build(tree)
    now = identity(tree)
    if read_optional(out) != now:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(out, now)
    return now


def unchanged(tree: Path, out: Path) -> bool:
    """doit's up-to-date check of the identify step: the recorded identity is the tree's now."""
    recorded = read_optional(out)
    return recorded is not None and tree.is_dir() and recorded == identity(tree)


def describe(record: dict) -> str:
    if record.get("kind") == "git":
        return f"git {record['commit'][:12]}" + (" with uncommitted changes" if record.get("dirty") else "")
    return f"{record.get('files')} files (stat digest {str(record.get('digest'))[:12]})"
