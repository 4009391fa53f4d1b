"""A kernel from the user's own tree (`source = "<path>"`): a git checkout with a local patch, built out of
tree through the whole graph, never written to, rebuilt when (and only when) its content changes."""

from __future__ import annotations

import json
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from conftest import fake_tarball
from ktailor.commands.upgrade import upgrade
from ktailor.core.errors import InputError
from ktailor.project.layout import Project
from ktailor.sources.source_tree import identity
from test_dag import run_doit

GIT = ["git", "-c", "user.name=Site Kernel Team", "-c", "user.email=kernel@example.org", "-c", "commit.gpgsign=false"]


def git(tree: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(tree), *args], check=True, capture_output=True, text=True).stdout


def extracted(tmp_path: Path, version: str = "6.1.7") -> Path:
    tarball, _ = fake_tarball(tmp_path / "mirror", version)
    with tarfile.open(tarball) as archive:
        archive.extractall(tmp_path / "trees", filter="data")
    return tmp_path / "trees" / f"linux-{version}"


@pytest.fixture
def checkout(project_factory, tmp_path, monkeypatch):
    """A git checkout of an extracted tree with a local patch committed on top; versions.toml builds it."""
    project = project_factory()
    tree = extracted(tmp_path)
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-qm", "linux 6.1.7")
    (tree / "drivers-local.c").write_text("/* the site's local driver fix */\n")
    git(tree, "add", "drivers-local.c")
    git(tree, "commit", "-qm", "local: our driver fix")
    (project.root / "versions.toml").write_text(f'[[kernel]]\nsource = "{tree}"\ntargets = ["x86_64-micro"]\n')
    monkeypatch.setenv("KTAILOR_ALLOW_UNBOOTED", "1")  # the fake kernel cannot boot
    return project.root, tree


def snapshot(tree: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(tree)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(tree.rglob("*"))
            if ".git" not in p.relative_to(tree).parts}


def test_a_git_checkout_with_a_local_patch_builds_and_installs_and_is_never_written_to(checkout):
    root, tree = checkout
    before = snapshot(tree)
    code, ran, err = run_doit(root, "install:x86_64-micro")
    assert code == 0, err
    assert not any(name.startswith("download") for name in ran)
    assert {"extract:6.1.7", "config:x86_64-micro", "build:x86_64-micro", "verify:x86_64-micro",
            "install:x86_64-micro"} <= set(ran)
    assert snapshot(tree) == before and git(tree, "status", "--porcelain") == ""
    project = Project.from_env(root)
    kernel = project.versions.default
    assert (kernel.version, kernel.source) == ("6.1.7", tree)
    files = project.artifacts(kernel, project.catalog.target("x86_64-micro"))
    assert (files.kbuild / "vmlinux").is_file() and not (tree / "vmlinux").exists()
    manifest = json.loads(files.manifest.read_text())
    head = git(tree, "rev-parse", "HEAD").strip()
    assert manifest["source"]["path"] == str(tree) and manifest["source"]["kind"] == "git"
    assert manifest["source"]["commit"] == head and manifest["source"]["dirty"] is False
    assert "source_sha256" not in manifest
    dependencies = manifest["provenance"]["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert {"uri": f"git+{tree.as_uri()}@{head}", "digest": {"gitCommit": head}} == \
        {k: v for k, v in dependencies[0].items() if k != "annotations"}
    build = json.loads(files.build_json.read_text())
    commit_time = int(git(tree, "log", "-1", "--format=%ct"))
    assert build["make_vars"]["KBUILD_BUILD_TIMESTAMP"] == time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(commit_time))

    # nothing changed: nothing reruns
    code, ran, err = run_doit(root, "install:x86_64-micro")
    assert (code, ran) == (0, []), err

    # an uncommitted edit changes what the build reads: config and build rerun, and the install says "dirty"
    (tree / "drivers-local.c").write_text("/* the site's local driver fix, v2 */\n")
    code, ran, err = run_doit(root, "install:x86_64-micro")
    assert code == 0, err
    assert {"extract:6.1.7", "config:x86_64-micro", "build:x86_64-micro", "install:x86_64-micro"} <= set(ran)
    manifest = json.loads(files.manifest.read_text())
    assert manifest["source"]["dirty"] is True and manifest["source"]["commit"] == head


def test_a_plain_tree_is_followed_by_its_files_stat(project_factory, tmp_path, monkeypatch):
    project = project_factory()
    tree = extracted(tmp_path, "6.1.8")
    (project.root / "versions.toml").write_text(f'[[kernel]]\nsource = "{tree}"\ntargets = ["x86_64-micro"]\n')
    code, ran, err = run_doit(project.root, "build:x86_64-micro")
    assert code == 0, err
    record = identity(tree)
    assert record["kind"] == "stat" and record["files"] > 3
    assert run_doit(project.root, "build:x86_64-micro")[1] == []
    (tree / "Kconfig").write_text((tree / "Kconfig").read_text() + "\n# a local edit\n")
    code, ran, err = run_doit(project.root, "build:x86_64-micro")
    assert code == 0, err
    assert {"extract:6.1.8", "config:x86_64-micro", "build:x86_64-micro"} <= set(ran)


def test_a_tree_built_in_place_is_refused_with_the_fix(checkout):
    root, tree = checkout
    (tree / ".config").write_text("CONFIG_X=y\n")
    code, _ran, err = run_doit(root, "build:x86_64-micro")
    assert code != 0
    assert f"run `make -C {tree} mrproper`" in err and "Traceback" not in err


@pytest.mark.parametrize("entry, message", [
    ('source = "{tree}"\nsha256 = "' + "a" * 64 + '"', "names both a source tree and a sha256"),
    ('source = "{tree}/nowhere"', "is not a directory"),
    ('source = "{tree}"\nversion = "6.1.9"', "the tree's Makefile says 6.1.7"),
], ids=["with-sha256", "missing", "wrong-version"])
def test_bad_source_entries_are_one_paragraph_naming_the_line(checkout, entry, message):
    root, tree = checkout
    (root / "versions.toml").write_text("# site kernels\n[[kernel]]\n" + entry.format(tree=tree) + "\n")
    with pytest.raises(InputError, match=message) as raised:
        _ = Project.from_env(root).versions
    assert "versions.toml:3:" in str(raised.value)


def test_upgrade_and_security_update_leave_a_source_tree_alone(checkout, capsys):
    from ktailor.commands.security_update import security_update

    root, tree = checkout
    with pytest.raises(InputError, match=r"builds the source tree .* update the tree itself"):
        upgrade(root, "6.1.8")
    summary = root.parent / "summary.json"
    security_update(root, apply=True, releases_url="http://127.0.0.1:9/releases.json", json_out=summary)
    left = json.loads(summary.read_text())["left_alone"]
    assert left == [{"version": "6.1.7", "source": str(tree), "why": left[0]["why"]}]
    assert "not from a kernel.org release" in capsys.readouterr().err
