"""Extract a kernel tarball safely and fast, into a temp dir renamed into place; apply patches.

Speed: GNU tar does the writing and `xz -T0` the decompression; Python reads the same byte stream
(tee) and checks every member header as it passes. Any unsafe member (absolute path, `..`, a link
leaving the tree, a device or fifo) aborts the extraction and removes the temp dir, so nothing
unsafe survives. Without GNU tar or xz it falls back to tarfile with the 'data' filter.

Before anything is written, a listing pass reads member headers until one top-level folder shows
a Makefile and a Kconfig (in a 6.12 tarball, after 10,866 of its 92,452 members: about a second),
so a tarball that is not a Linux source tree is refused in those words, not by make later. Every
member also counts against KERNEL_LIMITS, so a tarball bomb stops at the limit, not at a full disk.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import IO

from ktailor.core.errors import EnvironmentProblem, InputError
from ktailor.core.processes import start, stop
from ktailor.core.progress import bar, info
from ktailor.project.layout import STAMP
from ktailor.sources.source_tree import describe, makefile_fields, record_identity, unchanged
from ktailor.sources.tarball import (
    KERNEL_LIMITS,
    KERNEL_MARKERS,
    Limits,
    Survey,
    not_a_kernel_tree,
    survey_tarball,
    unsafe_reason,
)
from ktailor.stages.base import PER_KERNEL, Context, Stage, removes

CHUNK = 1 << 20
SOURCE_DATE = ".ktailor-source-date"  # newest member mtime of the tarball (Unix time): the build's timestamp


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


def extract_tarball(tarball: Path, destination: Path, patches_dir: Path | None = None,
                    version: str | None = None, *, limits: Limits = KERNEL_LIMITS) -> Path:
    """Extract `tarball` so that its single top-level folder becomes `destination`; returns it.
    `version`: the release the tree must be (its Makefile's VERSION.PATCHLEVEL.SUBLEVEL); `limits`: the most
    it may hold."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(destination)
    try:
        temp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    except OSError as exc:
        raise EnvironmentProblem(f"cannot create a directory in {destination.parent} ({exc.strerror}).") from None
    try:
        piped = shutil.which("xz") and shutil.which("tar")
        newest = _extract_piped(tarball, temp, limits) if piped else _extract_tarfile(tarball, temp, limits)
        entries = [p for p in temp.iterdir()]
        if len(entries) != 1 or not entries[0].is_dir():
            names = ", ".join(sorted(p.name for p in entries)[:5])
            raise InputError(f"tarball should hold one top-level folder, found: {names}; is this a kernel tarball?",
                             path=tarball)
        tree = entries[0]
        if not all((tree / name).is_file() for name in KERNEL_MARKERS):  # a later member replaced one
            raise not_a_kernel_tree(tarball, f"{tree.name}/ has no Makefile and Kconfig once extracted")
        if version is not None:
            check_tree_version(tree, version, tarball)
        if patches_dir is not None:
            apply_patches(tree, patches_dir)
        (tree / SOURCE_DATE).write_text(f"{newest}\n")
        (tree / STAMP).write_text(f"{tarball.name}\n")
        if destination.exists():
            shutil.rmtree(destination)
        tree.rename(destination)
        return destination
    except OSError as exc:
        raise EnvironmentProblem(f"extracting {tarball.name} into {destination.parent} failed ({exc.strerror}: "
                                 f"{exc.filename}); check free disk space and permissions there.") from None
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def leftovers(destination: Path) -> list[Path]:
    """Temp dirs of extractions of this tree that were killed before they could clean up (~1 GB each)."""
    if not destination.parent.is_dir():
        return []
    return sorted(p for p in destination.parent.glob(f".{destination.name}.*") if p.is_dir())


def remove_leftovers(destination: Path) -> None:
    for path in leftovers(destination):
        shutil.rmtree(path, ignore_errors=True)


def tree_version(tree: Path) -> str | None:
    """VERSION.PATCHLEVEL.SUBLEVEL from the tree's top-level Makefile (SUBLEVEL 0 is a release like 6.1)."""
    fields = makefile_fields(tree)
    if not all(fields.get(k, "").isdigit() for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL")):
        return None
    version = f"{fields['VERSION']}.{fields['PATCHLEVEL']}"
    return version if fields["SUBLEVEL"] == "0" else f"{version}.{fields['SUBLEVEL']}"


def check_tree_version(tree: Path, version: str, tarball: Path) -> None:
    found = tree_version(tree)
    if found != version:
        said = f"Linux {found}" if found else "no VERSION/PATCHLEVEL/SUBLEVEL lines"
        raise InputError(f"is named for Linux {version} but its Makefile says {said}: the mirror serves another "
                         "release under this name. Nothing was extracted; check the mirror (and its sha256sums), "
                         "or fix the version in versions.toml.", path=tarball)


def _extract_piped(tarball: Path, temp: Path, limits: Limits) -> int:
    survey_tarball(tarball, limits)
    # stderr goes to files, not pipes: a tar that warns about every member (future timestamps) would
    # otherwise fill a pipe nobody reads until the end, and hang forever.
    with tempfile.TemporaryFile() as xz_log, tempfile.TemporaryFile() as tar_log:
        xz = start(["xz", "-T0", "-dc", str(tarball)], stdout=subprocess.PIPE, stderr=xz_log)
        # --touch: every file gets the extraction time, so objects built from an earlier tree are older
        # than the sources and make rebuilds them (archive mtimes would make the old objects look current).
        tar = start(["tar", "-x", "-f", "-", "-C", str(temp), "--no-same-owner", "--no-same-permissions",
                     "--delay-directory-restore", "--touch"], stdin=subprocess.PIPE, stderr=tar_log)
        try:
            problem, newest = _stream_checked(tarball, xz, tar, Survey(tarball, limits))
        except BaseException:
            stop(tar)
            stop(xz)
            raise
        tar_rc, xz_rc = tar.wait(), xz.wait()
        xz_log.seek(0)
        tar_log.seek(0)
        xz_err = xz_log.read()[-2000:].decode(errors="replace")
        tar_err = tar_log.read()[-2000:].decode(errors="replace")
    if problem == BROKEN_PIPE and tar_rc != 0:
        problem = None  # tar stopped reading: its own error below says why (a full disk, most often)
    if problem:
        raise InputError(f"refusing to extract: {problem}; the tarball is corrupt or hostile, delete it and download again.",
                         path=tarball)
    if xz_rc != 0 and tar_rc == 0:
        raise InputError(f"xz could not decompress it ({xz_err.strip()}); delete it and download again.", path=tarball)
    if tar_rc != 0:
        disk = "No space left on device" in tar_err
        raise EnvironmentProblem(f"tar failed extracting {tarball}: {tar_err.strip()[-500:]}; "
                                 + ("the disk is full: free space in the build dir (KTAILOR_BUILD_DIR)." if disk
                                    else "check free disk space and permissions in the build dir."))
    return newest


BROKEN_PIPE = "could not be written out by tar"


def _stream_checked(tarball: Path, xz, tar, survey: Survey) -> tuple[str | None, int]:
    """Feed xz's output to tar while checking every member header; (the first problem or None, the newest
    member mtime). Past the survey's limits it raises (the caller stops tar and removes what it wrote)."""
    problem = None
    newest = 0
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
                    survey.add(member)
                    newest = max(newest, int(member.mtime))
            # Forward the tar end-of-archive padding that tarfile did not need to read.
            while tee.read(CHUNK):
                pass
        except (tarfile.TarError, EOFError) as exc:
            problem = f"is not a valid tar stream ({exc})"
        except BrokenPipeError:
            problem = BROKEN_PIPE
        finally:
            if problem:
                stop(tar)
                stop(xz)
            with contextlib.suppress(BrokenPipeError):
                tar.stdin.close()
            xz.stdout.close()
    return problem, newest


def _uncompressed_size(tarball: Path) -> int | None:
    """The tar stream's size from the xz index (instant), to size the progress bar."""
    listing = subprocess.run(["xz", "--robot", "--list", str(tarball)], capture_output=True, text=True)
    for line in listing.stdout.splitlines():
        fields = line.split("\t")
        if fields[0] == "totals" and len(fields) > 4 and fields[4].isdigit():
            return int(fields[4])
    return None


def _extract_tarfile(tarball: Path, temp: Path, limits: Limits) -> int:
    try:
        with tarfile.open(tarball, mode="r:xz") as archive:
            members: list[tarfile.TarInfo] = []
            symlinks: set[PurePosixPath] = set()
            survey = Survey(tarball, limits)
            for member in archive:  # the listing pass: every header is read before anything is written
                reason = unsafe_reason(member, symlinks)
                if reason:
                    raise InputError(f"refusing to extract: member {member.name!r} {reason}; the tarball is hostile.",
                                     path=tarball)
                survey.add(member)
                members.append(member)
            survey.check_kernel_tree()
            archive.extractall(temp, members=members, filter="data")
        now = time.time()  # as tar --touch: sources newer than any object built from an earlier tree
        for path in temp.rglob("*"):
            if not path.is_symlink():
                os.utime(path, (now, now))
        return max((int(m.mtime) for m in members), default=0)
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


def source_date(tree: Path, env: dict[str, str] | None = None) -> int | None:
    """The build's timestamp: SOURCE_DATE_EPOCH when set, else the tarball's newest file (recorded at extraction)."""
    env = os.environ if env is None else env
    value = env.get("SOURCE_DATE_EPOCH") or ((tree / SOURCE_DATE).read_text().strip() if (tree / SOURCE_DATE).is_file() else "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def is_extracted(tree: Path) -> bool:
    return (tree / STAMP).is_file()


__all__ = ["KERNEL_LIMITS", "STAMP", "Limits", "apply_patches", "extract_tarball", "is_extracted", "leftovers",
           "patches_for", "survey_tarball", "tree_version", "unsafe_reason"]


# --- the stage ---------------------------------------------------------------------------------
def run(ctx: Context) -> None:
    """Unpack the tarball (and apply patches/<series>/) once for all the kernel's targets; a kernel built
    from the user's own tree is identified instead (git HEAD and changes, or a stat digest), never written."""
    from ktailor.stages.download import check_cached

    project, kernel = ctx.project, ctx.the_kernel
    if kernel.source is not None:
        record = record_identity(project.source_tree(kernel), project.source_stamp(kernel))
        info(f"source of {kernel.version}{kernel.extraversion}: {project.source_tree(kernel)} ({describe(record)})")
        return
    started = time.monotonic()
    check_cached(project.tarball(kernel), kernel.sha256)
    tree = extract_tarball(project.tarball(kernel), project.source_tree(kernel), project.patches_root / kernel.series,
                           version=kernel.version)
    info(f"extracted {kernel.tarball_name} into {project.display(tree)} in {time.monotonic() - started:.1f}s")


def source_unchanged(task, values, tree: str, identity: str) -> bool:  # doit uptodate callable
    return unchanged(Path(tree), Path(identity))


def _doc(ctx: Context) -> str:
    tree = ctx.project.display(ctx.project.source_tree(ctx.the_kernel))
    if ctx.the_kernel.source is not None:
        return f"identify the source tree {tree} (git HEAD and changes, or a stat digest)"
    return f"extract linux-{ctx.the_kernel.version} into {tree}"


def _inputs(ctx: Context) -> list[Path]:
    kernel = ctx.the_kernel
    if kernel.source is not None:
        return []
    return [ctx.project.tarball(kernel), *sorted((ctx.project.patches_root / kernel.series).glob("*.patch"))]


STAGE = Stage(
    "extract", "unpack each kernel (and apply patches/<series>/) once, shared by its targets",
    doc=_doc, run=run, per=PER_KERNEL, inputs=_inputs,
    outputs=lambda ctx: [ctx.project.source_stamp(ctx.the_kernel)],
    check=lambda ctx: ((source_unchanged, [str(ctx.project.source_tree(ctx.the_kernel)),
                                           str(ctx.project.source_stamp(ctx.the_kernel))])
                       if ctx.the_kernel.source is not None else None),
    clean=lambda ctx: [] if ctx.the_kernel.source is not None else removes(ctx.project.source_tree(ctx.the_kernel)),
)
