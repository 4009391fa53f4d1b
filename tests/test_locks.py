"""The build dir and install prefix locks, held by real processes with real flock: every command that changes
the build dir (clean, upgrade, menuconfig) or the prefix (prune) waits for the holder, or fails at once with
KTAILOR_NO_WAIT=1 and changes nothing; the holder's own doit children are let through."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from _signedmirror import (  # noqa: F401 - the fixture_* are pytest fixtures, used by name
    fixture_served_mirror,
    fixture_signing_key,
    install_dodo,
    use_mirror,
    write_versions,
)
from ktailor.commands.clean import clean_outputs
from ktailor.commands.menuconfig import edit_target_config
from ktailor.commands.runner import run_doit
from ktailor.core.errors import EnvironmentProblem
from ktailor.core.locks import BUILD_LOCK_ENV, LockBusy, holding_build_dir, prefix_lock
from ktailor.project.layout import Project

REPO = Path(__file__).resolve().parents[1]

HOLD = """
import sys
from pathlib import Path
from ktailor.core.locks import holding_build_dir, prefix_lock
kind, where = sys.argv[1], Path(sys.argv[2])
with (holding_build_dir if kind == "build" else prefix_lock)(where, {}):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


class Holder:
    """Another process holding the build dir's (kind "build") or the prefix's (kind "prefix") lock."""

    def __init__(self, kind: str, where: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", HOLD, kind, str(where)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdout.readline() == "held\n"

    def release(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            assert self.process.wait(timeout=30) == 0


@pytest.fixture
def hold() -> Iterator:
    holders: list[Holder] = []

    def start(kind: str, where: Path) -> Holder:
        holders.append(Holder(kind, where))
        return holders[-1]

    yield start
    for holder in holders:
        holder.release()


def invoke(root: Path, *args: str, **env: str) -> subprocess.Popen:
    """`invoke <args>` in a project whose tasks.py is the real one (copied in, as install_dodo does for dodo.py)."""
    if not (root / "tasks.py").exists():
        shutil.copy(REPO / "tasks.py", root / "tasks.py")
    return subprocess.Popen([sys.executable, "-m", "invoke", "-r", str(root), *args], cwd=root, env=os.environ | env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def still_waiting(process: subprocess.Popen, seconds: float = 1.5) -> bool:
    time.sleep(seconds)
    return process.poll() is None


def assert_refused(code: int, err: str, what: str) -> None:
    assert code == 1, err
    assert f"E: {what}" in err and "is in use by pid" in err and "KTAILOR_NO_WAIT=1" in err, err
    assert "Traceback" not in err


# --- the helpers -------------------------------------------------------------------------------------------------
def test_build_dir_lock_tells_the_doit_children_it_starts_and_leaves_the_process_environment_alone(
        project_factory, monkeypatch, tmp_path):
    factory = project_factory()
    factory.versions([("6.1.1", factory.kernel("6.1.1"))], targets=["x86_64-micro"])
    install_dodo(factory.root)
    monkeypatch.setenv("KTAILOR_NO_WAIT", "1")  # a child that did not know the lock is its parent's would fail
    build_dir = tmp_path / "build"
    lock = (build_dir / ".lock").resolve()
    monkeypatch.setenv(BUILD_LOCK_ENV, "/some/other/build/.lock")
    with holding_build_dir(build_dir, os.environ) as children:
        assert children[BUILD_LOCK_ENV] == str(lock) and children["KTAILOR_NO_WAIT"] == "1"
        assert os.environ[BUILD_LOCK_ENV] == "/some/other/build/.lock"
        with holding_build_dir(build_dir, children) as again:  # re-entrant within the process
            assert again == children
        assert subprocess.run(["flock", "--nonblock", str(lock), "true"]).returncode != 0  # really held
        refused = run_doit(factory.root, "config:x86_64-micro", capture=True)  # the process's environment: refused
        assert refused.returncode != 0 and "in use by" in refused.stderr, refused.stderr
        child = run_doit(factory.root, "config:x86_64-micro", env=children, capture=True)
        assert child.returncode == 0, child.stderr
    assert os.environ[BUILD_LOCK_ENV] == "/some/other/build/.lock"
    monkeypatch.delenv(BUILD_LOCK_ENV)
    with holding_build_dir(build_dir, os.environ):
        pass
    assert BUILD_LOCK_ENV not in os.environ
    assert subprocess.run(["flock", "--nonblock", str(lock), "true"]).returncode == 0  # released
    assert lock.is_file()  # lock files are never deleted


def test_a_process_the_holder_starts_is_let_through_any_other_is_refused(tmp_path, hold):
    build_dir = tmp_path / "build"
    hold("build", build_dir)
    lock = str((build_dir / ".lock").resolve())
    take = ("import os, sys; from pathlib import Path; from ktailor.core.locks import holding_build_dir\n"
            "with holding_build_dir(Path(sys.argv[1]), os.environ): print('got it')")
    argv = [sys.executable, "-c", take, str(build_dir)]
    child = subprocess.run(argv, env=os.environ | {"KTAILOR_NO_WAIT": "1", BUILD_LOCK_ENV: lock},
                           capture_output=True, text=True, timeout=30)
    assert child.returncode == 0 and child.stdout == "got it\n", child.stderr
    stranger = subprocess.run(argv, env=os.environ | {"KTAILOR_NO_WAIT": "1"}, capture_output=True, text=True, timeout=30)
    assert stranger.returncode != 0 and "LockBusy" in stranger.stderr and "got it" not in stranger.stdout


def test_prefix_lock_creates_a_missing_prefix_and_keeps_its_lock_file(tmp_path):
    prefix = tmp_path / "not-yet" / "prefix"
    with prefix_lock(prefix, {}) as lock:
        assert lock == prefix / ".ktailor.lock"
        assert subprocess.run(["flock", "--nonblock", str(lock), "true"]).returncode != 0  # really held
    assert subprocess.run(["flock", "--nonblock", str(lock), "true"]).returncode == 0
    assert lock.is_file()  # lock files are never deleted


def under_a_file(prefix: Path) -> None:
    prefix.parent.write_text("a file where the prefix's parent directory should be")


def read_only(prefix: Path) -> None:
    prefix.mkdir(parents=True)
    prefix.chmod(0o555)


@pytest.mark.parametrize("make_unwritable", [
    pytest.param(under_a_file, id="under-a-file"),
    pytest.param(read_only, id="read-only",
                 marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")),
])
def test_an_unwritable_prefix_is_one_paragraph_naming_it_and_the_fix(tmp_path, make_unwritable):
    prefix = tmp_path / "parent" / "prefix"
    make_unwritable(prefix)
    try:
        with pytest.raises(EnvironmentProblem, match=r"cannot lock the install prefix .*KTAILOR_PREFIX=") as caught, \
                prefix_lock(prefix, {}):
            pytest.fail("locked an unwritable prefix")
        assert str(prefix) in str(caught.value) and "\n" not in str(caught.value)
    finally:
        if prefix.is_dir():
            prefix.chmod(0o755)


# --- the commands that take them ---------------------------------------------------------------------------------
@pytest.fixture
def built(project_factory):
    """A project whose build dir holds two targets' dirs, an extracted tree, doit's state and its lock file."""
    factory = project_factory()
    factory.versions([("6.1.1", factory.kernel("6.1.1"))], targets=["x86_64-micro", "aarch64-micro"])
    project = Project.from_env(factory.root)
    kernel = project.versions.default
    for row in project.catalog.targets.values():
        if row.name in kernel.targets:
            project.artifacts(kernel, row).kbuild.mkdir(parents=True)
    project.source_tree(kernel).mkdir(parents=True)
    (project.build_dir / ".doit-state.json").write_text("{}")
    (project.build_dir / ".lock").touch()
    return project


def test_clean_fails_at_once_with_no_wait_and_waits_for_a_running_doit_otherwise(built, hold):
    version_dir = built.build_dir / "6.1.1"
    lock = built.build_dir / ".lock"
    inode = lock.stat().st_ino
    holder = hold("build", built.build_dir)

    code, _out, err = finish(invoke(built.root, "clean", KTAILOR_NO_WAIT="1"))
    assert_refused(code, err, f"the build dir {built.build_dir}")
    assert (version_dir / "x86_64-micro" / "kbuild").is_dir()  # nothing removed

    waiting = invoke(built.root, "clean", "--all")
    assert still_waiting(waiting)
    assert (version_dir / "x86_64-micro").is_dir() and (built.build_dir / ".doit-state.json").is_file()
    holder.release()
    code, out, err = finish(waiting)
    assert code == 0, err
    assert "waiting for pid" in err and f"removed {version_dir}" in out
    assert [p.name for p in built.build_dir.iterdir()] == [".lock"]
    assert lock.stat().st_ino == inode  # the same file: a doit waiting on it locks what the next one opens


def test_clean_outputs_removes_nothing_while_the_build_dir_is_held(built, hold, monkeypatch):
    hold("build", built.build_dir)
    monkeypatch.setenv("KTAILOR_NO_WAIT", "1")
    with pytest.raises(LockBusy, match="is in use by pid"):
        clean_outputs(Project.from_env(built.root), everything=True)
    assert (built.build_dir / ".doit-state.json").is_file() and (built.build_dir / "6.1.1" / "linux").is_dir()
    assert clean_outputs(Project.from_env(built.root), everything=True, dry_run=True)  # a dry run does not wait


@pytest.fixture
def installed(project_factory, tmp_path):
    """A prefix with one linked install and one old rebuild no link points to any more."""
    factory = project_factory()
    factory.versions([("6.1.1", factory.kernel("6.1.1"))], targets=["x86_64-micro"])
    prefix = tmp_path / "prefix"
    (prefix / "6.1.1" / "x86_64-micro.aaaaaaaaaaaa").mkdir(parents=True)
    (prefix / "6.1.1" / "x86_64-micro.bbbbbbbbbbbb").mkdir()
    (prefix / "6.1.1" / "x86_64-micro").symlink_to("x86_64-micro.bbbbbbbbbbbb")
    return factory.root, prefix, prefix / "6.1.1" / "x86_64-micro.aaaaaaaaaaaa"


def test_prune_fails_at_once_with_no_wait_and_waits_for_a_running_install_otherwise(installed, hold):
    root, prefix, old = installed
    holder = hold("prefix", prefix)

    code, _out, err = finish(invoke(root, "prune", KTAILOR_NO_WAIT="1"))
    assert_refused(code, err, f"the install prefix {prefix}")
    assert old.is_dir()

    waiting = invoke(root, "prune")
    assert still_waiting(waiting)
    assert old.is_dir()
    holder.release()
    code, out, err = finish(waiting)
    assert code == 0, err
    assert "waiting for pid" in err and "removed 1 unlinked install dir(s)" in out
    assert not old.exists() and (prefix / "6.1.1" / "x86_64-micro").resolve().is_dir()
    assert (prefix / ".ktailor.lock").is_file()


def test_upgrade_holds_the_build_dir_and_lets_its_own_preflight_through(project_factory, served_mirror, monkeypatch,
                                                                       hold, tmp_path):
    factory = project_factory()
    old_sha = factory.kernel("6.1.4")
    factory.kernel("6.1.5")
    served_mirror.sign_sums()
    versions = write_versions(factory.root, served_mirror.url, "6.1.4", old_sha, ["x86_64-micro"])
    install_dodo(factory.root)
    use_mirror(monkeypatch, served_mirror)
    monkeypatch.setenv("KTAILOR_AUTOSIGNER_FINGERPRINT", served_mirror.key.fingerprint)
    before = versions.read_text()
    holder = hold("build", tmp_path / "build")

    code, _out, err = finish(invoke(factory.root, "upgrade", "--version", "6.1.5", KTAILOR_NO_WAIT="1"))
    assert_refused(code, err, f"the build dir {tmp_path / 'build'}")
    assert versions.read_text() == before

    holder.release()
    # KTAILOR_NO_WAIT=1: had the pre-flight's doit children not been told the lock is their parent's, they would fail
    code, out, err = finish(invoke(factory.root, "upgrade", "--version", "6.1.5", KTAILOR_NO_WAIT="1"))
    assert code == 0, err
    assert 'version = "6.1.5"' in versions.read_text() and "pre-flight 6.1.4 → 6.1.5" in out
    assert (tmp_path / "build" / "6.1.5" / "x86_64-micro" / "audit.json").is_file()


MENUCONFIG_RULE = """
menuconfig:
\tflock --nonblock {lock} true && echo free > $(O)/lock-state || echo held > $(O)/lock-state
\techo CONFIG_FROM_MENUCONFIG=y >> $(O)/.config
"""


def test_menuconfig_holds_the_build_dir_while_make_menuconfig_runs(project_factory, monkeypatch, hold, tmp_path):
    factory = project_factory()
    factory.versions([("6.1.1", factory.kernel("6.1.1"))], targets=["x86_64-micro"])
    install_dodo(factory.root)
    assert run_doit(factory.root, "config:x86_64-micro", capture=True).returncode == 0
    project = Project.from_env(factory.root)
    kernel, row = project.versions.default, project.catalog.target("x86_64-micro")
    lock = (project.build_dir / ".lock").resolve()
    with (project.source_tree(kernel) / "Makefile").open("a") as makefile:  # the fake tree's stand-in for the TUI
        makefile.write(MENUCONFIG_RULE.format(lock=lock))
    state = project.artifacts(kernel, row).kbuild / "lock-state"
    monkeypatch.setenv("KTAILOR_NO_WAIT", "1")  # its doit config child must be let through, not refused

    text, saved = edit_target_config(Project.from_env(factory.root), kernel, row, save_as=None, add_to_list=False)
    assert state.read_text() == "held\n"
    assert "CONFIG_FROM_MENUCONFIG=y" in text and saved is not None and saved.is_file()
    assert BUILD_LOCK_ENV not in os.environ
    assert subprocess.run(["flock", "--nonblock", str(lock), "true"]).returncode == 0

    state.unlink()
    hold("build", project.build_dir)
    with pytest.raises(LockBusy, match="is in use by pid"):
        edit_target_config(Project.from_env(factory.root), kernel, row, save_as=None, add_to_list=False)
    assert not state.exists()  # make menuconfig never ran
