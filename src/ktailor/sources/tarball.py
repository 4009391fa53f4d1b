"""What a kernel tarball may hold, checked from its member headers before and while it is extracted.

Every member is judged (unsafe_reason): an absolute path, `..`, a link leaving the tree, a device or
fifo is refused. A listing pass (survey_tarball) reads headers until one top-level folder shows a
Makefile and a Kconfig, so a tarball that is not a Linux source tree is refused in those words; every
member counts against KERNEL_LIMITS, so a tarball bomb stops at the limit, not at a full disk.
"""

from __future__ import annotations

import lzma
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ktailor.core.errors import InputError


@dataclass(frozen=True)
class Limits:
    """The most a kernel tarball may hold; past either limit it is not a Linux source tree."""

    members: int
    size: int  # bytes: the members' sizes added up


# A Linux 6.12 tarball holds 92,452 members (files, folders, links) and 1.49 GB, growing a few percent a year:
# 250,000 members and 8 GiB leave room for decades of that, and still stop a tarball that would eat the build
# disk's inodes or space (millions of empty files, a 100 GB run of zeros that xz packs into kilobytes).
KERNEL_LIMITS = Limits(members=250_000, size=8 << 30)
# What every Linux source tree has directly in its top folder: kbuild's entry points (make reads the Makefile,
# every config target the Kconfig).
KERNEL_MARKERS = frozenset({"Makefile", "Kconfig"})


def unsafe_reason(member: tarfile.TarInfo, symlinks: set[PurePosixPath] | None = None) -> str | None:
    """Why this member must not be extracted, or None when it is safe.

    Give every member of one archive the same `symlinks` set: a path that steps through an earlier
    symlink looks safe by name but is resolved by the filesystem (`a/up -> ..`, then `a/up/x -> ../..`).
    """
    seen = symlinks if symlinks is not None else set()
    name = PurePosixPath(member.name)
    if name.is_absolute():
        return "has an absolute path"
    if ".." in name.parts:
        return "contains '..'"
    if member.isdev() or member.isfifo():
        return "is a device file or fifo"
    crossed = _symlink_crossed(name, seen)
    if crossed:
        return f"lies under the symlink {str(crossed)!r}, which could lead outside the tree"
    return _link_reason(member, name, seen)


def _link_reason(member: tarfile.TarInfo, name: PurePosixPath, seen: set[PurePosixPath]) -> str | None:
    """Why a link member points outside the tree, or None; a safe symlink is added to `seen`."""
    target = PurePosixPath(member.linkname)
    if member.issym():
        resolved = _normalise(name.parent / target)
        # Inside the extraction root is not enough: the root becomes the tree's parent once renamed.
        if target.is_absolute() or resolved is None or resolved.parts[:1] != name.parts[:1]:
            return f"is a symlink to {member.linkname!r}, outside the tree"
        if _symlink_crossed(name.parent / target, seen):
            return f"is a symlink to {member.linkname!r}, through another symlink that could lead outside the tree"
        seen.add(name)
    elif member.islnk() and (target.is_absolute() or _normalise(target) is None or _symlink_crossed(target, seen)):
        return f"is a hard link to {member.linkname!r}, outside the tree"
    return None


def _symlink_crossed(path: PurePosixPath, symlinks: set[PurePosixPath]) -> PurePosixPath | None:
    """The first of `symlinks` that `path` steps into or out of (its last component may be one)."""
    if not symlinks:
        return None
    names = {str(link) for link in symlinks}  # compare strings: this runs for every member of the tarball
    parts: list[str] = []
    for part in path.parts:
        if part in (".", ""):
            continue
        if parts and "/".join(parts) in names:
            return PurePosixPath(*parts)
        if part == "..":
            if parts:
                parts.pop()
        else:
            parts.append(part)
    return None


def _normalise(path: PurePosixPath) -> PurePosixPath | None:
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return PurePosixPath(*parts)


def not_a_kernel_tree(tarball: Path, why: str) -> InputError:
    return InputError(f"is not a Linux source tree: {why}. Nothing of it was kept. Check this kernel's entry in "
                      "versions.toml: its sha256 must be the one kernel.org's sha256sums.asc gives for this release, "
                      "and its mirror must serve that tarball (a mirror may serve another file under the name).",
                      path=tarball)


class Survey:
    """What the member headers read so far say: how much the archive holds (held to `limits`), and whether one
    of its top-level folders has the KERNEL_MARKERS."""

    def __init__(self, tarball: Path, limits: Limits) -> None:
        self.tarball, self.limits = tarball, limits
        self.members = self.size = 0
        self.tops: dict[str, set[str]] = {}  # each top-level name -> the KERNEL_MARKERS found directly in it
        self.folders: set[str] = set()

    def add(self, member: tarfile.TarInfo) -> None:
        self.members += 1
        self.size += max(member.size, 0)
        if self.members > self.limits.members:
            raise not_a_kernel_tree(self.tarball, f"it holds over {self.limits.members:,} members, more than a kernel "
                                    "tree ever has, and was stopped there")
        if self.size > self.limits.size:
            raise not_a_kernel_tree(self.tarball, f"its members add up to over {self.limits.size:,} bytes, more than a "
                                    "kernel tree ever holds, and it was stopped there")
        parts = PurePosixPath(member.name).parts
        if not parts:
            return
        found = self.tops.setdefault(parts[0], set())
        if len(parts) > 1 or member.isdir():
            self.folders.add(parts[0])
        if len(parts) == 2 and parts[1] in KERNEL_MARKERS and member.isfile():
            found.add(parts[1])

    @property
    def is_kernel_tree(self) -> bool:
        return any(found == KERNEL_MARKERS for found in self.tops.values())

    def check_kernel_tree(self) -> None:
        if self.is_kernel_tree:
            return
        shown = [f"{name}/ without {' or '.join(sorted(KERNEL_MARKERS - self.tops[name]))}" if name in self.folders
                 else name for name in sorted(self.tops)[:5]]
        more = f" and {len(self.tops) - 5:,} more" if len(self.tops) > 5 else ""
        raise not_a_kernel_tree(self.tarball, "no top-level folder in it holds both a Makefile and a Kconfig "
                                f"(its top level: {', '.join(shown) or 'nothing'}{more})")


def survey_tarball(tarball: Path, limits: Limits = KERNEL_LIMITS) -> None:
    """The listing pass: read member headers, writing nothing, until a top-level folder shows a Makefile and a
    Kconfig; InputError if none does (or the limits are passed first)."""
    survey = Survey(tarball, limits)
    try:
        # tarfile's default buffer: with 1 MiB, each 512-byte header read would copy megabytes of decompressed
        # buffer (measured: 8 s instead of 1 s to the Makefile of Debian's 6.12 tarball).
        with tarfile.open(tarball, mode="r|xz") as archive:
            for member in archive:
                survey.add(member)
                if survey.is_kernel_tree:
                    return
    except (tarfile.TarError, EOFError, lzma.LZMAError) as exc:
        raise InputError(f"is not a valid .tar.xz ({exc}); delete it and download again.", path=tarball) from None
    survey.check_kernel_tree()
