"""Extract a kernel tarball safely and fast, into a temp dir renamed into place; apply patches.

Speed: GNU tar does the writing and `xz -T0` the decompression; Python reads the same byte stream
(tee) and checks every member header as it passes. Any unsafe member (absolute path, `..`, a link
leaving the tree, a device or fifo) aborts the extraction and removes the temp dir, so nothing
unsafe survives. Without GNU tar or xz it falls back to tarfile with the 'data' filter.
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import IO

from .errors import EnvironmentProblem, InputError
from .progress import bar

CHUNK = 1 << 20
STAMP = ".ktailor-extracted"


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


class _Tee:
    """A read-only file object that forwards every byte it hands out to a sink."""

    def __init__(self, source: IO[bytes], sink: IO[bytes], progress) -> None:
        self.source, self.sink, self.progress = source, sink, progress

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size if size and size > 0 else CHUNK)
        if data:
            self.sink.write(data)
            self.progress.update(len(data))
        return data


def extract_tarball(tarball: Path, destination: Path, patches_dir: Path | None = None) -> Path:
    """Extract `tarball` so that its single top-level folder becomes `destination`; returns it."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        if shutil.which("xz") and shutil.which("tar"):
            _extract_piped(tarball, temp)
        else:
            _extract_tarfile(tarball, temp)
        entries = [p for p in temp.iterdir()]
        if len(entries) != 1 or not entries[0].is_dir():
            names = ", ".join(sorted(p.name for p in entries)[:5])
            raise InputError(f"tarball should hold one top-level folder, found: {names}; is this a kernel tarball?",
                             path=tarball)
        tree = entries[0]
        if not (tree / "Makefile").is_file() or not (tree / "Kconfig").is_file():
            raise InputError("tarball has no top-level Makefile and Kconfig; it is not a Linux source tree.", path=tarball)
        if patches_dir is not None:
            apply_patches(tree, patches_dir)
        (tree / STAMP).write_text(f"{tarball.name}\n")
        if destination.exists():
            shutil.rmtree(destination)
        tree.rename(destination)
        return destination
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _extract_piped(tarball: Path, temp: Path) -> None:
    xz = subprocess.Popen(["xz", "-T0", "-dc", str(tarball)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tar = subprocess.Popen(
        ["tar", "-x", "-f", "-", "-C", str(temp), "--no-same-owner", "--no-same-permissions", "--delay-directory-restore"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert xz.stdout is not None and tar.stdin is not None
    problem = None
    with bar(total=_uncompressed_size(tarball), unit="B", unit_scale=True, desc=f"extract {tarball.name}") as progress:
        tee = _Tee(xz.stdout, tar.stdin, progress)
        try:
            with tarfile.open(fileobj=tee, mode="r|", bufsize=CHUNK) as archive:  # type: ignore[call-overload]
                symlinks: set[PurePosixPath] = set()
                for member in archive:
                    reason = unsafe_reason(member, symlinks)
                    if reason:
                        problem = f"member {member.name!r} {reason}"
                        break
            # Forward the tar end-of-archive padding that tarfile did not need to read.
            while tee.read(CHUNK):
                pass
        except (tarfile.TarError, EOFError) as exc:
            problem = f"is not a valid tar stream ({exc})"
        except BrokenPipeError:
            problem = "could not be written out by tar"
        finally:
            if problem:
                tar.kill()
                xz.kill()
            tar.stdin.close()
            xz.stdout.close()
    tar_err = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
    xz_err = xz.stderr.read().decode(errors="replace") if xz.stderr else ""
    tar_rc, xz_rc = tar.wait(), xz.wait()
    if problem:
        raise InputError(f"refusing to extract: {problem}; the tarball is corrupt or hostile, delete it and download again.",
                         path=tarball)
    if xz_rc != 0:
        raise InputError(f"xz could not decompress it ({xz_err.strip()}); delete it and download again.", path=tarball)
    if tar_rc != 0:
        raise EnvironmentProblem(f"tar failed extracting {tarball}: {tar_err.strip()[-500:]}; check free disk space.")


def _uncompressed_size(tarball: Path) -> int | None:
    """The tar stream's size from the xz index (instant), to size the progress bar."""
    listing = subprocess.run(["xz", "--robot", "--list", str(tarball)], capture_output=True, text=True)
    for line in listing.stdout.splitlines():
        fields = line.split("\t")
        if fields[0] == "totals" and len(fields) > 4 and fields[4].isdigit():
            return int(fields[4])
    return None


def _extract_tarfile(tarball: Path, temp: Path) -> None:
    try:
        with tarfile.open(tarball, mode="r:xz") as archive:
            members: list[tarfile.TarInfo] = []
            symlinks: set[PurePosixPath] = set()
            for member in archive:
                reason = unsafe_reason(member, symlinks)
                if reason:
                    raise InputError(f"refusing to extract: member {member.name!r} {reason}; the tarball is hostile.",
                                     path=tarball)
                members.append(member)
            archive.extractall(temp, members=members, filter="data")
    except tarfile.FilterError as exc:  # the 'data' filter is the second line of defence
        raise InputError(f"refusing to extract: {exc}; the tarball is hostile.", path=tarball) from exc
    except (tarfile.TarError, EOFError, lzma.LZMAError) as exc:
        raise InputError(f"is not a valid .tar.xz ({exc}); delete it and download again.", path=tarball) from exc


def apply_patches(tree: Path, patches_dir: Path) -> list[Path]:
    """Apply patches/<major.minor>/*.patch in name order with `patch -p1`; stop at the first failure."""
    patches = sorted(patches_dir.glob("*.patch")) if patches_dir.is_dir() else []
    for patch in patches:
        result = subprocess.run(["patch", "-p1", "--forward", "--batch", "-i", str(patch.resolve())],
                                cwd=tree, capture_output=True, text=True)
        if result.returncode != 0:
            raise InputError(
                f"does not apply to {tree.name}: {result.stdout.strip()[-400:]} "
                "Refresh the patch for this kernel version or remove it.",
                path=patch,
            )
    return patches


def patches_for(patches_root: Path, series: str) -> list[Path]:
    folder = patches_root / series
    return sorted(folder.glob("*.patch")) if folder.is_dir() else []


def is_extracted(tree: Path) -> bool:
    return (tree / STAMP).is_file()


__all__ = ["STAMP", "apply_patches", "extract_tarball", "is_extracted", "patches_for", "unsafe_reason"]
