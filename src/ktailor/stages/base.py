"""What a stage is: its row in the task graph and its action, declared in the stage's own module.

Each stage module (download, extract, lint, config, report, build, ledger, verify, boot, accept,
reproduce, install) ends with `STAGE = Stage(...)`: what the stage reads and writes, the state its
up-to-date check holds, and `run`, all as functions of one `Context` (the project, the kernel and the
target it is about, and that target's files). dag.py collects the stages and turns them into doit tasks;
`run_stage` is the one adapter doit calls: it loads the project, builds the context, runs the stage and
turns a KtailorError into one paragraph on stderr and a failed task.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ktailor.core.errors import KtailorError
from ktailor.farm.toolchain import compiler_fingerprint, make_vars, require_tools
from ktailor.kconfig.fragments import Option, load_fragments, requested_options
from ktailor.project.layout import Artifacts, Project
from ktailor.project.targets import Target
from ktailor.project.versions import Kernel

PER_TARGET, PER_KERNEL, ONCE = "target", "kernel", "once"


@dataclass(frozen=True)
class Context:
    """What one run of a stage is about: per target (all four fields), per kernel (no target) or once
    for the project (neither)."""

    project: Project
    kernel: Kernel | None = None
    target: Target | None = None

    @cached_property
    def files(self) -> Artifacts:
        return self.project.artifacts(self.the_kernel, self.the_target)

    @property
    def the_kernel(self) -> Kernel:
        assert self.kernel is not None, "a per-kernel stage"
        return self.kernel

    @property
    def the_target(self) -> Target:
        assert self.target is not None, "a per-target stage"
        return self.target

    @property
    def label(self) -> str:
        """`x86_64-micro 6.1.192`: how progress lines name the target."""
        return f"{self.the_target.name} {self.the_kernel.version}"

    @property
    def source_tree(self) -> Path:
        return self.project.source_tree(self.the_kernel)

    @property
    def source_stamp(self) -> Path:
        return self.project.source_stamp(self.the_kernel)

    def requested(self) -> dict[str, Option]:
        """symbol -> the Option the target's fragments request on this kernel version and arch."""
        fragments = load_fragments(self.project.fragment_paths(self.the_target), self.project.root)
        return requested_options(fragments, self.the_target.arch.name, self.the_kernel.version_tuple)

    def make_vars(self) -> dict[str, str]:
        """The make variables config, build and reproduce run with (ARCH, O, CROSS_COMPILE, …)."""
        return make_vars(self.the_target, self.project.env, srctree=self.source_tree, kbuild=self.files.kbuild)

    def toolchain_state(self) -> dict:
        """The make variables and the compiler's identity: what config, build and reproduce depend on."""
        return {"make_vars": self.make_vars(), "compiler": compiler_fingerprint(self.the_target, self.project.env)}

    def checked_make_vars(self) -> dict[str, str]:
        """make_vars, once the tools they name are known to be there."""
        variables = self.make_vars()
        require_tools(self.the_target, variables, self.project.env)
        return variables


Paths = Callable[[Context], list[Path]]


@dataclass(frozen=True)
class Stage:
    """One stage's row in the graph. `inputs` and `outputs` become file_dep and targets; `state` is what
    the task's one config_changed holds; `check` returns an extra doit uptodate entry, (function, [args]);
    `clean` doit's clean entry (True: remove the targets). `applies` leaves a context out of the graph."""

    name: str
    group_doc: str
    doc: Callable[[Context], str]
    run: Callable[[Context], object]
    inputs: Paths
    outputs: Paths
    per: str = PER_TARGET
    state: Callable[[Context], dict] | None = None
    check: Callable[[Context], tuple] | None = None
    clean: Callable[[Context], object] = lambda ctx: True
    applies: Callable[[Context], bool] = lambda ctx: True

    def action(self, ctx: Context) -> tuple:
        """doit's action entry: run_stage with plain strings, so `doit -n N` can run it in a worker process."""
        kwargs = {"module": self.run.__module__, "root": str(ctx.project.root)}
        if ctx.kernel is not None:
            kwargs["version"] = ctx.kernel.version
        if ctx.target is not None:
            kwargs["target"] = ctx.target.name
        return (run_stage, [], kwargs)


def load_context(root: str, version: str | None = None, target: str | None = None) -> Context:
    project = Project.from_env(root)
    kernel = project.versions.get(version) if version is not None else None
    return Context(project, kernel, project.catalog.target(target) if target is not None else None)


def run_stage(module: str, root: str, version: str | None = None, target: str | None = None) -> bool:
    """The doit action of every stage: `STAGE.run` of `module` on its context; an error is one paragraph
    (`E: <message>`) on stderr and a failed task; a traceback only with KTAILOR_DEBUG=1."""
    stage: Stage = importlib.import_module(module).STAGE
    try:
        result = stage.run(load_context(root, version, target))
    except KtailorError as exc:
        if os.environ.get("KTAILOR_DEBUG"):
            raise
        print(f"E: {exc}", file=sys.stderr, flush=True)
        return False
    except OSError as exc:  # a full disk, a permission: the environment, said in one paragraph
        if os.environ.get("KTAILOR_DEBUG"):
            raise
        print(f"E: {stage.name} failed: {exc.strerror or exc} ({exc.filename or 'no file named'}); free space "
              "or fix the permissions there and run `doit` again (KTAILOR_DEBUG=1 shows the traceback).",
              file=sys.stderr, flush=True)
        return False
    return result is not False


def remove_tree(path: str) -> None:
    """doit clean action: a directory a stage wrote (its work dir, an extracted tree)."""
    shutil.rmtree(path, ignore_errors=True)


def removes(*paths: Path) -> list[tuple]:
    return [(remove_tree, [str(path)]) for path in paths]
