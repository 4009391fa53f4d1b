"""modules.py: the packed module tree of types with modules, its checks, and the signing key the reproduce
stage carries. The real thing (make modules_install, kbuild's signing, modprobe in a Debian guest) runs in
test_kernel_integration.py on x86_64-mini."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from ktailor.core.errors import BuildFailed, VerificationFailed
from ktailor.farm import modules
from ktailor.project.targets import load_catalog
from ktailor.stages.verify import verify_target

REPO = Path(__file__).resolve().parents[1]
SIGNED = b"\x7fELF...module body..." + b"\x00" * 12 + modules.SIGNATURE_MAGIC


def staged(kbuild: Path, release: str = "5.10.262", body: bytes = SIGNED) -> Path:
    tree = kbuild / modules.STAGING / "lib" / "modules" / release
    (tree / "kernel" / "drivers" / "net").mkdir(parents=True)
    (tree / "kernel" / "drivers" / "net" / "dummy.ko").write_bytes(body)
    (tree / "modules.dep").write_text("kernel/drivers/net/dummy.ko:\n")
    (tree / "build").symlink_to("/somewhere/on/the/build/machine")
    return tree


def test_pack_is_deterministic_owned_by_root_dated_by_the_source_and_leaves_out_the_build_links(tmp_path):
    first, second = tmp_path / "a" / "kbuild", tmp_path / "b" / "kbuild"
    for kbuild in (first, second):
        tree = staged(kbuild)
        os.utime(tree / "modules.dep", (1, 1))  # a different mtime on disk must not matter
        modules.pack(kbuild, 1_700_000_000)
        assert not (kbuild / modules.STAGING).exists()
    assert (first / "modules.tar").read_bytes() == (second / "modules.tar").read_bytes()
    with tarfile.open(first / "modules.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["lib/modules/5.10.262", "lib/modules/5.10.262/kernel",
                                         "lib/modules/5.10.262/kernel/drivers", "lib/modules/5.10.262/kernel/drivers/net",
                                         "lib/modules/5.10.262/kernel/drivers/net/dummy.ko",
                                         "lib/modules/5.10.262/modules.dep"]
    assert {(m.uid, m.gid, m.mtime) for m in members} == {(0, 0, 1_700_000_000)}
    assert modules.modules_in(first / "modules.tar") == {"lib/modules/5.10.262/kernel/drivers/net/dummy.ko": True}


def test_pack_without_exactly_one_module_tree_says_so(tmp_path):
    (tmp_path / modules.STAGING).mkdir()
    with pytest.raises(BuildFailed, match="left 0 module trees"):
        modules.pack(tmp_path, 0)


@pytest.mark.parametrize(("body", "config", "wrong"), [
    pytest.param(SIGNED, "CONFIG_MODULE_SIG_FORCE=y\n", None, id="signed-and-enforced"),
    pytest.param(b"\x7fELF unsigned", "CONFIG_MODULE_SIG_FORCE=y\n", "1 unsigned module", id="unsigned-under-force"),
    pytest.param(b"\x7fELF unsigned", "# CONFIG_MODULE_SIG_FORCE is not set\n", None, id="unsigned-not-enforced"),
])
def test_verify_checks_the_archive_for_modules_and_their_signatures(tmp_path, body, config, wrong):
    kbuild = tmp_path / "kbuild"
    staged(kbuild, body=body)
    modules.pack(kbuild, 0)
    (kbuild / ".config").write_text(config)
    result = modules.check_archive(kbuild / "modules.tar", "x86")
    assert result is None if wrong is None else wrong in result


def test_an_archive_without_a_module_or_not_a_tar_fails_verify(tmp_path):
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    assert "holds no module" in modules.check_archive(empty, "x86")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    assert "not a readable tar" in modules.check_archive(junk, "x86")


def test_mini_installs_modules_tar_and_micro_does_not():
    catalog = load_catalog(REPO / "targets.toml")
    assert catalog.target("x86_64-mini").images["modules.tar"] == "modules"
    assert catalog.target("aarch64-mini").make_goals == ["Image", "vmlinux", "modules"]
    assert "modules.tar" not in catalog.target("x86_64-micro").images
    assert catalog.target("x86_64-micro").make_goals == ["vmlinux", "bzImage"]


def test_the_second_build_gets_the_first_ones_key_pair_with_its_mtimes(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "certs").mkdir(parents=True)
    (first / "certs" / "x509.genkey").write_text("[ req ]\n")
    (first / "certs" / "signing_key.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    os.utime(first / "certs" / "x509.genkey", (100, 100))
    os.utime(first / "certs" / "signing_key.pem", (200, 200))  # newer than its config: kbuild keeps it
    assert modules.carry_signing_key(first, second) == list(modules.SIGNING_FILES)
    assert (second / "certs" / "signing_key.pem").read_text() == "-----BEGIN PRIVATE KEY-----\n"
    assert (second / "certs" / "signing_key.pem").stat().st_mtime == 200
    assert modules.carry_signing_key(tmp_path / "none", tmp_path / "other") == []


def test_verify_fails_a_mini_build_whose_modules_are_unsigned_under_enforcement(tmp_path):
    kbuild = tmp_path / "kbuild"
    staged(kbuild, body=b"\x7fELF unsigned")
    modules.pack(kbuild, 0)
    (kbuild / ".config").write_text("CONFIG_MODULE_SIG_FORCE=y\n")
    audit = tmp_path / "audit.json"
    audit.write_text('{"status": "missing"}')
    with pytest.raises(VerificationFailed, match=r"modules\.tar holds 1 unsigned module"):
        verify_target(name="x86_64-mini", version="5.10.262", kernel_arch="x86", kbuild=kbuild,
                      images={"modules.tar": "modules"}, budget={"modules.tar": 1_000_000}, audit_file=audit,
                      out=tmp_path / "verify.json")
