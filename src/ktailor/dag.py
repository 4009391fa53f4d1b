"""The doit task graph: download → extract → config → build → verify → boot → install.

Task creators here only compute names, paths and dicts (they run on every `doit` call, `doit list`
included); the work happens in the actions (actions.py), which call one stage module each.
Stages chain through files: one stage's targets are the next one's file_dep. Each task's
config_changed holds exactly what that task depends on, so editing one kernel's entry or one
fragment reruns only the tasks that use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache, wraps
from pathlib import Path

from doit.exceptions import InvalidTask
from doit.tools import config_changed

from . import actions
from .errors import KtailorError
from .extract import STAMP
from .layout import Project
from .targets import Target
from .toolchain import compiler_fingerprint, make_vars
from .versions import Kernel

Task = dict
DEFAULT_TASKS = ["download", "extract", "lint", "config", "report", "build", "verify", "boot"]


def doit_config(root: Path) -> dict:
    project = load_project(str(root))
    project.build_dir.mkdir(parents=True, exist_ok=True)  # doit opens its state file before any task runs
    return {
        "default_tasks": DEFAULT_TASKS,
        "dep_file": str(project.build_dir / ".doit-state.json"),
        "backend": "json",
        "verbosity": 2,
        "continue": True,  # one target's failure does not stop the others; doit still exits non-zero
        "action_string_formatting": "new",
    }


@cache
def load_project(root: str) -> Project:
    return Project.from_env(root)


def reports_errors(creator: Callable[..., Iterator[Task]]) -> Callable[..., Iterator[Task]]:
    """Bad input found while building the graph: doit prints `ERROR: <paragraph>`, no traceback."""

    @wraps(creator)
    def wrapper(*args, **kwargs):
        try:
            yield from list(creator(*args, **kwargs))
        except KtailorError as exc:
            raise InvalidTask(str(exc)) from None

    return wrapper


def suffix(kernel: Kernel) -> str:
    """Task names of the default kernel are bare (build:x86_64-micro); others carry @version."""
    return "" if kernel.is_default else f"@{kernel.version}"


def each_target(project: Project) -> Iterator[tuple[Kernel, Target, str]]:
    for kernel in project.versions.kernels:
        for target_name in kernel.targets:
            yield kernel, project.catalog.targets[target_name], f"{target_name}{suffix(kernel)}"


def _args(project: Project, kernel: Kernel, target: Target | None = None) -> dict:
    kwargs = {"root": str(project.root), "version": kernel.version}
    if target is not None:
        kwargs["target"] = target.name
    return kwargs


# --- per version ----------------------------------------------------------------------------
@reports_errors
def download_tasks(root: Path) -> Iterator[Task]:
    project = load_project(str(root))
    yield {"basename": "download", "name": None, "doc": "fetch kernel tarballs into the download cache (sha256-checked)"}
    for kernel in project.versions.kernels:
        tarball = project.tarball(kernel)
        yield {
            "name": kernel.version,
            "doc": f"download {kernel.tarball_name} from {kernel.mirror}",
            "actions": [(actions.download, [], _args(project, kernel))],
            "targets": [str(tarball)],
            "uptodate": [config_changed({"sha256": kernel.sha256}), (actions.tarball_verified, [str(tarball), kernel.sha256])],
            "clean": [],  # the cache outlives `doit clean`; `invoke clean --downloads` empties it
        }


@reports_errors
def extract_tasks(root: Path) -> Iterator[Task]:
    project = load_project(str(root))
    yield _group("extract", "unpack each kernel (and apply patches/<series>/) once, shared by its targets")
    for kernel in project.versions.kernels:
        tree = project.source_tree(kernel)
        patches = sorted((project.patches_root / kernel.series).glob("*.patch"))
        yield {
            "name": kernel.version,
            "doc": f"extract linux-{kernel.version} into {project.display(tree)}",
            "actions": [(actions.extract, [], _args(project, kernel))],
            "file_dep": [str(project.tarball(kernel)), *map(str, patches)],
            "targets": [str(tree / STAMP)],
            "clean": [(actions.remove_tree, [str(tree)])],
        }


@reports_errors
def lint_tasks(root: Path) -> Iterator[Task]:
    project = load_project(str(root))
    files = sorted(project.fragments_dir.glob("*.conf")) + sorted(project.fragments_dir.glob("*.list"))
    yield {
        "basename": "lint",
        "doc": "check every fragment and list (format, reasons, duplicates, conflicts) before any make",
        "actions": [(actions.lint, [], {"root": str(project.root)})],
        "file_dep": [str(p) for p in files],
        "verbosity": 2,
    }


# --- per target ------------------------------------------------------------------------------
def _stage_doc(stage: str, kernel: Kernel, target: Target) -> str:
    return {
        "config": f"allnoconfig + {target.list_name} for {target.name} on {kernel.version}; audit requested vs final",
        "build": f"make {' '.join(target.arch.make_targets)} for {target.name} on {kernel.version}",
        "verify": f"check {target.name} {kernel.version}: audit passed, image formats, size budget",
        "boot": f"boot {target.name} {kernel.version} in QEMU and run the capability probes",
        "install": f"install {target.name} {kernel.version} into the prefix and switch its current link",
        "report": f"requirement → option → final value table for {target.name} on {kernel.version}",
    }[stage]


def _group(stage: str, doc: str) -> Task:
    return {"basename": stage, "name": None, "doc": doc}


def _toolchain_state(project: Project, target: Target) -> dict:
    return {"make_vars": make_vars(target, project.env), "compiler": compiler_fingerprint(target, project.env)}


@reports_errors
def config_tasks(root: Path) -> Iterator[Task]:
    project = load_project(str(root))
    yield _group("config", "merge each target's fragments with the kernel's kconfig and audit the result")
    drops = project.fragments_dir / "expected-drops.toml"
    for kernel, target, name in each_target(project):
        target_dir = project.target_dir(kernel, target)
        deps = [project.source_tree(kernel) / STAMP, *project.fragment_paths(target), *project.list_paths(target)]
        yield {
            "name": name,
            "doc": _stage_doc("config", kernel, target),
            "actions": [(actions.configure, [], _args(project, kernel, target))],
            "file_dep": [str(p) for p in deps] + ([str(drops)] if drops.is_file() else []),
            "targets": [str(project.kbuild(kernel, target) / ".config"), str(target_dir / "audit.json")],
            "uptodate": [config_changed({"version": kernel.version, "arch": target.arch.name}
                                        | _toolchain_state(project, target))],
            "clean": [(actions.remove_tree, [str(target_dir)])],
        }


def image_paths(project: Project, kernel: Kernel, target: Target) -> list[str]:
    kbuild = project.kbuild(kernel, target)
    return [str(kbuild / relative) for relative in target.arch.images]


@reports_errors
def build_tasks(root: Path) -> Iterator[Task]:
    project = load_project(str(root))
    yield _group("build", "compile each target's images out of tree (make O=…)")
    for kernel, target, name in each_target(project):
        kbuild = project.kbuild(kernel, target)
        yield {
            "name": name,
            "doc": _stage_doc("build", kernel, target),
            "actions": [(actions.build, [], _args(project, kernel, target))],
            "file_dep": [str(kbuild / ".config"), str(project.source_tree(kernel) / STAMP)],
            "targets": [*image_paths(project, kernel, target), str(kbuild / "System.map"),
                        str(project.sources_file(kernel, target))],
            "uptodate": [config_changed(_toolchain_state(project, target))],
            "clean": True,
        }


@reports_errors
def verify_tasks(root: Path) -> Iterator[Task]:
    project = load_project(str(root))
    yield _group("verify", "check each target's audit, image formats and size budget; writes verify.json")
    for kernel, target, name in each_target(project):
        target_dir = project.target_dir(kernel, target)
        yield {
            "name": name,
            "doc": _stage_doc("verify", kernel, target),
            "actions": [(actions.verify, [], _args(project, kernel, target))],
            "file_dep": [*image_paths(project, kernel, target), str(target_dir / "audit.json")],
            "targets": [str(target_dir / "verify.json")],
            "uptodate": [config_changed({"budget": target.size_budget, "images": target.arch.images})],
            "clean": True,
        }


def _other_configs(project: Project, kernel: Kernel, target: Target) -> list[str]:
    """The same target's final .config on the other kernels (the report compares the whole config with
    them) and the must-stay set it checks the comparison against."""
    must_stay = project.fragments_dir / "must-stay.toml"
    return [str(project.kbuild(other, target) / ".config") for other in project.versions.kernels
            if other.version != kernel.version and target.name in other.targets] + \
        ([str(must_stay)] if must_stay.is_file() else [])


@reports_errors
def report_tasks(root: Path) -> Iterator[Task]:
    project = load_project(str(root))
    yield _group("report", "write each target's requirement → option → final value table (report.md, report.json)")
    for kernel, target, name in each_target(project):
        target_dir = project.target_dir(kernel, target)
        yield {
            "name": name,
            "doc": _stage_doc("report", kernel, target),
            "actions": [(actions.report, [], _args(project, kernel, target))],
            "file_dep": [str(project.kbuild(kernel, target) / ".config"), str(target_dir / "audit.json"),
                         *map(str, project.fragment_paths(target)), *_other_configs(project, kernel, target)],
            "targets": [str(target_dir / "report.md"), str(target_dir / "report.json")],
            "clean": True,
        }


@reports_errors
def boot_tasks(root: Path) -> Iterator[Task]:
    project = load_project(str(root))
    yield _group("boot", "boot each target in QEMU (its VMM's device model) and run the capability probes")
    guest = [project.guest_dir / "init.c", project.guest_dir / "probes.toml"]
    for kernel, target, name in each_target(project):
        target_dir = project.target_dir(kernel, target)
        yield {
            "name": name,
            "doc": _stage_doc("boot", kernel, target),
            "actions": [(actions.boot, [], _args(project, kernel, target))],
            "file_dep": [*image_paths(project, kernel, target), str(target_dir / "verify.json"), *map(str, guest)],
            "targets": [str(target_dir / "boot" / "boot.json")],
            "uptodate": [config_changed({"boot": target.boot, "cmdline": target.cmdline})],
            "clean": [(actions.remove_tree, [str(target_dir / "boot")])],
        }


@reports_errors
def install_tasks(root: Path) -> Iterator[Task]:
    project = load_project(str(root))
    yield _group("install", "install verified kernels into the prefix (KTAILOR_PREFIX, default /usr/share/ktailor)")
    for kernel, target, name in each_target(project):
        target_dir = project.target_dir(kernel, target)
        yield {
            "name": name,
            "doc": _stage_doc("install", kernel, target),
            "actions": [(actions.install, [], _args(project, kernel, target))],
            "file_dep": [*image_paths(project, kernel, target), str(target_dir / "verify.json"),
                         str(target_dir / "boot" / "boot.json"), str(project.sources_file(kernel, target))],
            "targets": [str(project.install_dir(kernel, target) / "manifest.json")],
            "uptodate": [config_changed({"prefix": str(project.prefix)})],
            "clean": [],  # never remove installed kernels: running VMs may use them
        }
