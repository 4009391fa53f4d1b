"""The doit task graph: download → extract → lint → config → report → build → ledger → verify → boot →
accept → (reproduce) → install.

Each stage declares its own row (`STAGE`, stages.base.Stage) in its own module; this module only collects them
and yields doit tasks. Task creators compute names, paths and dicts only (they run on every `doit` call,
`doit list` included); the work happens in stages.base.run_stage. Stages chain through files: one stage's
targets are the next one's file_dep. Each task's config_changed holds exactly what that task depends on,
so editing one kernel's entry or one fragment reruns only the tasks that use it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from functools import cache, wraps
from pathlib import Path

from doit.exceptions import InvalidTask
from doit.tools import config_changed

from ktailor.core.errors import KtailorError, exit_code_for
from ktailor.core.locks import BUILD_LOCK_ENV, acquire, build_lock_path, no_wait
from ktailor.project.layout import Artifacts, Project
from ktailor.project.versions import Kernel
from ktailor.run_summary import summary_reporter
from ktailor.stages import accept, boot, build, config, download, extract, install, ledger, lint, report, reproduce, verify
from ktailor.stages.base import ONCE, PER_KERNEL, PER_TARGET, Context, Stage

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


# --- the graph ---------------------------------------------------------------------------------
STAGES: tuple[Stage, ...] = (download.STAGE, extract.STAGE, lint.STAGE, config.STAGE, report.STAGE, build.STAGE,
                             ledger.STAGE, verify.STAGE, boot.STAGE, accept.STAGE, reproduce.STAGE, install.STAGE)


def stage_named(name: str) -> Stage:
    return next(stage for stage in STAGES if stage.name == name)


def contexts(project: Project, stage: Stage) -> Iterator[tuple[Context, str]]:
    """(context, task name) of every task of a stage: one per target of each kernel, one per kernel, or one."""
    if stage.per == ONCE:
        yield Context(project), ""
    elif stage.per == PER_KERNEL:
        for kernel in project.versions.kernels:
            yield Context(project, kernel), kernel.version
    else:
        for kernel in project.versions.kernels:
            for target_name in kernel.targets:
                yield Context(project, kernel, project.catalog.targets[target_name]), f"{target_name}{suffix(kernel)}"


def task_of(stage: Stage, ctx: Context, name: str) -> Task:
    uptodate: list = []
    if stage.state is not None:
        uptodate.append(config_changed(stage.state(ctx)))
    if stage.check is not None and (check := stage.check(ctx)) is not None:
        uptodate.append(check)
    task: Task = {
        "doc": stage.doc(ctx),
        "actions": [stage.action(ctx)],
        "file_dep": [str(p) for p in stage.inputs(ctx)],
        "targets": [str(p) for p in stage.outputs(ctx)],
        "clean": stage.clean(ctx),
    }
    if uptodate:
        task["uptodate"] = uptodate
    return {"basename": stage.name, **task} if stage.per == ONCE else {"name": name, **task}


def stage_tasks(root: Path, stage_name: str) -> Iterator[Task]:
    stage = stage_named(stage_name)
    project = load_project(str(root))
    if stage.per != ONCE:
        yield {"basename": stage.name, "name": None, "doc": stage.group_doc}
    for ctx, name in contexts(project, stage):
        if not stage.applies(ctx):
            continue
        yield task_of(stage, ctx, name)
        if stage.per == PER_TARGET and ctx.the_kernel.is_default:  # `doit build:x86_64-micro@<default>` works too
            yield {"name": f"{ctx.the_target.name}@{ctx.the_kernel.version}", "doc": f"alias of {stage.name}:{name}",
                   "actions": None, "task_dep": [f"{stage.name}:{name}"]}


def stage_creator(name: str) -> Callable[[Path], Iterator[Task]]:
    """dodo.py's task_<name>: the stage's tasks, bad input reported as one paragraph."""

    @reports_errors
    def creator(root: Path) -> Iterator[Task]:
        yield from stage_tasks(root, name)

    creator.__name__ = f"{name}_tasks"
    return creator


download_tasks = stage_creator("download")
extract_tasks = stage_creator("extract")
lint_tasks = stage_creator("lint")
config_tasks = stage_creator("config")
report_tasks = stage_creator("report")
build_tasks = stage_creator("build")
ledger_tasks = stage_creator("ledger")
verify_tasks = stage_creator("verify")
boot_tasks = stage_creator("boot")
accept_tasks = stage_creator("accept")
reproduce_tasks = stage_creator("reproduce")
install_tasks = stage_creator("install")
