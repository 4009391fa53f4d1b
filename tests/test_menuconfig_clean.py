"""menuconfig's save-back (a plain function fed a scripted edit) and invoke clean's plan."""

from __future__ import annotations

import pytest

from ktailor.clean import plan_clean, run_clean
from ktailor.errors import EnvironmentProblem, InputError
from ktailor.fragments import REASON_PLACEHOLDER, parse_fragment
from ktailor.layout import Project
from ktailor.menuconfig import config_changes, save_changes

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
        (project.target_dir(kernel, project.catalog.targets[target]) / "kbuild").mkdir(parents=True)
    project.source_tree(kernel).mkdir(parents=True)
    project.tarball(kernel).parent.mkdir(parents=True)
    project.tarball(kernel).write_text("tarball")
    (project.prefix / "6.1.1").mkdir(parents=True)

    only_x86 = plan_clean(project, target="x86_64-micro")
    assert only_x86.paths == [project.target_dir(kernel, project.catalog.targets["x86_64-micro"])]
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

    project.target_dir(kernel, project.catalog.targets["x86_64-micro"]).mkdir(parents=True)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("ktailor.clean.shutil.rmtree", refuse)
    with pytest.raises(EnvironmentProblem, match=r"Permission denied.*run clean as the user"):
        run_clean(plan_clean(project))
