"""menuconfig's save-back (a plain function fed a scripted edit), invoke clean's plan, and invoke boot on a host
without QEMU. (The locks these commands take: test_locks.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ktailor.commands.clean import plan_clean, run_clean
from ktailor.commands.menuconfig import config_changes, save_changes
from ktailor.core.errors import EnvironmentProblem, InputError
from ktailor.kconfig.fragments import REASON_PLACEHOLDER, parse_fragment
from ktailor.project.layout import Project

BEFORE = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=64\nCONFIG_D=y\n"
AFTER = "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=128\n# CONFIG_D is not set\n"


def test_config_changes_treats_absent_as_n():
    assert config_changes({"A": "y", "D": "y"}, {"A": "y", "E": "m"}) == [("D", "y", "n"), ("E", "n", "m")]


def scripted_edit(tmp_path):
    target_dir = tmp_path / "build"
    target_dir.mkdir()
    (tmp_path / "before").write_text(BEFORE)
    (tmp_path / "after").write_text(AFTER)
    fragments = tmp_path / "fragments"
    fragments.mkdir()
    (fragments / "micro-x86_64.list").write_text("base.conf\n")
    return target_dir, fragments


def test_save_back_writes_a_fragment_lint_rejects_until_reasons_are_filled(tmp_path):
    target_dir, fragments = scripted_edit(tmp_path)
    _, saved = save_changes(before=tmp_path / "before", after=tmp_path / "after", target="x86_64-micro",
                            target_dir=target_dir, save_as=fragments / "local.conf",
                               list_file=fragments / "micro-x86_64.list", fragments_dir=fragments)
    assert saved == fragments / "local.conf"
    fragment = parse_fragment(saved)
    assert [(o.symbol, o.value) for o in fragment.options] == [("B", "y"), ("C", "128"), ("D", "n")]
    assert all(REASON_PLACEHOLDER in o.reason for o in fragment.options)
    assert (fragments / "micro-x86_64.list").read_text().splitlines()[-1] == "local.conf"
    assert list(target_dir.glob("menuconfig-*.config"))  # the raw edit is kept too


def test_changes_are_kept_when_not_saved_or_when_save_fails(tmp_path):
    target_dir, fragments = scripted_edit(tmp_path)
    text, saved = save_changes(before=tmp_path / "before", after=tmp_path / "after", target="x86_64-micro",
                               target_dir=target_dir, save_as=None, list_file=None, fragments_dir=fragments)
    assert saved is not None and saved.read_text() == text and "CONFIG_B=y" in text
    (fragments / "taken.conf").write_text("x")
    with pytest.raises(InputError, match=r"already exists.*kept in"):
        save_changes(before=tmp_path / "before", after=tmp_path / "after", target="x86_64-micro",
                     target_dir=target_dir, save_as=fragments / "taken.conf", list_file=None, fragments_dir=fragments)


def test_clean_plans_build_dirs_only_unless_asked(project_factory, tmp_path):
    factory = project_factory()
    sha = factory.kernel("6.1.1")
    factory.versions([("6.1.1", sha)], targets=["x86_64-micro", "aarch64-micro"])
    project = Project.from_env(factory.root)
    kernel = project.versions.default
    for target in ("x86_64-micro", "aarch64-micro"):
        (project.artifacts(kernel, project.catalog.targets[target]).dir / "kbuild").mkdir(parents=True)
    project.source_tree(kernel).mkdir(parents=True)
    project.tarball(kernel).parent.mkdir(parents=True)
    project.tarball(kernel).write_text("tarball")
    (project.prefix / "6.1.1").mkdir(parents=True)

    only_x86 = plan_clean(project, target="x86_64-micro")
    assert only_x86.paths == [project.artifacts(kernel, project.catalog.targets["x86_64-micro"]).dir]
    run_clean(plan_clean(project))
    assert [p.name for p in (project.build_dir / "6.1.1").iterdir()] == ["linux"]  # the tree stays
    assert project.source_tree(kernel).exists() and project.tarball(kernel).exists()
    run_clean(plan_clean(project, sources=True, downloads=True))
    assert not project.source_tree(kernel).exists() and not project.tarball(kernel).exists()
    assert not (project.build_dir / "6.1.1").exists()
    assert (project.prefix / "6.1.1").is_dir()
    with pytest.raises(InputError, match="unknown target"):
        plan_clean(project, target="riscv-micro")


def test_clean_removes_a_killed_extractions_leftover_and_reports_what_it_cannot_remove(project_factory, monkeypatch):
    factory = project_factory()
    factory.versions([("6.1.1", factory.kernel("6.1.1"))], targets=["x86_64-micro"])
    project = Project.from_env(factory.root)
    kernel = project.versions.default
    leftover = project.source_tree(kernel).with_name(f".{project.source_tree(kernel).name}.k1ll3d")
    (leftover / "linux-6.1.1").mkdir(parents=True)
    assert leftover in plan_clean(project).paths
    run_clean(plan_clean(project))
    assert not leftover.exists()

    project.artifacts(kernel, project.catalog.targets["x86_64-micro"]).dir.mkdir(parents=True)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("ktailor.commands.clean.shutil.rmtree", refuse)
    with pytest.raises(EnvironmentProblem, match=r"Permission denied.*run clean as the user"):
        run_clean(plan_clean(project))


def test_clean_all_empties_the_build_dir_but_keeps_lock_files_and_installs(project_factory, monkeypatch, tmp_path):
    monkeypatch.setenv("KTAILOR_PREFIX", str(tmp_path / "build" / "installed"))  # a prefix moved inside it
    factory = project_factory()
    factory.versions([("6.1.1", factory.kernel("6.1.1"))], targets=["x86_64-micro"])
    project = Project.from_env(factory.root)
    build = project.build_dir
    (build / "6.1.1" / "linux").mkdir(parents=True)
    (build / "forecast" / "6.1").mkdir(parents=True)
    (build / "installed" / "6.1.1").mkdir(parents=True)
    for name in (".lock", "farm.lock", ".doit-state.json"):
        (build / name).write_text("")

    plan = plan_clean(project, everything=True)
    assert sorted(p.name for p in plan.paths) == [".doit-state.json", "6.1.1", "forecast"]
    run_clean(plan)
    assert sorted(p.name for p in build.iterdir()) == [".lock", "farm.lock", "installed"]
    assert (build / "installed" / "6.1.1").is_dir()


def test_plain_clean_includes_the_forecast_scratch_a_narrower_one_does_not(project_factory):
    factory = project_factory()
    factory.versions([("6.1.1", factory.kernel("6.1.1"))], targets=["x86_64-micro"])
    project = Project.from_env(factory.root)
    forecast = project.build_dir / "forecast" / "6.1"
    forecast.mkdir(parents=True)
    (forecast / "versions.toml").write_text("")

    assert project.build_dir / "forecast" not in plan_clean(project, target="x86_64-micro").paths
    assert project.build_dir / "forecast" not in plan_clean(project, version="6.1.1").paths
    run_clean(plan_clean(project))
    assert not (project.build_dir / "forecast").exists()


def test_boot_without_qemu_names_the_binary_and_the_fix_and_fails(project_factory, tmp_path):
    factory = project_factory()
    factory.versions([("6.1.1", factory.kernel("6.1.1"))], targets=["x86_64-micro"])
    project = Project.from_env(factory.root)
    kernel, row = project.versions.default, project.catalog.target("x86_64-micro")
    project.artifacts(kernel, row).kbuild.mkdir(parents=True)
    (project.artifacts(kernel, row).kbuild / "vmlinux").write_bytes(b"\x7fELF")  # a built kernel, as far as boot can tell
    shutil.copy(Path(__file__).resolve().parents[1] / "tasks.py", factory.root / "tasks.py")
    # This host's tools, less QEMU.
    tools = tmp_path / "bin-without-qemu"
    tools.mkdir()
    for directory in ("/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin", "/sbin"):
        for tool in Path(directory).iterdir() if Path(directory).is_dir() else []:
            if not tool.name.startswith("qemu-") and not (tools / tool.name).exists():
                (tools / tool.name).symlink_to(tool)

    result = subprocess.run([sys.executable, "-m", "invoke", "-r", str(factory.root), "boot", "--target", "x86_64-micro"],
                            cwd=factory.root, env=os.environ | {"PATH": str(tools)}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stderr
    message = result.stderr.strip()
    assert message.startswith("E: qemu-system-x86_64 is not installed") and "\n" not in message
    assert "apt-get install qemu-system-x86" in message and "scripts/setup" in message
