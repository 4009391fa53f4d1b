"""The install stage: put a checked kernel into the prefix so that no path a VM uses ever disappears.

Layout (every change is a rename or a symlink swap, both atomic):

    <prefix>/<version>/<target>.<key>/   the files and manifest.json; <key> is a hash of their content
    <prefix>/<version>/<target>       -> <target>.<key>     (the build of that version now installed)
    <prefix>/<target>                 -> <version>/<target> (the default kernel of versions.toml)

A rebuild of the same version (a fragment edit) goes into a new <target>.<key>/ and the link is
swapped; the old directory stays, so a VM started from it keeps its files, until `invoke prune`
removes the directories no link points to. Nothing is installed unless evidence.check_install
passed: the files copied are the files the audit, verify and boot judged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .download import sha256_of
from .errors import EnvironmentProblem
from .evidence import ALLOW_UNBOOTED_ENV, read_report
from .layout import Project
from .progress import info, warn


def install_files(project: Project, kernel, row, *, with_vex: bool) -> dict[str, Path]:
    """name in the install dir -> the built file it copies."""
    files = project.artifacts(kernel, row)
    chosen = dict(files.images) | {"config": files.config, "System.map": files.system_map}
    if files.sources.is_file():
        chosen[Project.SOURCES] = files.sources
    if with_vex:
        chosen[Project.VEX] = files.vex
    return chosen


def fragments_digest(project: Project, row) -> str:
    """One hash over the target's list and fragment files: an install made from other fragments is stale."""
    digest = hashlib.sha256()
    for path in [*project.list_paths(row), *project.fragment_paths(row)]:
        digest.update(str(project.display(path)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def manifest_for(project: Project, kernel, row, gate: dict, vex_note: str | None) -> dict:
    """What an install says about itself: how it was made and the evidence it was installed on."""
    files = project.artifacts(kernel, row)
    build_info = read_report(files.build_json, "build") if files.build_json.is_file() else {}
    if gate["boot"].get("status") != "pass":
        warn(f"installing {row.name} {kernel.version} without a boot test ({gate['boot'].get('reason')}), "
             f"because {ALLOW_UNBOOTED_ENV} is set.")
    return {
        "ktailor": __version__, "arch": row.arch.name, "type": row.type.name, "cmdline": row.cmdline,
        "fragments": [str(project.display(p)) for p in project.fragment_paths(row)],
        "fragments_sha256": fragments_digest(project, row),
        "toolchain": build_info.get("compiler", ""), "make_vars": build_info.get("make_vars", {}),
        "build_seconds": build_info.get("seconds"), "built_at": build_info.get("finished_at"),
        "source_sha256": kernel.sha256,
        "vex": Project.VEX if vex_note is None else f"not written: {vex_note}",
        "verify": gate["verify"], "boot": gate["boot"], "evidence": gate["evidence"],
    }


def provenance_for(project: Project, kernel, row) -> Callable[[dict[str, str]], dict]:
    """The in-toto statement of this install, once its files' sha256 are known (provenance.py)."""
    from .provenance import checkout_commit, statement

    files = project.artifacts(kernel, row)
    build_info = read_report(files.build_json, "build") if files.build_json.is_file() else {}
    fragments = {str(project.display(p)): p for p in [*project.list_paths(row), *project.fragment_paths(row)]}
    checks = {"verify": read_report(files.verify, "verify").get("status"),
              "boot": read_report(files.boot, "boot").get("status")}
    checks["reproduce"] = reproduce_result(files)
    commit = checkout_commit(project.root)
    signed = _json_or_none(project.checksum_record(kernel))
    if signed is not None and signed.get("sha256") != kernel.sha256:
        signed = None  # it vouched for another tarball than the one versions.toml pins now
    return lambda checksums: statement(
        subjects=checksums, version=kernel.version, target=row.name, tarball_url=kernel.url,
        tarball_sha256=kernel.sha256, fragments=fragments, commit=commit, make_vars=build_info.get("make_vars", {}),
        toolchain=build_info.get("compiler", ""), build=build_info, checks=checks, checksum_source=signed)


def reproduce_result(files) -> dict:
    """The reproduce stage's verdict on exactly these images, or why there is none."""
    record = _json_or_none(files.reproduce)
    if record is None:
        return {"status": "not run", "how": "doit reproduce:<target> builds it again elsewhere and compares"}
    current = {name: sha256_of(path) for name, path in files.images.items() if path.is_file()}
    checked = {name: entry.get("first") for name, entry in record.get("images", {}).items()}
    if checked != current:
        return {"status": "stale", "why": "the images were rebuilt after the reproduce run"}
    return {"status": "identical" if record.get("identical") else "differs", "images": record.get("images"),
            "finished_at": record.get("finished_at")}


def _json_or_none(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def content_key(checksums: dict[str, str]) -> str:
    """12 hex digits naming one build's files: the same files always install into the same directory."""
    text = json.dumps(sorted(checksums.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _prefix_problem(prefix: Path, exc: OSError) -> EnvironmentProblem:
    return EnvironmentProblem(f"cannot install into {prefix} ({exc.strerror or exc}: {exc.filename or prefix}); free "
                              "space there, run as a user who can write to it, or choose another prefix with "
                              "KTAILOR_PREFIX=/some/dir. Nothing that was installed before was changed.")


def install_target(*, name: str, version: str, prefix: Path, files: dict[str, Path], manifest: dict,
                   make_current: bool, provenance: Callable[[dict[str, str]], dict] | None = None) -> Path:
    """Install `files` (name in the install dir -> source path) plus manifest.json; return the content dir.
    `make_current`: also point <prefix>/<name> at this version (it is the default kernel's). `provenance`:
    makes the manifest's provenance statement from the installed files' sha256."""
    try:
        return _install(name, version, prefix, files, manifest, make_current, provenance)
    except OSError as exc:
        raise _prefix_problem(prefix, exc) from None


def _install(name: str, version: str, prefix: Path, files: dict[str, Path], manifest: dict, make_current: bool,
             provenance: Callable[[dict[str, str]], dict] | None) -> Path:
    checksums = {installed: sha256_of(source) for installed, source in files.items()}
    key = content_key(checksums)
    version_dir = prefix / version
    store = version_dir / f"{name}.{key}"
    version_dir.mkdir(parents=True, exist_ok=True)
    if not (store / Project.MANIFEST).is_file():
        temp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=version_dir))
        try:
            for installed_name, source in files.items():
                shutil.copy2(source, temp / installed_name)
                if sha256_of(temp / installed_name) != checksums[installed_name]:
                    raise EnvironmentProblem(f"{source} changed while it was being installed; run `doit` again.")
            manifest = manifest | {"version": version, "target": name, "content_key": key, "sha256": checksums,
                                   "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            if provenance is not None:
                manifest["provenance"] = provenance(checksums)
            (temp / Project.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            os.chmod(temp, 0o755)
            if store.exists():  # left by an install killed before its manifest was written
                shutil.rmtree(store)
            temp.rename(store)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    _adopt_legacy_dir(version_dir / name)
    swap_symlink(version_dir / name, Path(store.name))
    if make_current:
        swap_symlink(prefix / name, Path(version) / name)
    current = f" (current: {prefix / name})" if make_current else ""
    info(f"installed {name} {version} into {store}{current}")
    return store


def _adopt_legacy_dir(path: Path) -> None:
    """An install by an older ktailor is a real directory where the link goes: give it a content name."""
    if path.is_dir() and not path.is_symlink():
        path.rename(path.with_name(f"{path.name}.pre-{time.strftime('%Y%m%d%H%M%S')}"))


def swap_symlink(link: Path, target: Path) -> None:
    """Point `link` at `target` in one rename: readers see the old target or the new one, never nothing."""
    temp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    temp.unlink(missing_ok=True)
    temp.symlink_to(target)
    os.replace(temp, link)


@dataclass(frozen=True)
class PrunePlan:
    remove: list[Path]
    kept: int


def prune_plan(prefix: Path) -> PrunePlan:
    """The content directories (and leftovers of killed installs) that no link in the prefix points to."""
    if not prefix.is_dir():
        return PrunePlan([], 0)
    linked = {link.resolve() for link in _links(prefix)}
    remove, kept = [], 0
    for version_dir in sorted(p for p in prefix.iterdir() if p.is_dir() and not p.is_symlink()):
        for entry in sorted(version_dir.iterdir()):
            if entry.is_symlink() or not entry.is_dir():
                continue
            if entry.name.startswith(".") or entry.resolve() not in linked:
                remove.append(entry)
            else:
                kept += 1
    return PrunePlan(remove, kept)


def _links(prefix: Path) -> list[Path]:
    found = [p for p in prefix.iterdir() if p.is_symlink()]
    for version_dir in prefix.iterdir():
        if version_dir.is_dir() and not version_dir.is_symlink():
            found += [p for p in version_dir.iterdir() if p.is_symlink()]
    return found


def prune(prefix: Path, *, dry_run: bool = False) -> PrunePlan:
    plan = prune_plan(prefix)
    for path in plan.remove:
        info(f"{'would remove' if dry_run else 'removing'} {path} (no link points to it)")
        if not dry_run:
            try:
                shutil.rmtree(path)
            except OSError as exc:
                raise _prefix_problem(prefix, exc) from None
    return plan
