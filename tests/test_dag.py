"""The task graph as data, and run in-process on the fake kernel: what reruns after which change."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path

import pytest
from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain

from conftest import fake_tarball
from ktailor import dag
from ktailor.core.records import read_report
from ktailor.project.layout import Artifacts, Project

STAGES = ("download", "extract", "config", "report", "build", "verify", "boot", "accept", "install", "reproduce")


def task_module(root: Path) -> dict:
    dag.load_project.cache_clear()
    return {
        "DOIT_CONFIG": dag.doit_config(root),
        **{f"task_{stage}": (lambda stage=stage: getattr(dag, f"{stage}_tasks")(root)) for stage in STAGES},
    }


def run_doit(root: Path, *args: str) -> tuple[int, list[str], str]:
    """Run doit in-process; return (exit code, tasks that executed, stderr)."""
    err = io.StringIO()
    report = root.parent / "doit-output.txt"
    command = list(args) if args and args[0] in ("list", "clean") else ["run", "--output-file", str(report), *args]
    with redirect_stderr(err):
        code = DoitMain(ModuleTaskLoader(task_module(root))).run(command)
    out = report.read_text() if report.exists() else ""
    report.unlink(missing_ok=True)
    ran = re.findall(r"^\.  (\S+)$", out, re.MULTILINE)
    return code, ran, err.getvalue() + ("" if code == 0 else out)


def artifacts(root: Path, version: str = "6.1.1", target: str = "x86_64-micro") -> Artifacts:
    """A target's files where the project (and KTAILOR_BUILD_DIR/KTAILOR_PREFIX as set now) puts them."""
    return Project.from_env(root).artifacts_of(version, target)


def generated(root: Path, stage: str) -> dict[str, dict]:
    dag.load_project.cache_clear()
    tasks = list(getattr(dag, f"{stage}_tasks")(root))
    return {t["name"]: t for t in tasks if t.get("name") and t.get("actions")}  # aliases have no actions


def test_task_names_bare_for_default_kernel_and_suffixed_for_others(two_kernels):
    names = set(generated(two_kernels.root, "build"))
    assert names == {"x86_64-micro", "aarch64-micro", "x86_64-micro@6.1.2", "aarch64-micro@6.1.2"}
    assert set(generated(two_kernels.root, "download")) == {"6.1.1", "6.1.2"}


def test_default_kernel_tasks_also_answer_to_their_versioned_name(two_kernels):
    root = two_kernels.root
    aliases = {t["name"]: t for t in dag.build_tasks(root) if t.get("name") and not t.get("actions")}
    assert set(aliases) == {"x86_64-micro@6.1.1", "aarch64-micro@6.1.1"}
    assert aliases["x86_64-micro@6.1.1"]["task_dep"] == ["build:x86_64-micro"]
    code, ran, err = run_doit(root, "build:x86_64-micro@6.1.1")
    assert code == 0, err
    assert "build:x86_64-micro" in ran and "build:x86_64-micro@6.1.2" not in ran


def test_each_stage_targets_feed_the_next_stage(two_kernels):
    root = two_kernels.root
    downloads, extracts = generated(root, "download"), generated(root, "extract")
    configs, builds = generated(root, "config"), generated(root, "build")
    verifies, installs = generated(root, "verify"), generated(root, "install")
    for version in ("6.1.1", "6.1.2"):
        assert downloads[version]["targets"][0] in extracts[version]["file_dep"]
    for name, config in configs.items():
        assert extracts[name.partition("@")[2] or "6.1.1"]["targets"][0] in config["file_dep"]
        assert config["targets"][0] in builds[name]["file_dep"]  # .config
        images = {p for p in builds[name]["targets"] if not p.endswith(("System.map", "sources.json"))}
        assert images and images <= set(verifies[name]["file_dep"])
        sources = [p for p in builds[name]["targets"] if p.endswith("sources.json")]
        assert len(sources) == 1 and sources[0] in installs[name]["file_dep"]  # copied into the install
        assert config["targets"][1] in verifies[name]["file_dep"]  # audit.json
        assert verifies[name]["targets"][0] in installs[name]["file_dep"]


def test_task_creation_reads_only_its_own_list(two_kernels):
    config = generated(two_kernels.root, "config")["aarch64-micro"]
    deps = {Path(p).name for p in config["file_dep"]}
    assert {"common.conf", "arm.conf", "micro.conf", "micro-aarch64.list"} <= deps
    assert "x86.conf" not in deps and "versions.toml" not in deps


def test_full_run_then_noop_then_fragment_edit_reruns_only_its_targets(two_kernels):
    root = two_kernels.root
    code, ran, err = run_doit(root, "verify")
    assert code == 0, err
    assert {"config:x86_64-micro", "build:aarch64-micro@6.1.2", "verify:x86_64-micro@6.1.2"} <= set(ran)
    assert ran.count("extract:6.1.1") == 1

    code, ran, err = run_doit(root, "verify")
    assert (code, ran) == (0, []), err

    # x86.conf is only in the x86_64 list: both kernels' x86_64 column reruns, aarch64 stays.
    (root / "fragments" / "x86.conf").write_text((root / "fragments" / "x86.conf").read_text() + "\n# more\nCONFIG_MORE=y\n")
    code, ran, err = run_doit(root, "verify")
    assert code == 0, err
    assert sorted(ran) == sorted(f"{stage}:x86_64-micro{suffix}" for stage in ("config", "build", "verify")
                                 for suffix in ("", "@6.1.2"))


def test_editing_one_kernel_entry_reruns_only_that_kernel(two_kernels):
    root = two_kernels.root
    assert run_doit(root, "verify")[0] == 0
    newer = two_kernels.kernel("6.1.3")
    text = (root / "versions.toml").read_text().replace('"6.1.2"', '"6.1.3"')
    text = re.sub(r'(version = "6.1.3"\nsha256 = )"[0-9a-f]+"', rf'\1"{newer}"', text)
    (root / "versions.toml").write_text(text)
    code, ran, err = run_doit(root, "verify")
    assert code == 0, err
    assert ran and all("6.1.3" in name for name in ran), ran


def test_changed_make_variables_mark_config_and_build_stale(two_kernels, monkeypatch):
    root = two_kernels.root
    assert run_doit(root, "verify:x86_64-micro")[0] == 0
    monkeypatch.setenv("KTAILOR_MAKE_VARS", "KCFLAGS=-pipe")
    code, ran, err = run_doit(root, "verify:x86_64-micro")
    assert code == 0, err
    assert ran == ["config:x86_64-micro", "build:x86_64-micro", "verify:x86_64-micro"]
    assert "build:aarch64-micro" not in ran


def test_dropped_option_fails_config_with_a_table_and_no_usable_config(project_factory):
    project = project_factory()
    sha = project.kernel("6.1.1", unsupported="VIRTIO_MMIO")
    project.versions([("6.1.1", sha)], targets=["x86_64-micro"])
    code, ran, err = run_doit(project.root, "build:x86_64-micro")
    assert code != 0
    assert "CONFIG_VIRTIO_MMIO  y          n      fragments/micro.conf:7" in err
    assert "Traceback" not in err
    files = artifacts(project.root)
    assert not files.config.exists() and files.rejected_config.exists()
    assert "build:x86_64-micro" not in ran
    audit = read_report(files.audit, "config")
    assert audit["status"] == "failed" and audit["differences"][0]["symbol"] == "VIRTIO_MMIO"


def test_install_keeps_both_versions_and_current_follows_the_default_kernel(two_kernels, monkeypatch):
    root = two_kernels.root
    prefix = root.parent / "prefix"
    monkeypatch.setenv("KTAILOR_ALLOW_UNBOOTED", "1")  # the fake kernel cannot boot
    # the default kernel (6.1.1) first, then the other: the link must not follow the last install
    code, _, err = run_doit(root, "install:x86_64-micro", "install:x86_64-micro@6.1.2")
    assert code == 0, err
    for version in ("6.1.1", "6.1.2"):
        manifest = read_report(artifacts(root, version).manifest, "install")
        assert manifest["version"] == version
        assert set(manifest["sha256"]) == {"vmlinux", "bzImage", "config", "System.map", "sources.json",
                                           "firecracker.json", "qemu.sh", "kata-configuration.toml"}
        assert manifest["evidence"]["images"]["vmlinux"] == manifest["sha256"]["vmlinux"]
        provenance = manifest["provenance"]
        assert provenance["_type"] == "https://in-toto.io/Statement/v1"
        assert provenance["predicateType"] == "https://slsa.dev/provenance/v1"
        assert {s["name"]: s["digest"]["sha256"] for s in provenance["subject"]} == manifest["sha256"]
        dependencies = provenance["predicate"]["buildDefinition"]["resolvedDependencies"]
        assert dependencies[0]["uri"].endswith(f"linux-{version}.tar.xz") and len(dependencies[0]["digest"]["sha256"]) == 64
        named = {d["uri"]: d["digest"]["sha256"] for d in dependencies[1:] if "sha256" in d["digest"]}
        assert named["fragments/x86.conf"] == hashlib.sha256((root / "fragments" / "x86.conf").read_bytes()).hexdigest()
        assert "make_vars" in provenance["predicate"]["buildDefinition"]["internalParameters"]
    assert (prefix / "x86_64-micro").is_symlink()
    assert (prefix / "x86_64-micro").resolve() == (prefix / "6.1.1" / "x86_64-micro").resolve()
    assert not [p for p in (prefix / "6.1.1").iterdir() if p.name.startswith(".")]
    # switching the default moves the link on the next install run
    text = (root / "versions.toml").read_text().replace('default = "6.1.1"', 'default = "6.1.2"')
    (root / "versions.toml").write_text(text)
    code, _, err = run_doit(root, "install:x86_64-micro")  # the bare name is 6.1.2 now
    assert code == 0, err
    assert (prefix / "x86_64-micro").resolve() == (prefix / "6.1.2" / "x86_64-micro").resolve()


def test_a_hand_edited_config_reruns_the_audit_and_never_installs_unaudited(two_kernels, monkeypatch):
    root = two_kernels.root
    monkeypatch.setenv("KTAILOR_ALLOW_UNBOOTED", "1")
    assert run_doit(root, "install:x86_64-micro")[0] == 0
    config = artifacts(root).config
    config.write_text(config.read_text() + "CONFIG_DEBUG_KERNEL=y\n")  # what `invoke menuconfig` leaves behind
    code, ran, err = run_doit(root, "install:x86_64-micro")
    assert code == 0, err
    assert "config:x86_64-micro" in ran  # regenerated from the fragments and audited again
    assert "CONFIG_DEBUG_KERNEL=y" not in config.read_text()
    installed = root.parent / "prefix" / "x86_64-micro" / "config"
    assert installed.read_text() == config.read_text()


def test_a_skipped_boot_blocks_install_and_reruns_once_the_skip_is_gone(two_kernels, monkeypatch, tmp_path):
    root = two_kernels.root
    code, ran, err = run_doit(root, "install:x86_64-micro")
    assert code != 0 and "not boot-verified" in err
    assert not (root.parent / "prefix").exists()
    assert run_doit(root, "boot:x86_64-micro")[1] == []  # still skipped on purpose: up to date
    monkeypatch.delenv("KTAILOR_SKIP_BOOT")  # the skip is no longer wanted: the real boot stage runs again
    code, ran, err = run_doit(root, "boot:x86_64-micro")
    assert ran == ["boot:x86_64-micro"], err
    boot = artifacts(root).boot
    if shutil.which("qemu-system-x86_64"):  # QEMU refuses the fake vmlinux: a failed boot, not a skip
        assert code != 0 and json.loads(boot.read_text())["status"] == "fail"
    code, ran, err = run_doit(root, "install:x86_64-micro")
    assert code != 0 and not (root.parent / "prefix").exists()


def test_bad_versions_file_is_one_paragraph_not_a_traceback(project_factory):
    project = project_factory()
    (project.root / "versions.toml").write_text('[[kernel]]\nversion = "6.1.x"\nsha256 = "00"\n')
    code, _, err = run_doit(project.root, "list")
    assert code != 0
    assert "versions.toml:2" in err and "6.1.x" in err and "Traceback" not in err


def test_parallel_run_builds_every_target(two_kernels):
    root = two_kernels.root
    code, ran, err = run_doit(root, "-n", "2", "verify")
    assert code == 0, err
    assert sorted(t for t in ran if t.startswith("verify:")) == sorted(
        f"verify:{target}{suffix}" for target in ("x86_64-micro", "aarch64-micro") for suffix in ("", "@6.1.2"))
    assert run_doit(root, "verify")[1] == []


def test_config_lints_the_targets_fragments_before_make(project_factory):
    project = project_factory()
    sha = project.kernel("6.1.1")
    project.versions([("6.1.1", sha)], targets=["x86_64-micro"])
    micro = project.root / "fragments" / "micro.conf"
    micro.write_text(micro.read_text() + "CONFIG_NO_REASON=y\n")
    code, ran, err = run_doit(project.root, "config:x86_64-micro")
    assert code != 0 and "config:x86_64-micro" in ran
    assert "fragments/micro.conf:8" in err and "reason" in err
    assert not (artifacts(project.root).kbuild / "make-calls").exists()


def test_a_cached_tarball_changed_on_disk_is_rehashed_refused_and_fetched_again(two_kernels):
    root = two_kernels.root
    assert run_doit(root, "extract:6.1.1")[0] == 0
    tarball = root.parent / "cache" / "downloads" / "linux-6.1.1.tar.xz"
    data = bytearray(tarball.read_bytes())
    data[-100] ^= 0xFF  # same size: the .sha256 marker alone would still vouch for it
    tarball.write_bytes(bytes(data))
    code, ran, err = run_doit(root, "extract:6.1.1")
    assert code != 0 and "changed on disk after it was verified" in err and "Traceback" not in err
    assert not tarball.exists()
    code, ran, err = run_doit(root, "extract:6.1.1")
    assert code == 0, err
    assert ran == ["download:6.1.1", "extract:6.1.1"]


def test_a_tarball_that_holds_another_release_never_becomes_that_version(project_factory):
    project = project_factory()
    _, sha = fake_tarball(project.mirror, "6.1.4", makefile_version="6.1.2")
    project.versions([("6.1.4", sha)], targets=["x86_64-micro"])
    code, _ran, err = run_doit(project.root, "config:x86_64-micro")
    assert code != 0
    assert "its Makefile says Linux 6.1.2" in err and "Traceback" not in err
    assert not (project.root.parent / "build" / "6.1.4" / "linux").exists()


def doit_process(root: Path, *args: str, **env: str) -> subprocess.Popen:
    # Ctrl-C as a terminal user sends it: a test run started in the background (`cmd &`, nohup) inherits SIGINT
    # ignored, and an ignored signal stays ignored across exec; a handled one is reset to its default there
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return subprocess.Popen([sys.executable, "-m", "doit", "-f", str(root / "dodo.py"), "-d", str(root), *args],
                            cwd=root, env=os.environ | env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture
def real_dodo(two_kernels) -> Path:
    (two_kernels.root / "dodo.py").write_text((Path(__file__).resolve().parents[1] / "dodo.py").read_text())
    return two_kernels.root


def test_a_second_doit_waits_for_the_first_or_fails_clearly_with_no_wait(real_dodo):
    root = real_dodo
    kbuild = artifacts(root).kbuild
    first = doit_process(root, "build:x86_64-micro", FAKE_SLEEP="4")
    try:
        wait_for(kbuild / "build-started")
        busy = doit_process(root, "build:aarch64-micro", KTAILOR_NO_WAIT="1")
        _, err = busy.communicate(timeout=60)
        assert busy.returncode != 0
        assert "is in use by pid" in err and "KTAILOR_NO_WAIT=1" in err and "Traceback" not in err
        assert not (artifacts(root, target="aarch64-micro").dir).exists()  # it did nothing
        second = doit_process(root, "build:aarch64-micro")
        _out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
        assert "waiting for pid" in err
        assert first.poll() is not None  # it only ran once the first had finished
    finally:
        first.kill()
        first.wait()


def test_ctrl_c_during_a_build_leaves_no_make_behind(real_dodo):
    root = real_dodo
    kbuild = artifacts(root).kbuild
    run = doit_process(root, "build:x86_64-micro", FAKE_SLEEP="60")
    wait_for(kbuild / "build-started")
    fake_pid = int((kbuild / "build-started").read_text())
    os.kill(fake_pid, 0)  # the fake compiler is running
    run.send_signal(signal.SIGINT)  # what Ctrl-C sends to doit (make is in its own session, so only doit gets it)
    run.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(fake_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(fake_pid, signal.SIGKILL)
        pytest.fail("the build's compiler kept running after doit was interrupted")


def test_reports_written_without_file_hashes_make_their_stage_rerun(two_kernels, monkeypatch):
    """An older ktailor's verify.json/boot.json cannot pass the install gate: the stages redo them."""
    root = two_kernels.root
    assert run_doit(root, "boot:x86_64-micro")[0] == 0
    files = artifacts(root)
    for report in (files.verify, files.boot):
        data = json.loads(report.read_text())
        del data["evidence"]
        report.write_text(json.dumps(data))
    code, ran, err = run_doit(root, "boot:x86_64-micro")
    assert code == 0, err
    assert ran == ["verify:x86_64-micro", "boot:x86_64-micro"]


@pytest.mark.skipif(not shutil.which("ccache"), reason="ccache is not installed (scripts/setup installs it)")
def test_builds_go_through_ccache_by_default_with_hits_recorded(two_kernels, monkeypatch):
    root = two_kernels.root
    assert run_doit(root, "build:x86_64-micro")[0] == 0
    files = artifacts(root)
    first = read_report(files.build_json, "build")
    assert first["make_vars"]["CC"] == "ccache gcc"
    assert first["ccache"]["dir"] == str(root.parent / "cache" / "ccache")
    assert first["ccache"]["misses"] >= 1 and first["ccache"]["hits"] == 0, files.ccache_stats.read_text()
    assert first["make_vars"]["KBUILD_BUILD_USER"] == "ktailor" and "KBUILD_BUILD_TIMESTAMP" in first["make_vars"]
    shutil.rmtree(files.kbuild / "arch")  # a rebuild of the same inputs: every compile is a hit
    code, ran, err = run_doit(root, "build:x86_64-micro")
    assert code == 0 and ran == ["build:x86_64-micro"], err
    second = read_report(files.build_json, "build")
    assert second["ccache"]["hits"] >= 1 and second["ccache"]["misses"] == 0

    # Another build dir (another machine's checkout, or the next point release's tree): still hits, because
    # paths under the build dir are hashed relative to it (CCACHE_BASEDIR).
    monkeypatch.setenv("KTAILOR_BUILD_DIR", str(root.parent / "elsewhere" / "build"))
    assert run_doit(root, "build:x86_64-micro")[0] == 0
    moved = read_report(artifacts(root).build_json, "build")
    assert moved["ccache"]["hits"] >= 1 and moved["ccache"]["misses"] == 0, moved["ccache"]
    monkeypatch.setenv("KTAILOR_BUILD_DIR", str(root.parent / "build"))

    monkeypatch.setenv("KTAILOR_CCACHE", "0")  # off: the make variables change, so config and build rerun
    code, ran, err = run_doit(root, "build:x86_64-micro")
    assert code == 0 and ran == ["config:x86_64-micro", "build:x86_64-micro"], err
    off = read_report(files.build_json, "build")
    assert "CC" not in off["make_vars"] and off["ccache"] is None


def test_shared_tables_rerun_only_the_tasks_whose_entries_changed(two_kernels):
    """probes.toml and must-stay.toml are read entry by entry: a comment reruns nothing, a mini-only probe
    reruns no micro boot, a micro probe reruns every micro boot, a must-stay entry every verify."""
    root = two_kernels.root
    assert run_doit(root, "boot")[0] == 0
    probes = root / "guest" / "probes.toml"
    probes.write_text("# a comment moves every line number\n" + probes.read_text())
    assert run_doit(root, "boot")[1] == []
    probes.write_text(probes.read_text().replace('name = "pci"\nrequirement = "pci"', 'name = "pci"\nrequirement = "pci-bus"'))
    assert run_doit(root, "boot")[1] == []
    probes.write_text(probes.read_text().replace('requirement = "devices"\nsymbols = ["BLK_DEV", "VIRTIO_BLK"]',
                                                 'requirement = "devices"\nsymbols = ["VIRTIO_BLK", "BLK_DEV"]'))
    code, ran, err = run_doit(root, "boot")
    assert code == 0 and sorted(ran) == sorted(f"boot:{t}{s}" for t in ("x86_64-micro", "aarch64-micro")
                                               for s in ("", "@6.1.2")), err
    must_stay = root / "fragments" / "must-stay.toml"
    must_stay.write_text('# kept\n[[keep]]\noption = "CONFIG_PRINTK"\nwhy = "The console."\n')
    code, ran, err = run_doit(root, "verify")
    assert code == 0 and len(ran) == 4 and all(name.startswith("verify:") for name in ran), err
    must_stay.write_text("# kept, said again\n" + must_stay.read_text())
    assert run_doit(root, "verify")[1] == []


def test_a_must_stay_feature_the_config_leaves_off_fails_verify(project_factory):
    """The must-stay set is a verdict of the graph itself, not only of the upgrade pre-flight's comparison."""
    project = project_factory()
    sha = project.kernel("6.1.1", defaults="# CONFIG_FUTEX is not set\n")
    project.versions([("6.1.1", sha)], targets=["x86_64-micro"], default="6.1.1")
    project.must_stay()
    code, _, err = run_doit(project.root, "install:x86_64-micro")
    assert code != 0 and "CONFIG_FUTEX is off but must stay on (fragments/must-stay.toml:2" in err
    verify = read_report(artifacts(project.root).verify, "verify")
    assert verify["status"] == "failed" and verify["must_stay"] == {"checked": 1, "missing": ["FUTEX"]}
    assert not (project.root.parent / "prefix").exists()


def test_an_os_error_inside_an_action_is_one_paragraph_not_a_traceback(two_kernels):
    root = two_kernels.root
    assert run_doit(root, "build:x86_64-micro")[0] == 0
    artifacts(root).verify.mkdir()  # where a file is written
    code, _, err = run_doit(root, "verify:x86_64-micro")
    assert code != 0 and "E: verify failed: Is a directory" in err
    assert "Traceback" not in err
