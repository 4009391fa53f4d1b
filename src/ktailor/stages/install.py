"""The install stage: put a checked kernel into the prefix so that no path a VM uses ever disappears.

Layout (every change is a rename or a symlink swap, both atomic):

    <prefix>/<version>/<target>.<key>/   the files and manifest.json; <key> is a hash of their content
    <prefix>/<version>/<target>       -> <target>.<key>     (the build of that version now installed)
    <prefix>/<target>                 -> <version>/<target> (the default kernel of versions.toml)

A rebuild of the same version (a fragment edit) goes into a new <target>.<key>/ and the link is
swapped; the old directory stays, so a VM started from it keeps its files, until `invoke prune`
removes the directories no link points to. Nothing is installed unless evidence.check_install
passed: the files copied are the files the audit, verify and boot judged, and the sha256 the gate
checked are the ones the manifest records.

This module owns what "installed" means (`is_current`): doit's install task and security-update
both ask it. It also owns everything an install writes: the VEX (from this build's sources.json),
the manifest and its provenance. Install and prune share the prefix lock.
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

from ktailor import __version__
from ktailor.core.errors import EnvironmentProblem, KtailorError, VerificationFailed
from ktailor.core.locks import prefix_lock
from ktailor.core.progress import info, warn
from ktailor.core.records import read_optional, sha256_of, write_json_atomically, write_text_atomically
from ktailor.guest.vmconfig import install_configs
from ktailor.project.layout import Project
from ktailor.security.evidence import (
    ALLOW_UNBOOTED_ENV,
    allow_unaccepted,
    allow_unbooted,
    check_install,
    fingerprint,
    hash_or_missing,
)
from ktailor.stages.base import Context, Stage

REQUIRE_REPRODUCIBLE_ENV = "KTAILOR_REQUIRE_REPRODUCIBLE"  # =1: install only images `doit reproduce` rebuilt bit for bit


def reproduce_required(env: dict[str, str]) -> bool:
    return env.get(REQUIRE_REPRODUCIBLE_ENV, "") not in ("", "0", "no", "false")


def install_kernel(project: Project, kernel, row) -> Path:
    """The install stage: the gate, this build's VEX, then the files, manifest and provenance into the prefix."""
    from ktailor.security.cvereport import write_vex

    files = project.artifacts(kernel, row)
    rerun = f"doit boot:{row.name}" + ("" if kernel.is_default else f"@{kernel.version}")
    gate = check_install(images=files.images, config=files.config, audit=files.audit, verify=files.verify,
                         boot=files.boot, unbooted_ok=allow_unbooted(project.env), rerun=rerun, accept=files.accept,
                         unaccepted_ok=allow_unaccepted(project.env))
    if reproduce_required(project.env) and (verdict := reproduce_result(files))["status"] != "identical":
        raise VerificationFailed(f"refusing to install: {REQUIRE_REPRODUCIBLE_ENV} is set and the reproduce stage's "
                                 f"verdict on these images is {verdict['status']!r} (see {files.reproduce}); run "
                                 f"`doit reproduce:{row.name}` or unset {REQUIRE_REPRODUCIBLE_ENV}.")
    vex_note = write_vex(project, kernel, row)
    chosen = install_files(project, kernel, row, with_vex=vex_note is None) | write_vmm_configs(project, kernel, row)
    with prefix_lock(project.prefix, project.env):
        return install_target(name=row.name, version=kernel.version, prefix=project.prefix, files=chosen,
                              manifest=manifest_for(project, kernel, row, gate, vex_note),
                              make_current=current_version(project, row.name) == kernel.version,
                              provenance=provenance_for(project, kernel, row, gate), checked=gate["evidence"])


def current_version(project: Project, target_name: str) -> str | None:
    """Which kernel <prefix>/<target> follows: the default kernel's when it has this target, else the
    newest kernel in versions.toml that has it."""
    default = project.versions.default
    if target_name in default.targets:
        return default.version
    having = [k for k in project.versions.kernels if target_name in k.targets]
    return max(having, key=lambda k: k.version_tuple).version if having else None


def is_current(project: Project, kernel, row) -> bool:
    """The one definition of "installed": <prefix>/<version>/<target> holds exactly the files this build
    would install (images, config, System.map, sources.json), made from the fragments as they are now, on
    the evidence as it is now, and <prefix>/<target> points at it when this kernel is the current one.
    (The VEX is left out: it is recomputed from the CVE records at every install.)"""
    files = project.artifacts(kernel, row)
    manifest = read_optional(files.manifest)
    if manifest is None or manifest.get("version") != kernel.version:
        return False
    recorded = manifest.get("sha256") or {}
    for name, path in install_files(project, kernel, row, with_vex=False).items():
        if recorded.get(name) != hash_or_missing(path):
            return False
    for name, text in install_configs(row, files.install, kernel.version).items():
        if recorded.get(name) != hashlib.sha256(text.encode()).hexdigest():
            return False
    if manifest.get("fragments_sha256") != fragments_digest(project, row):
        return False
    if manifest.get("evidence") != fingerprint(files.images, files.config, files.audit):
        return False
    if current_version(project, row.name) == kernel.version:
        return files.current.resolve() == files.install.resolve()
    return True


def install_files(project: Project, kernel, row, *, with_vex: bool) -> dict[str, Path]:
    """name in the install dir -> the built file it copies."""
    files = project.artifacts(kernel, row)
    chosen = dict(files.images) | {"config": files.config, "System.map": files.system_map}
    if files.sources.is_file():
        chosen[Project.SOURCES] = files.sources
    if with_vex:
        chosen[Project.VEX] = files.vex
    return chosen


def write_vmm_configs(project: Project, kernel, row) -> dict[str, Path]:
    """The configs of the VMMs the target serves (vmconfig.py), pointing at this version's install link."""
    files = project.artifacts(kernel, row)
    files.vmm_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, text in install_configs(row, files.install, kernel.version).items():
        write_text_atomically(files.vmm_dir / name, text, 0o755 if name.endswith(".sh") else 0o644)
        written[name] = files.vmm_dir / name
    return written


def fragments_digest(project: Project, row) -> str:
    """One hash over the target's list and fragment files: an install made from other fragments is stale."""
    digest = hashlib.sha256()
    for path in [*project.list_paths(row), *project.fragment_paths(row)]:
        digest.update(str(project.display(path)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def manifest_for(project: Project, kernel, row, gate: dict, vex_note: str | None) -> dict:
    """What an install says about itself: how it was made and the evidence it was installed on."""
    files = project.artifacts(kernel, row)
    build_info = read_optional(files.build_json) or {}
    if gate["boot"].get("status") != "pass":
        warn(f"installing {row.name} {kernel.version} without a boot test ({gate['boot'].get('reason')}), "
             f"because {ALLOW_UNBOOTED_ENV} is set.")
    return {
        "ktailor": __version__, "arch": row.arch.name, "type": row.type.name, "cmdline": row.cmdline,
        "vmm_configs": sorted(install_configs(row, files.install, kernel.version)),
        "fragments": [str(project.display(p)) for p in project.fragment_paths(row)],
        "fragments_sha256": fragments_digest(project, row),
        "toolchain": build_info.get("compiler", ""), "make_vars": build_info.get("make_vars", {}),
        "build_seconds": build_info.get("seconds"), "built_at": build_info.get("finished_at"),
        **source_record(project, kernel),
        "vex": Project.VEX if vex_note is None else f"not written: {vex_note}",
        "verify": gate["verify"], "boot": gate["boot"], "accept": _accept_summary(gate["accept"]),
        "evidence": gate["evidence"],
    }


def source_record(project: Project, kernel) -> dict:
    """What the kernel was built from: the tarball's pinned sha256, or the user's tree and its identity."""
    if kernel.source is None:
        return {"source_sha256": kernel.sha256}
    recorded = read_optional(project.source_stamp(kernel)) or {}
    return {"source": recorded | {"path": str(kernel.source), "extraversion": kernel.extraversion}}


def _accept_summary(accepted: dict | None) -> dict | None:
    """What the manifest keeps of accept.json: the verdict, each workload's result, the userspace it ran."""
    if accepted is None:
        return None
    keep = ("status", "reason", "accel", "systemd_analyze", "host_wall_s", "key_transport", "evidence")
    summary = {key: accepted[key] for key in keep if key in accepted}
    summary["workloads"] = [{k: w.get(k) for k in ("name", "requirement", "status", "ms")}
                            for w in accepted.get("workloads", [])]
    rootfs = accepted.get("rootfs") or {}
    summary["rootfs"] = {"made_by": rootfs.get("made_by"), "packages": rootfs.get("packages")}
    return summary


def provenance_for(project: Project, kernel, row, gate: dict) -> Callable[[dict[str, str]], dict]:
    """The in-toto statement of this install, once its files' sha256 are known (provenance.py)."""
    from ktailor.security.provenance import checkout_commit, statement

    files = project.artifacts(kernel, row)
    build_info = read_optional(files.build_json) or {}
    fragments = {str(project.display(p)): p for p in [*project.list_paths(row), *project.fragment_paths(row)]}
    checks = {"verify": gate["verify"].get("status"), "boot": gate["boot"].get("status"),
              "accept": (gate["accept"] or {}).get("status"),
              "reproduce": reproduce_result(files)}
    commit = checkout_commit(project.root)
    signed = read_optional(project.checksum_record(kernel))
    if signed is not None and signed.get("sha256") != kernel.sha256:
        signed = None  # it vouched for another tarball than the one versions.toml pins now
    return lambda checksums: statement(
        subjects=checksums, version=kernel.version, target=row.name, tarball_url=kernel.url,
        tarball_sha256=kernel.sha256, fragments=fragments, commit=commit, make_vars=build_info.get("make_vars", {}),
        toolchain=build_info.get("compiler", ""), build=build_info, checks=checks, checksum_source=signed,
        source_tree=source_record(project, kernel).get("source"))


def reproduce_result(files) -> dict:
    """The reproduce stage's verdict on exactly these images, or why there is none."""
    record = read_optional(files.reproduce)
    if record is None:
        return {"status": "not run", "how": "doit reproduce:<target> builds it again elsewhere and compares"}
    current = {name: sha256_of(path) for name, path in files.images.items() if path.is_file()}
    checked = {name: entry.get("first") for name, entry in record.get("images", {}).items()}
    if checked != current:
        return {"status": "stale", "why": "the images were rebuilt after the reproduce run"}
    return {"status": "identical" if record.get("identical") else "differs", "images": record.get("images"),
            "finished_at": record.get("finished_at")}


def content_key(checksums: dict[str, str]) -> str:
    """12 hex digits naming one build's files: the same files always install into the same directory."""
    text = json.dumps(sorted(checksums.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _prefix_problem(prefix: Path, exc: OSError) -> EnvironmentProblem:
    return EnvironmentProblem(f"cannot install into {prefix} ({exc.strerror or exc}: {exc.filename or prefix}); free "
                              "space there, run as a user who can write to it, or choose another prefix with "
                              "KTAILOR_PREFIX=/some/dir. Nothing that was installed before was changed.")


def install_target(*, name: str, version: str, prefix: Path, files: dict[str, Path], manifest: dict,
                   make_current: bool, provenance: Callable[[dict[str, str]], dict] | None = None,
                   checked: dict | None = None) -> Path:
    """Install `files` (name in the install dir -> source path) plus manifest.json; return the content dir.
    `make_current`: also point <prefix>/<name> at this version (it is the default kernel's). `provenance`:
    makes the manifest's provenance statement from the installed files' sha256. `checked`: the gate's
    evidence (evidence.fingerprint); a file whose sha256 differs from it is refused."""
    checksums = {installed: sha256_of(source) for installed, source in files.items()}
    if checked is not None:
        _refuse_unchecked(checksums, checked)
    try:
        store = _store(name, version, prefix, files, checksums, manifest, provenance)
        _switch_links(name, version, prefix, store, make_current)
    except OSError as exc:
        raise _prefix_problem(prefix, exc) from None
    current = f" (current: {prefix / name})" if make_current else ""
    info(f"installed {name} {version} into {store}{current}")
    return store


def _refuse_unchecked(checksums: dict[str, str], checked: dict) -> None:
    judged = dict(checked.get("images", {})) | {"config": checked.get("config")}
    changed = [name for name, digest in judged.items() if name in checksums and checksums[name] != digest]
    if changed:
        raise VerificationFailed(f"refusing to install: {', '.join(changed)} changed after the checks judged them "
                                 "(rebuilt while installing?); run `doit` again.")


def _store(name: str, version: str, prefix: Path, files: dict[str, Path], checksums: dict[str, str], manifest: dict,
           provenance: Callable[[dict[str, str]], dict] | None) -> Path:
    """The content dir of these files, with a manifest saying what is true now: the same files installed
    again from other fragments or on other evidence keep their dir and get their manifest rewritten."""
    key = content_key(checksums)
    version_dir = prefix / version
    store = version_dir / f"{name}.{key}"
    version_dir.mkdir(parents=True, exist_ok=True)
    manifest = manifest | {"version": version, "target": name, "content_key": key, "sha256": checksums,
                           "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if provenance is not None:
        manifest["provenance"] = provenance(checksums)
    if (store / Project.MANIFEST).is_file():
        if _without_time(read_optional(store / Project.MANIFEST)) != _without_time(manifest):
            write_json_atomically(store / Project.MANIFEST, manifest)
        return store
    temp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=version_dir))
    try:
        for installed_name, source in files.items():
            shutil.copy2(source, temp / installed_name)
            if sha256_of(temp / installed_name) != checksums[installed_name]:
                raise EnvironmentProblem(f"{source} changed while it was being installed; run `doit` again.")
        (temp / Project.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(temp, 0o755)
        if store.exists():  # left by an install killed before its manifest was written
            shutil.rmtree(store)
        temp.rename(store)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return store


def _without_time(manifest: dict | None) -> dict | None:
    return None if manifest is None else {k: v for k, v in manifest.items() if k != "installed_at"}


def _switch_links(name: str, version: str, prefix: Path, store: Path, make_current: bool) -> None:
    """<version>/<name> -> the store, then (make_current) <name> -> <version>/<name>. When the second swap
    fails, the first is undone, so a failed install leaves every link as it was."""
    version_link = prefix / version / name
    _adopt_legacy_dir(version_link)
    before = os.readlink(version_link) if version_link.is_symlink() else None
    swap_symlink(version_link, Path(store.name))
    if not make_current:
        return
    try:
        swap_symlink(prefix / name, Path(version) / name)
    except OSError:
        if before is None:
            version_link.unlink(missing_ok=True)
        else:
            swap_symlink(version_link, Path(before))
        raise


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


# --- the stage ---------------------------------------------------------------------------------
def run(ctx: Context) -> None:
    install_kernel(ctx.project, ctx.the_kernel, ctx.the_target)


def install_current(task, values, root: str, version: str, target: str) -> bool:  # doit uptodate callable
    """is_current: the one definition of "installed", shared with security-update."""
    from ktailor.stages.base import load_context

    try:
        ctx = load_context(root, version, target)
        return is_current(ctx.project, ctx.the_kernel, ctx.the_target)
    except (KtailorError, OSError):
        return False


STAGE = Stage(
    "install", "install verified kernels into the prefix (KTAILOR_PREFIX, default /usr/share/ktailor)",
    doc=lambda ctx: f"install {ctx.label} into the prefix and switch its links",
    run=run,
    inputs=lambda ctx: [*ctx.files.images.values(), ctx.files.config, ctx.files.audit, ctx.files.verify, ctx.files.boot,
                        ctx.files.accept, ctx.files.sources,
                        *([ctx.files.reproduce] if reproduce_required(ctx.project.env) else [])],
    outputs=lambda ctx: [ctx.files.manifest],
    state=lambda ctx: {"prefix": str(ctx.project.prefix), "unbooted_ok": allow_unbooted(ctx.project.env),
                       "unaccepted_ok": allow_unaccepted(ctx.project.env),
                       "current": current_version(ctx.project, ctx.the_target.name)},
    check=lambda ctx: (install_current, [str(ctx.project.root), ctx.the_kernel.version, ctx.the_target.name]),
    clean=lambda ctx: [],  # never remove installed kernels: running VMs may use them
)
