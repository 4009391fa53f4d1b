"""The doit task graph: download → extract → config → build → verify → boot → install.

Task creators here only compute names, paths and dicts (they run on every `doit` call, `doit list`
included); the work happens in the actions (actions.py), which call one stage module each.
Stages chain through files: one stage's targets are the next one's file_dep. Each task's
config_changed holds exactly what that task depends on, so editing one kernel's entry or one
fragment reruns only the tasks that use it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, wraps
from pathlib import Path

from doit.exceptions import InvalidTask
from doit.tools import config_changed

from . import actions, tables
from .errors import KtailorError, exit_code_for
from .evidence import SKIP_BOOT_ENV, accept_skip_asked, allow_unaccepted, allow_unbooted
from .install import current_version, reproduce_required
from .layout import Artifacts, Project
from .locks import BUILD_LOCK_ENV, acquire, build_lock_path, no_wait
from .rootfs import rootfs_setting
from .run_summary import summary_reporter
from .targets import Target
from .toolchain import compiler_fingerprint, make_vars
from .versions import Kernel

Task = dict
DEFAULT_TASKS = ["download", "extract", "lint", "config", "report", "build", "ledger", "verify", "boot", "accept"]


READ_ONLY_COMMANDS = {"list", "help", "info", "tabcompletion", "dumpdb"}


def doit_config(root: Path, argv: list[str] | None = None) -> dict:
    project = load_project(str(root))
    try:
        project.build_dir.mkdir(parents=True, exist_ok=True)  # doit opens its state file before any task runs
        if doit_command(sys.argv[1:] if argv is None else argv) not in READ_ONLY_COMMANDS:
            lock_build_dir(project)
    except KtailorError as exc:  # the edge of doit's loading: one paragraph, not doit's traceback
        print(f"E: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exit_code_for(exc)) from None
    except OSError as exc:
        print(f"E: cannot use the build dir {project.build_dir} ({exc.strerror}); check KTAILOR_BUILD_DIR and its "
              "permissions.", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    return {
        "default_tasks": DEFAULT_TASKS,
        "dep_file": str(project.build_dir / ".doit-state.json"),
        "backend": "json",
        "verbosity": 2,
        "continue": True,  # one target's failure does not stop the others; doit still exits non-zero
        "action_string_formatting": "new",
        "reporter": summary_reporter(lambda name: task_artifacts(project, name)),
    }


def task_artifacts(project: Project, target_part: str) -> Artifacts | None:
    """The Artifacts of a per-target task's name part: `x86_64-micro` (default kernel) or `x86_64-micro@6.1.192`."""
    target_name, _, version = target_part.partition("@")
    try:
        kernel = project.versions.get_or_default(version or None)
    except KtailorError:  # a task name of no listed kernel: no row for it
        return None
    if target_name not in kernel.targets:
        return None
    return project.artifacts_of(kernel.version, target_name)


def doit_command(argv: list[str]) -> str:
    """The doit sub-command in an argv (`run` when only task names or nothing are given)."""
    with_value = {"-f", "--file", "-d", "--dir", "-k", "--seek-file", "--db-file", "--backend", "--dep-file"}
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in with_value:
            skip = True
        elif not arg.startswith("-"):
            return arg if arg in READ_ONLY_COMMANDS | {"run", "clean", "forget", "ignore", "auto", "strace"} else "run"
    return "run"


def lock_build_dir(project: Project) -> None:
    """One doit run at a time per build dir (held until the process exits; the kernel drops it if killed).
    A security-update run holds it for its doit children, which it says through BUILD_LOCK_ENV."""
    lock = build_lock_path(project.build_dir)
    if project.env.get(BUILD_LOCK_ENV) == str(lock):
        return
    acquire(lock, f"the build dir {project.build_dir}", wait=not no_wait(project.env))


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
        if kernel.source is not None:
            continue  # the user's own tree: nothing to download
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
        if kernel.source is not None:  # the user's own tree: never extracted or written to, only identified
            identity = project.source_stamp(kernel)
            yield {
                "name": kernel.version,
                "doc": f"identify the source tree {tree} (git HEAD and changes, or a stat digest)",
                "actions": [(actions.identify_source, [], _args(project, kernel))],
                "targets": [str(identity)],
                "uptodate": [(actions.source_unchanged, [str(tree), str(identity)])],
                "clean": [],  # never the user's tree
            }
            continue
        patches = sorted((project.patches_root / kernel.series).glob("*.patch"))
        yield {
            "name": kernel.version,
            "doc": f"extract linux-{kernel.version} into {project.display(tree)}",
            "actions": [(actions.extract, [], _args(project, kernel))],
            "file_dep": [str(project.tarball(kernel)), *map(str, patches)],
            "targets": [str(project.source_stamp(kernel))],
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
@dataclass(frozen=True)
class Stage:
    """One per-(kernel, target) stage, described once; stage_tasks turns it into doit tasks.
    Each callable gets (project, kernel, target, files) and returns paths or a dict."""

    name: str
    group_doc: str
    doc: Callable[[Kernel, Target], str]
    action: Callable[..., bool]
    file_dep: Callable[..., list[Path]]
    targets: Callable[..., list[Path]]
    state: Callable[..., dict] | None = None  # what the task's one config_changed holds
    check: Callable[..., tuple] | None = None  # an extra uptodate callable: (function, [args])
    clean: Callable[..., object] = lambda p, k, t, f: True


def _toolchain_state(project: Project, kernel: Kernel, target: Target, files: Artifacts) -> dict:
    variables = make_vars(target, project.env, srctree=project.source_tree(kernel), kbuild=files.kbuild)
    return {"make_vars": variables, "compiler": compiler_fingerprint(target, project.env)}


def _config_deps(project: Project, kernel: Kernel, target: Target, files: Artifacts) -> list[Path]:
    return [project.source_stamp(kernel), *project.fragment_paths(target), *project.list_paths(target)]


def _other_configs(project: Project, kernel: Kernel, target: Target) -> list[Path]:
    """The same target's final .config on the other kernels: the report compares the whole config with them."""
    return [project.artifacts(other, target).config for other in project.versions.kernels
            if other.version != kernel.version and target.name in other.targets]


def _config_state(project: Project, kernel: Kernel, target: Target, files: Artifacts) -> dict:
    return {"version": kernel.version, "arch": target.arch.name,
            "expected_drops": tables.expected_drops_state(project.fragments_dir, target, kernel.version_tuple)} | \
        _toolchain_state(project, kernel, target, files)


def _verdict_state(project: Project, kernel: Kernel, target: Target) -> dict:
    """The entries of the shared tables a target's verdicts (report, verify) are judged by."""
    return {"must_stay": tables.must_stay_state(project.fragments_dir, target),
            "hardening": tables.hardening_state(project.fragments_dir, target, kernel.version_tuple)}


def _guest(project: Project) -> list[Path]:
    return [project.guest_dir / "init.c"]  # the probe table and cmdline-undoes are entries of the boot's state


STAGES = (
    Stage("config", "merge each target's fragments with the kernel's kconfig and audit the result",
          lambda k, t: f"allnoconfig + {t.list_name} for {t.name} on {k.version}; audit requested vs final",
          actions.configure, _config_deps,
          lambda p, k, t, f: [f.config, f.audit],
          state=_config_state,
          check=lambda p, k, t, f: (actions.config_matches_audit, [str(f.config), str(f.audit)]),
          clean=lambda p, k, t, f: [(actions.remove_tree, [str(f.dir)])]),
    Stage("report", "write each target's requirement → option → final value table (report.md, report.json)",
          lambda k, t: f"requirement → option → final value table for {t.name} on {k.version}",
          actions.report,
          lambda p, k, t, f: [f.config, f.audit, *p.fragment_paths(t), *_other_configs(p, k, t)],
          lambda p, k, t, f: [f.report_md, f.report_json],
          state=lambda p, k, t, f: _verdict_state(p, k, t)),
    Stage("build", "compile each target's images out of tree (make O=…)",
          lambda k, t: f"make {' '.join(t.make_goals)} for {t.name} on {k.version}",
          actions.build,
          lambda p, k, t, f: [f.config, p.source_stamp(k)],
          lambda p, k, t, f: [*f.images.values(), f.system_map, f.sources],
          state=_toolchain_state),
    Stage("ledger", "attribute each target's vmlinux bytes to the options that pulled them in (ledger.json, ledger.md)",
          lambda k, t: f"what each option costs in {t.name} {k.version}'s vmlinux",
          actions.ledger,
          lambda p, k, t, f: [*f.images.values(), f.sources, *p.fragment_paths(t), *p.list_paths(t)],
          lambda p, k, t, f: [f.ledger_json, f.ledger_md]),
    Stage("verify", "check each target's audit, image formats and size budget; writes verify.json",
          lambda k, t: f"check {t.name} {k.version}: audit passed, image formats, size budget",
          actions.verify,
          lambda p, k, t, f: [*f.images.values(), f.audit],
          lambda p, k, t, f: [f.verify],
          state=lambda p, k, t, f: {"budget": t.size_budget, "images": t.images} | _verdict_state(p, k, t),
          check=lambda p, k, t, f: (actions.has_evidence, [str(f.verify)])),
    Stage("boot", "boot each target in QEMU (its VMM's device model) and run the capability probes",
          lambda k, t: f"boot {t.name} {k.version} in QEMU and run the capability probes",
          actions.boot,
          lambda p, k, t, f: [*f.images.values(), f.verify, *_guest(p)],
          lambda p, k, t, f: [f.boot],
          state=lambda p, k, t, f: {"boot": t.boot, "cmdline": t.cmdline, "skip": bool(p.env.get(SKIP_BOOT_ENV)),
                                    "guest": tables.guest_state(p.guest_dir, t)},
          check=lambda p, k, t, f: (actions.boot_settled, [str(f.boot)]),
          clean=lambda p, k, t, f: [(actions.remove_tree, [str(f.boot_dir)])]),
    Stage("accept", "boot each target with a stock Debian userspace and run the workloads users run (guest/acceptance.toml)",
          lambda k, t: f"accept {t.name} {k.version}: systemd, LUKS2, crun/runc, … on a Debian root filesystem",
          actions.accept,
          lambda p, k, t, f: [*f.images.values(), f.boot, *sorted((p.guest_dir / "accept").glob("*"))],
          lambda p, k, t, f: [f.accept],
          state=lambda p, k, t, f: {"boot": t.boot, "cmdline": t.cmdline, "skip": accept_skip_asked(p.env),
                                    "acceptance": tables.acceptance_state(p.guest_dir, t),
                                    "rootfs": rootfs_setting(p.env, t.arch.name)},
          check=lambda p, k, t, f: (actions.accept_is_settled, [str(f.accept)]),
          clean=lambda p, k, t, f: [(actions.remove_tree, [str(f.accept_dir)])]),
    Stage("reproduce", "build each target again in a second build dir, without the compile cache, and compare images",
          lambda k, t: f"rebuild {t.name} {k.version} elsewhere and compare every image's sha256 (reproduce.json)",
          actions.reproduce,
          lambda p, k, t, f: [*f.images.values(), f.config, p.source_stamp(k)],
          lambda p, k, t, f: [f.reproduce],
          state=_toolchain_state,
          clean=lambda p, k, t, f: [(actions.remove_tree, [str(f.rebuild_dir)])]),
    Stage("install", "install verified kernels into the prefix (KTAILOR_PREFIX, default /usr/share/ktailor)",
          lambda k, t: f"install {t.name} {k.version} into the prefix and switch its links",
          actions.install,
          lambda p, k, t, f: [*f.images.values(), f.config, f.audit, f.verify, f.boot, f.accept, f.sources,
                              *([f.reproduce] if reproduce_required(p.env) else [])],
          lambda p, k, t, f: [f.manifest],
          state=lambda p, k, t, f: {"prefix": str(p.prefix), "unbooted_ok": allow_unbooted(p.env),
                                    "unaccepted_ok": allow_unaccepted(p.env),
                                    "current": current_version(p, t.name)},
          check=lambda p, k, t, f: (actions.install_current, [], _args(p, k, t)),
          clean=lambda p, k, t, f: []),  # never remove installed kernels: running VMs may use them
)


def stage_tasks(root: Path, stage_name: str) -> Iterator[Task]:
    stage = next(s for s in STAGES if s.name == stage_name)
    project = load_project(str(root))
    yield _group(stage.name, stage.group_doc)
    for kernel, target, name in each_target(project):
        files = project.artifacts(kernel, target)
        uptodate: list = []
        if stage.state is not None:
            uptodate.append(config_changed(stage.state(project, kernel, target, files)))
        if stage.check is not None:
            uptodate.append(stage.check(project, kernel, target, files))
        task = {
            "name": name,
            "doc": stage.doc(kernel, target),
            "actions": [(stage.action, [], _args(project, kernel, target))],
            "file_dep": [str(p) for p in stage.file_dep(project, kernel, target, files)],
            "targets": [str(p) for p in stage.targets(project, kernel, target, files)],
            "clean": stage.clean(project, kernel, target, files),
        }
        if uptodate:
            task["uptodate"] = uptodate
        yield task
        if kernel.is_default:  # `doit build:x86_64-micro@<default version>` works too, as an alias
            yield {"name": f"{target.name}@{kernel.version}", "doc": f"alias of {stage.name}:{name}",
                   "actions": None, "task_dep": [f"{stage.name}:{name}"]}


def _group(stage: str, doc: str) -> Task:
    return {"basename": stage, "name": None, "doc": doc}


@reports_errors
def config_tasks(root: Path) -> Iterator[Task]:
    yield from stage_tasks(root, "config")


@reports_errors
def report_tasks(root: Path) -> Iterator[Task]:
    yield from stage_tasks(root, "report")


@reports_errors
def build_tasks(root: Path) -> Iterator[Task]:
    yield from stage_tasks(root, "build")


@reports_errors
def ledger_tasks(root: Path) -> Iterator[Task]:
    yield from stage_tasks(root, "ledger")


@reports_errors
def verify_tasks(root: Path) -> Iterator[Task]:
    yield from stage_tasks(root, "verify")


@reports_errors
def boot_tasks(root: Path) -> Iterator[Task]:
    yield from stage_tasks(root, "boot")


@reports_errors
def accept_tasks(root: Path) -> Iterator[Task]:
    yield from stage_tasks(root, "accept")


@reports_errors
def reproduce_tasks(root: Path) -> Iterator[Task]:
    yield from stage_tasks(root, "reproduce")


@reports_errors
def install_tasks(root: Path) -> Iterator[Task]:
    yield from stage_tasks(root, "install")
