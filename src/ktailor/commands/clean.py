"""Remove build outputs: build dirs by default; extracted sources and downloads only when asked.

Installed kernels are never touched: running VMs may be using them. A clean holds the build dir's
lock (locks.py) from plan to last removal, so it waits for a running doit (or fails at once with
KTAILOR_NO_WAIT=1) instead of removing files under it; and it never removes a lock file, even with
--all, so a run waiting on one is never left holding a lock nobody else opens.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ktailor.core.errors import EnvironmentProblem
from ktailor.core.locks import holding_build_dir, is_lock_file
from ktailor.project.layout import Project
from ktailor.stages.extract import leftovers


@dataclass
class CleanPlan:
    paths: list[Path] = field(default_factory=list)

    def add(self, path: Path) -> None:
        if (path.exists() or path.is_symlink()) and path not in self.paths:
            self.paths.append(path)


def plan_clean(project: Project, *, target: str | None = None, version: str | None = None, sources: bool = False,
               downloads: bool = False, everything: bool = False) -> CleanPlan:
    kernels = [project.versions.get(version)] if version else list(project.versions.kernels)
    if target:
        project.catalog.target(target)
    plan = CleanPlan()
    for kernel in kernels:
        for name in kernel.targets:
            if target is None or name == target:
                plan.add(project.artifacts(kernel, project.catalog.targets[name]).dir)
        tree, version_dir = project.source_tree(kernel), project.version_dir_of(kernel.version)
        if target is None and (sources or everything):
            plan.add(version_dir)
        elif target is None and version_dir.is_dir():  # everything of the release but its extracted tree
            for entry in sorted(version_dir.iterdir()):
                if entry != tree:
                    plan.add(entry)
        if kernel.source is not None:
            continue  # the user's own tree (there is no download either) is never ktailor's to remove
        if target is None:
            for leftover in leftovers(tree):  # a killed extraction's ~1 GB temp dir
                plan.add(leftover)
        if sources or everything:
            plan.add(tree)
        if downloads or everything:
            tarball = project.tarball(kernel)
            for path in (tarball, tarball.with_name(tarball.name + ".sha256"), tarball.with_name(tarball.name + ".part")):
                plan.add(path)
    if target is None and version is None:
        plan.add(project.forecast_dir)
    if everything and project.build_dir.is_dir():  # its contents: the build dir itself holds the lock file
        # A prefix or download cache moved inside the build dir stays: installs are never touched, and the
        # cache's tarballs went above (its .locks/ with them would orphan a waiting download).
        kept = (project.prefix, project.cache_dir)
        for entry in sorted(project.build_dir.iterdir()):
            if not is_lock_file(entry) and not any(path.is_relative_to(entry) for path in kept):
                plan.add(entry)
    # a parent already listed covers its children
    plan.paths = [p for p in plan.paths if not any(p != q and p.is_relative_to(q) for q in plan.paths)]
    return plan


def clean_outputs(project: Project, *, target: str | None = None, version: str | None = None, sources: bool = False,
                  downloads: bool = False, everything: bool = False, dry_run: bool = False) -> list[Path]:
    """`invoke clean`: plan and remove under the build dir's lock; returns what was (or would be) removed.
    A dry run removes nothing, so it neither waits for a running doit nor takes the lock."""
    def plan() -> CleanPlan:
        return plan_clean(project, target=target, version=version, sources=sources, downloads=downloads,
                          everything=everything)

    if dry_run:
        return plan().paths
    with holding_build_dir(project.build_dir, project.env):
        return run_clean(plan())


def run_clean(plan: CleanPlan, *, dry_run: bool = False) -> list[Path]:
    for path in plan.paths:
        if dry_run:
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot remove {exc.filename or path} ({exc.strerror}); run clean as the user "
                                     "who owns the build dir (or fix its permissions). Nothing after it was removed.") from None
    return plan.paths
