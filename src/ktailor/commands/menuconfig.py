"""menuconfig that saves back: turn the user's edits into a fragment, so the next `doit` keeps them.

The diff between the merged config and the edited one becomes fragment lines, each with a reason
placeholder that lint rejects until a human explains the option. Nothing is lost: when the user
does not save a fragment, the edited config and the diff are kept beside the build.

The whole session (configuring the target through doit, `make menuconfig`, writing the fragment)
holds the build dir's lock: a doit or security-update run waits rather than building from, or
regenerating, a .config that is being edited.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from ktailor.commands.runner import run_doit, task_name
from ktailor.core.errors import EnvironmentProblem, InputError
from ktailor.core.locks import holding_build_dir
from ktailor.farm.toolchain import make_argv, make_vars
from ktailor.kconfig.dotconfig import final_value, parse_dotconfig
from ktailor.kconfig.fragments import REASON_PLACEHOLDER
from ktailor.project.layout import Project
from ktailor.project.targets import Target
from ktailor.project.versions import Kernel


def config_changes(before: dict[str, str], after: dict[str, str]) -> list[tuple[str, str, str]]:
    """(symbol, old, new) for every symbol whose value differs; absent counts as n."""
    symbols = sorted(set(before) | set(after))
    return [(s, final_value(before, s), final_value(after, s)) for s in symbols
            if final_value(before, s) != final_value(after, s)]


def changes_to_fragment(changes: list[tuple[str, str, str]], *, target: str, requirement: str = "local") -> str:
    """A fragment whose every option carries the reason placeholder (lint fails until it is filled)."""
    lines = [f"# requirement: {requirement}",
             f"# Saved from `invoke menuconfig --target {target}` on {time.strftime('%Y-%m-%d')}.",
             "# Replace every REASON placeholder with why the option is needed; lint rejects it until then.", ""]
    for symbol, old, new in changes:
        lines.append(f"# {REASON_PLACEHOLDER} (was {old})")
        lines.append(f"# CONFIG_{symbol} is not set" if new == "n" else f"CONFIG_{symbol}={new}")
    return "\n".join(lines) + "\n"


def run_menuconfig(srctree: Path, kbuild: Path, variables: dict[str, str]) -> None:
    if not (kbuild / ".config").is_file():
        raise InputError(f"{kbuild / '.config'} does not exist; run `doit config:<target>` first.")
    result = subprocess.run(make_argv(srctree, kbuild, variables, ["menuconfig"]))
    if result.returncode != 0:
        raise EnvironmentProblem("make menuconfig failed; it needs a terminal and ncurses "
                                 "(Debian/Ubuntu: apt-get install libncurses-dev).")


def save_changes(*, before: Path, after: Path, target: str, target_dir: Path, save_as: Path | None,
                 list_file: Path | None, fragments_dir: Path) -> tuple[str, Path | None]:
    """Write the user's changes somewhere durable; returns (fragment text, where it was saved)."""
    changes = config_changes(parse_dotconfig(before), parse_dotconfig(after))
    if not changes:
        return "", None
    text = changes_to_fragment(changes, target=target)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    shutil.copy2(after, target_dir / f"menuconfig-{stamp}.config")
    (target_dir / f"menuconfig-{stamp}.fragment.conf").write_text(text)
    if save_as is None:
        return text, target_dir / f"menuconfig-{stamp}.fragment.conf"
    if save_as.exists():
        raise InputError(f"{save_as} already exists; choose a new fragment name (your changes are kept in "
                         f"{target_dir / f'menuconfig-{stamp}.fragment.conf'}).")
    if save_as.suffix != ".conf" or not save_as.resolve().is_relative_to(fragments_dir.resolve()):
        raise InputError(f"--save-as {save_as}: give a path like {fragments_dir.name}/local-tweaks.conf "
                         f"(your changes are kept in {target_dir / f'menuconfig-{stamp}.fragment.conf'}).")
    save_as.write_text(text)
    if list_file is not None:
        relative = save_as.resolve().relative_to(fragments_dir.resolve())
        with list_file.open("a") as handle:
            handle.write(f"# added by invoke menuconfig on {time.strftime('%Y-%m-%d')}\n{relative}\n")
    return text, save_as


def edit_target_config(project: Project, kernel: Kernel, row: Target, *, save_as: Path | None,
                       add_to_list: bool) -> tuple[str, Path | None]:
    """`invoke menuconfig`: configure the target, let the user edit its .config, save the edits back (see
    save_changes); all of it under the build dir's lock, which the doit child is told it may use."""
    name = task_name("config", row.name, kernel.version, project.versions.default.version)
    files = project.artifacts(kernel, row)
    with holding_build_dir(project.build_dir, project.env) as env:
        if run_doit(project.root, name, env=env).returncode != 0:
            raise InputError(f"`doit {name}` failed; fix that first.")
        before = files.dir / "menuconfig.before"
        shutil.copy2(files.config, before)
        run_menuconfig(project.source_tree(kernel), files.kbuild, make_vars(row, project.env))
        return save_changes(before=before, after=files.config, target=row.name, target_dir=files.dir, save_as=save_as,
                            list_file=project.fragments_dir / row.list_name if add_to_list and save_as else None,
                            fragments_dir=project.fragments_dir)
