"""verify (image magic, budgets, audit gate) and install (atomic, refuses unverified, keeps old)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from ktailor.errors import VerificationFailed
from ktailor.install import install_target
from ktailor.verify import check_arm64_image, check_bzimage, check_elf, verify_target


def elf(machine: int, bits: int = 2) -> bytes:
    return b"\x7fELF" + bytes([bits, 1, 1]) + bytes(9) + struct.pack("<HH", 2, machine) + bytes(44)


def bzimage() -> bytes:
    data = bytearray(0x400)
    data[0x1FE:0x200] = b"\x55\xaa"
    data[0x202:0x206] = b"HdrS"
    return bytes(data)


def arm64_image() -> bytes:
    data = bytearray(128)
    data[0x38:0x3C] = b"ARM\x64"
    return bytes(data)


@pytest.mark.parametrize(
    ("check", "content", "arch", "problem"),
    [
        pytest.param(check_elf, elf(62), "x86", None, id="elf-x86-ok"),
        pytest.param(check_elf, elf(183), "arm64", None, id="elf-arm64-ok"),
        pytest.param(check_elf, elf(183), "x86", "not x86", id="elf-wrong-machine"),
        pytest.param(check_elf, elf(62, bits=1), "x86", "32-bit", id="elf-32bit"),
        pytest.param(check_elf, b"MZ" + bytes(100), "x86", "not an ELF", id="not-elf"),
        pytest.param(check_elf, b"\x7fEL", "x86", "not an ELF", id="truncated"),
        pytest.param(check_bzimage, bzimage(), "x86", None, id="bzimage-ok"),
        pytest.param(check_bzimage, elf(62), "x86", "not a bzImage", id="bzimage-is-elf"),
        pytest.param(check_arm64_image, arm64_image(), "arm64", None, id="image-ok"),
        pytest.param(check_arm64_image, bzimage(), "arm64", "not an arm64 Image", id="image-is-bzimage"),
    ],
)
def test_image_checks_look_at_content(tmp_path, check, content, arch, problem):
    path = tmp_path / "image"
    path.write_bytes(content)
    result = check(path, arch)
    assert (result is None) if problem is None else (problem in result)


def kbuild_with_images(tmp_path: Path, vmlinux: bytes = elf(62)) -> Path:
    kbuild = tmp_path / "kbuild"
    (kbuild / "arch/x86/boot").mkdir(parents=True)
    (kbuild / "vmlinux").write_bytes(vmlinux)
    (kbuild / "arch/x86/boot/bzImage").write_bytes(bzimage())
    return kbuild


def run_verify(tmp_path: Path, kbuild: Path, budget: dict, audit_status: str = "passed"):
    audit = tmp_path / "audit.json"
    audit.write_text(json.dumps({"status": audit_status}))
    return verify_target(name="x86_64-micro", version="6.1.1", kernel_arch="x86", kbuild=kbuild,
                         images={"vmlinux": "elf", "arch/x86/boot/bzImage": "bzimage"}, budget=budget,
                         audit_file=audit, out=tmp_path / "verify.json")


def test_verify_passes_and_records_sizes(tmp_path):
    report = run_verify(tmp_path, kbuild_with_images(tmp_path), {"vmlinux": 10_000, "bzImage": 10_000})
    assert report["status"] == "passed"
    assert json.loads((tmp_path / "verify.json").read_text())["artifacts"]["bzImage"]["size"] == 0x400


@pytest.mark.parametrize(
    ("budget", "audit", "vmlinux", "words"),
    [
        pytest.param({"vmlinux": 10, "bzImage": 10_000}, "passed", elf(62), "over its budget of 10", id="over-budget"),
        pytest.param({"vmlinux": 10_000, "bzImage": 10_000}, "failed", elf(62), "audit did not pass", id="audit-failed"),
        pytest.param({"vmlinux": 10_000, "bzImage": 10_000}, "passed", elf(183), "not x86", id="wrong-arch"),
    ],
)
def test_verify_failures_write_a_failed_report(tmp_path, budget, audit, vmlinux, words):
    with pytest.raises(VerificationFailed, match=words):
        run_verify(tmp_path, kbuild_with_images(tmp_path, vmlinux), budget, audit)
    assert json.loads((tmp_path / "verify.json").read_text())["status"] == "failed"


def install(tmp_path: Path, version: str, verify_status: str = "passed", boot: dict | None = None) -> Path:
    work = tmp_path / f"work-{version}"
    work.mkdir(exist_ok=True)
    (work / "vmlinux").write_bytes(elf(62))
    (work / "verify.json").write_text(json.dumps({"status": verify_status, "problems": ["too big"]}))
    boot_file = None
    if boot is not None:
        boot_file = work / "boot.json"
        boot_file.write_text(json.dumps(boot))
    return install_target(name="x86_64-micro", version=version, prefix=tmp_path / "prefix",
                          files={"vmlinux": work / "vmlinux"}, manifest={"cmdline": "console=ttyS0"},
                          verify_file=work / "verify.json", boot_file=boot_file)


def test_install_keeps_earlier_versions_and_moves_current(tmp_path):
    first = install(tmp_path, "6.1.1", boot={"status": "pass", "metrics": {"time_to_init_ms": 500}})
    second = install(tmp_path, "6.1.2", boot={"status": "pass"})
    assert first.is_dir() and second.is_dir()
    link = tmp_path / "prefix" / "x86_64-micro"
    assert link.is_symlink() and link.resolve() == second.resolve()
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["cmdline"] == "console=ttyS0" and len(manifest["sha256"]["vmlinux"]) == 64
    assert json.loads((first / "manifest.json").read_text())["boot"]["metrics"]["time_to_init_ms"] == 500
    install(tmp_path, "6.1.2")  # reinstall replaces in place
    assert sorted(p.name for p in (tmp_path / "prefix" / "6.1.2").iterdir()) == ["x86_64-micro"]


@pytest.mark.parametrize(
    ("verify_status", "boot", "words"),
    [
        pytest.param("failed", None, "verification failed", id="verify-failed"),
        pytest.param("passed", {"status": "fail", "message": "probe dm-crypt failed"}, "boot verification failed",
                     id="boot-failed"),
    ],
)
def test_install_refuses_unverified_kernels_and_leaves_nothing(tmp_path, verify_status, boot, words):
    with pytest.raises(VerificationFailed, match=words):
        install(tmp_path, "6.1.1", verify_status, boot)
    assert not (tmp_path / "prefix" / "6.1.1" / "x86_64-micro").exists()
    assert not (tmp_path / "prefix" / "x86_64-micro").exists()
