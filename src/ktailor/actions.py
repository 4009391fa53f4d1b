"""doit actions: each loads the project, calls one stage module, and reports errors as one paragraph.

Actions are module-level functions taking plain strings so `doit -n N` can run them in worker
processes. A KtailorError becomes `E: <message>` on stderr and a failed task (return False); a
traceback only with KTAILOR_DEBUG=1.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path

from . import __version__
from .build import run_make
from .compiled import write_sources
from .config import configure_target
from .configdiff import error_count, render_changes, target_drift
from .cvereport import write_vex
from .download import fetch, is_verified
from .errors import InputError, KtailorError
from .extract import extract_tarball
from .fragments import load_expected_drops, load_fragments, requested_options
from .install import install_target
from .layout import Project
from .progress import info, warn
from .toolchain import compiler_version, jobs_from_env, make_vars, require_tools
from .verify import verify_target


def reports_errors(action: Callable[..., object]) -> Callable[..., bool]:
    @wraps(action)
    def wrapper(*args, **kwargs) -> bool:
        try:
            result = action(*args, **kwargs)
        except KtailorError as exc:
            if os.environ.get("KTAILOR_DEBUG"):
                raise
            print(f"E: {exc}", file=sys.stderr, flush=True)
            return False
        return result is not False

    return wrapper


def _load(root: str, version: str, target: str | None = None):
    project = Project.from_env(root)
    kernel = project.versions.get(version)
    return project, kernel, (project.catalog.target(target) if target else None)


def tarball_verified(task, values, tarball: str, sha256: str) -> bool:  # doit uptodate callable
    return is_verified(Path(tarball), sha256)


@reports_errors
def download(root: str, version: str) -> None:
    project, kernel, _ = _load(root, version)
    fetch(kernel.url, project.tarball(kernel), kernel.sha256)


@reports_errors
def extract(root: str, version: str) -> None:
    project, kernel, _ = _load(root, version)
    started = time.monotonic()
    tree = extract_tarball(project.tarball(kernel), project.source_tree(kernel), project.patches_root / kernel.series)
    info(f"extracted {kernel.tarball_name} into {project.display(tree)} in {time.monotonic() - started:.1f}s")


@reports_errors
def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def requested_for(project: Project, kernel, target):
    fragments = load_fragments(project.fragment_paths(target), project.root)
    return requested_options(fragments, target.arch.name, kernel.version_tuple)


@reports_errors
def lint(root: str) -> None:
    from .lint import format_findings, lint_fragments

    project = Project.from_env(root)
    # every target's list that exists (versions.toml already insists on the lists of the kernels' targets)
    names = sorted({t.list_name for t in project.catalog.targets.values() if (project.fragments_dir / t.list_name).is_file()})
    findings = lint_fragments(project.fragments_dir, project.root, project.catalog, names)
    if findings:
        print(format_findings(findings), file=sys.stderr)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        raise_lint(len(errors))
    info(f"lint: {len(names)} lists, {len(list(project.fragments_dir.glob('*.conf')))} fragments, "
         f"{len(findings)} finding(s)")


def raise_lint(count: int) -> None:
    raise InputError(f"lint found {count} error(s) in the fragments (listed above); fix them and run `doit lint` again.")


@reports_errors
def configure(root: str, version: str, target: str) -> None:
    from .lint import format_findings, lint_fragments

    project, kernel, row = _load(root, version, target)
    # Lint first (fast, no make): this target's list, at this kernel version.
    findings = [f for f in lint_fragments(project.fragments_dir, project.root, project.catalog, [row.list_name],
                                          version=kernel.version_tuple)
                if f.severity == "error"]
    if findings:
        print(format_findings(findings), file=sys.stderr)
        raise_lint(len(findings))
    variables = make_vars(row, project.env)
    require_tools(row, variables)
    configure_target(
        name=row.name, version=kernel.version, version_tuple=kernel.version_tuple, arch=row.arch.name,
        kernel_arch=row.arch.kernel_arch, cross_compile=variables["CROSS_COMPILE"],
        srctree=project.source_tree(kernel), target_dir=project.target_dir(kernel, row),
        kbuild=project.kbuild(kernel, row), requested=requested_for(project, kernel, row),
        expected_drops=load_expected_drops(project.fragments_dir / "expected-drops.toml"), variables=variables,
        providers=providers_of(project, kernel), other_trees=other_trees(project, kernel),
    )


def providers_of(project: Project, kernel) -> dict[str, list[str]]:
    """symbol -> the targets whose fragments turn it on at this kernel version (where an option belongs)."""
    found: dict[str, list[str]] = {}
    for target in project.catalog.targets.values():
        if not (project.fragments_dir / target.list_name).is_file():
            continue
        for symbol, option in requested_for(project, kernel, target).items():
            if option.value not in ("n", ""):
                found.setdefault(symbol, []).append(target.name)
    return found


def other_trees(project: Project, kernel) -> list[tuple[str, Path]]:
    """(version, source tree) of every other kernel in versions.toml that is extracted here."""
    return [(other.version, project.source_tree(other)) for other in project.versions.kernels
            if other.version != kernel.version and (project.source_tree(other) / "Kconfig").is_file()]


@reports_errors
def build(root: str, version: str, target: str) -> None:
    project, kernel, row = _load(root, version, target)
    variables = make_vars(row, project.env)
    require_tools(row, variables)
    target_dir = project.target_dir(kernel, row)
    elapsed = run_make(project.source_tree(kernel), project.kbuild(kernel, row), variables,
                       list(row.arch.make_targets), jobs_from_env(project.env), target_dir / "build.log",
                       f"{row.name} {kernel.version}")
    compiled = write_sources(project.kbuild(kernel, row), project.source_tree(kernel), project.sources_file(kernel, row))
    (target_dir / "build.json").write_text(json.dumps({
        "seconds": round(elapsed, 1), "jobs": jobs_from_env(project.env), "make_vars": variables,
        "compiler": compiler_version(row, variables), "host": platform.machine(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "compiled": {"sources": len(compiled["sources"]), "headers": len(compiled["headers"])},
    }, indent=2) + "\n")
    info(f"built {row.name} {kernel.version} in {elapsed:.0f}s ({len(compiled['sources'])} source files compiled)")


@reports_errors
def verify(root: str, version: str, target: str) -> None:
    project, kernel, row = _load(root, version, target)
    target_dir = project.target_dir(kernel, row)
    report = verify_target(name=row.name, version=kernel.version, kernel_arch=row.arch.kernel_arch,
                           kbuild=project.kbuild(kernel, row), images=row.arch.images, budget=row.size_budget,
                           audit_file=target_dir / "audit.json", out=target_dir / "verify.json")
    sizes = ", ".join(f"{name} {entry['size'] / 1e6:.2f} MB (budget {entry['budget'] / 1e6:.1f})"
                      for name, entry in report["artifacts"].items())
    info(f"verified {row.name} {kernel.version}: {sizes}")


@reports_errors
def boot(root: str, version: str, target: str) -> None:
    from .boot import StderrLog, boot_target

    project, kernel, row = _load(root, version, target)
    boot_target(row, project.kbuild(kernel, row), project.target_dir(kernel, row) / "boot",
                requested_for(project, kernel, row), StderrLog(), guest_dir=project.guest_dir)


@reports_errors
def report(root: str, version: str, target: str) -> None:
    from .report import write_report

    project, kernel, row = _load(root, version, target)
    fragments = load_fragments(project.fragment_paths(row), project.root)
    target_dir = project.target_dir(kernel, row)
    drifts = {}
    for other in project.versions.kernels:
        if other.version != kernel.version and row.name in other.targets:
            drifted = target_drift(project, row, other.version, kernel)
            if drifted is not None:
                drifts[other.version] = drifted
    rows = write_report(target=row.name, version=kernel.version, fragments=fragments,
                        requested=requested_options(fragments, row.arch.name, kernel.version_tuple),
                        config=project.kbuild(kernel, row) / ".config", audit_file=target_dir / "audit.json",
                        out_dir=target_dir, drifts=drifts)
    landed = sum(r["status"] == "landed" for r in rows)
    errors = sum(error_count(*pair) for pair in drifts.values())
    compared = f"; whole .config compared with {', '.join(drifts)}: {errors} must-stay loss(es)" if drifts else ""
    info(f"report {row.name} {kernel.version}: {landed}/{len(rows)} landed{compared} → "
         f"{project.display(target_dir / 'report.md')}")
    for other, (changes, missing) in drifts.items():
        if error_count(changes, missing):
            warn(f"{row.name}: {other} → {kernel.version} loses what must stay:\n"
                 f"{render_changes(other, kernel.version, changes, missing)}")


@reports_errors
def install(root: str, version: str, target: str) -> None:
    project, kernel, row = _load(root, version, target)
    kbuild = project.kbuild(kernel, row)
    target_dir = project.target_dir(kernel, row)
    files = {Path(relative).name: kbuild / relative for relative in row.arch.images}
    files |= {"config": kbuild / ".config", "System.map": kbuild / "System.map"}
    if project.sources_file(kernel, row).is_file():
        files[project.SOURCES] = project.sources_file(kernel, row)
    vex_note = write_vex(project, kernel, row)
    if vex_note is None:
        files[project.VEX] = project.vex_file(kernel, row)
    build_info = json.loads((target_dir / "build.json").read_text()) if (target_dir / "build.json").is_file() else {}
    manifest = {
        "ktailor": __version__, "arch": row.arch.name, "type": row.type.name, "cmdline": row.cmdline,
        "fragments": [str(project.display(p)) for p in project.fragment_paths(row)],
        "toolchain": build_info.get("compiler", ""), "make_vars": build_info.get("make_vars", {}),
        "build_seconds": build_info.get("seconds"), "built_at": build_info.get("finished_at"),
        "source_sha256": kernel.sha256,
        "vex": project.VEX if vex_note is None else f"not written: {vex_note}",
    }
    install_target(name=row.name, version=kernel.version, prefix=project.prefix, files=files, manifest=manifest,
                   verify_file=target_dir / "verify.json", boot_file=target_dir / "boot" / "boot.json")
