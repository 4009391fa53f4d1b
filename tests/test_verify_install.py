"""verify (image magic, budgets, audit gate, evidence) and install (the evidence gate, links that never dangle, prune)."""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import pytest

from ktailor.core.errors import EnvironmentProblem, KtailorError, VerificationFailed
from ktailor.core.records import sha256_of
from ktailor.security.evidence import check_install, fingerprint
from ktailor.stages.install import install_target, prune
from ktailor.stages.verify import check_arm64_image, check_bzimage, check_elf, verify_target


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
    (kbuild / ".config").write_text("CONFIG_64BIT=y\n")
    audit = tmp_path / "audit.json"
    audit.write_text(json.dumps({"status": audit_status, "config_sha256": sha256_of(kbuild / ".config")}))
    return verify_target(name="x86_64-micro", version="6.1.1", kernel_arch="x86", kbuild=kbuild,
                         images={"vmlinux": "elf", "arch/x86/boot/bzImage": "bzimage"}, budget=budget,
                         audit_file=audit, out=tmp_path / "verify.json")


def test_verify_passes_and_records_sizes_and_the_hashes_it_judged(tmp_path):
    kbuild = kbuild_with_images(tmp_path)
    report = run_verify(tmp_path, kbuild, {"vmlinux": 10_000, "bzImage": 10_000})
    assert report["status"] == "passed"
    written = json.loads((tmp_path / "verify.json").read_text())
    assert written["artifacts"]["bzImage"]["size"] == 0x400
    assert written["evidence"]["images"]["vmlinux"] == sha256_of(kbuild / "vmlinux")
    assert written["evidence"]["config"] == sha256_of(kbuild / ".config")
    assert written["evidence"]["audit"] == sha256_of(tmp_path / "audit.json")


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


def test_verify_fails_a_config_edited_after_its_audit(tmp_path):
    kbuild = kbuild_with_images(tmp_path)
    run_verify(tmp_path, kbuild, {"vmlinux": 10_000, "bzImage": 10_000})
    (kbuild / ".config").write_text("CONFIG_64BIT=y\nCONFIG_DEBUG_KERNEL=y\n")  # what menuconfig does
    with pytest.raises(VerificationFailed, match=r"not the \.config the audit passed"):
        verify_target(name="x86_64-micro", version="6.1.1", kernel_arch="x86", kbuild=kbuild,
                      images={"vmlinux": "elf", "arch/x86/boot/bzImage": "bzimage"},
                      budget={"vmlinux": 10_000, "bzImage": 10_000}, audit_file=tmp_path / "audit.json",
                      out=tmp_path / "verify.json")


# --- the install gate and layout -------------------------------------------------------------------
class Built:
    """One checked build in a work dir: images, .config, audit.json, verify.json (the real verify stage)
    and a boot.json with the evidence the boot stage records (status as given)."""

    def __init__(self, tmp_path: Path, name: str, boot_status: str = "pass") -> None:
        self.work = tmp_path / name
        self.work.mkdir()
        self.kbuild = kbuild_with_images(self.work, elf(62) + name.encode())
        run_verify(self.work, self.kbuild, {"vmlinux": 10_000, "bzImage": 10_000})
        self.write_boot(boot_status)

    @property
    def images(self) -> dict[str, Path]:
        return {"vmlinux": self.kbuild / "vmlinux", "bzImage": self.kbuild / "arch/x86/boot/bzImage"}

    def write_boot(self, status: str) -> None:
        evidence = fingerprint(self.images, self.kbuild / ".config")
        extra = {"reason": "KTAILOR_SKIP_BOOT is set"} if status == "skipped" else {"message": "probe failed"}
        (self.work / "boot.json").write_text(json.dumps({"status": status, "evidence": evidence} | extra))

    def gate(self, unbooted_ok: bool = False) -> dict:
        return check_install(images=self.images, config=self.kbuild / ".config", audit=self.work / "audit.json",
                             verify=self.work / "verify.json", boot=self.work / "boot.json", unbooted_ok=unbooted_ok,
                             rerun="doit boot:x86_64-micro")

    def install(self, prefix: Path, version: str = "6.1.1", current: bool = True) -> Path:
        gate = self.gate()
        files = self.images | {"config": self.kbuild / ".config"}
        return install_target(name="x86_64-micro", version=version, prefix=prefix, files=files,
                              manifest={"cmdline": "console=ttyS0", "evidence": gate["evidence"]}, make_current=current)


def test_gate_passes_a_build_whose_every_check_judged_these_files(tmp_path):
    build = Built(tmp_path, "a")
    gate = build.gate()
    assert gate["boot"]["status"] == "pass"
    assert gate["evidence"]["images"]["vmlinux"] == sha256_of(build.kbuild / "vmlinux")


@pytest.mark.parametrize(
    ("tamper", "words"),
    [
        pytest.param(lambda b: (b.kbuild / "vmlinux").write_bytes(elf(62) + b"rebuilt"), "vmlinux changed since",
                     id="image-rebuilt-after-checks"),
        pytest.param(lambda b: (b.kbuild / ".config").write_text("CONFIG_DEBUG_KERNEL=y\n"),
                     r"is not the \.config the audit passed", id="config-edited-by-menuconfig"),
        pytest.param(lambda b: (b.work / "boot.json").write_text(json.dumps(
            {"status": "pass", "evidence": {"images": {"vmlinux": "0" * 64}, "config": "0" * 64}})),
            "boot.json does not vouch", id="stale-boot-pass"),
        pytest.param(lambda b: (b.work / "boot.json").write_text(json.dumps({"status": "pass"})),
                     "recorded no file hashes", id="boot-without-evidence"),
        pytest.param(lambda b: b.write_boot("skipped"), "not boot-verified", id="boot-skipped"),
        pytest.param(lambda b: b.write_boot("fail"), "boot verification fail", id="boot-failed"),
        pytest.param(lambda b: (b.work / "boot.json").unlink(), "boot stage has not run", id="never-booted"),
        pytest.param(lambda b: (b.work / "verify.json").write_text('{"status": "pass'), "is not valid JSON",
                     id="truncated-verify-json"),
        pytest.param(lambda b: (b.work / "audit.json").write_text(json.dumps({"status": "failed"})),
                     "audit did not pass", id="audit-failed"),
    ],
)
def test_gate_refuses_and_nothing_is_installed(tmp_path, tamper, words):
    build = Built(tmp_path, "a")
    tamper(build)
    with pytest.raises(KtailorError, match=words) as caught:
        build.install(tmp_path / "prefix")
    assert "\n" not in str(caught.value)  # one paragraph
    assert not (tmp_path / "prefix").exists()


def test_skipped_boot_installs_only_with_the_explicit_opt_in(tmp_path):
    build = Built(tmp_path, "a", boot_status="skipped")
    with pytest.raises(VerificationFailed, match="KTAILOR_ALLOW_UNBOOTED=1"):
        build.gate()
    assert build.gate(unbooted_ok=True)["boot"]["status"] == "skipped"


def test_install_keeps_earlier_versions_and_moves_current(tmp_path):
    prefix = tmp_path / "prefix"
    first = Built(tmp_path, "a").install(prefix, "6.1.1")
    second = Built(tmp_path, "b").install(prefix, "6.1.2")
    assert first.is_dir() and second.is_dir()
    link = prefix / "x86_64-micro"
    assert link.is_symlink() and link.resolve() == second.resolve()
    manifest = json.loads((prefix / "6.1.2" / "x86_64-micro" / "manifest.json").read_text())
    assert manifest["cmdline"] == "console=ttyS0" and len(manifest["sha256"]["vmlinux"]) == 64
    assert manifest["evidence"]["images"]["vmlinux"] == manifest["sha256"]["vmlinux"]
    Built(tmp_path, "c").install(prefix, "6.1.3", current=False)  # not the default kernel: current stays
    assert link.resolve() == second.resolve()


def test_rebuild_of_the_same_version_never_leaves_the_links_dangling(tmp_path):
    prefix = tmp_path / "prefix"
    old = Built(tmp_path, "old").install(prefix)
    builds = [Built(tmp_path, f"new{i}") for i in range(20)]
    seen, broken, stop = set(), [], threading.Event()

    def read_through_links() -> None:  # a VMM opening the kernel while installs run
        while not stop.is_set():
            for path in (prefix / "x86_64-micro" / "vmlinux", prefix / "6.1.1" / "x86_64-micro" / "vmlinux"):
                try:
                    seen.add(path.read_bytes())
                except OSError as exc:
                    broken.append(f"{path}: {exc}")

    reader = threading.Thread(target=read_through_links)
    reader.start()
    try:
        stores = [build.install(prefix) for build in builds]
    finally:
        stop.set()
        reader.join()
    assert not broken, broken[:3]
    assert len(seen) > 1  # the reader saw the kernel change under it
    assert old.is_dir() and all(store.is_dir() for store in stores)  # a running VM keeps its files
    assert (prefix / "x86_64-micro").resolve() == stores[-1].resolve()
    plan = prune(prefix)
    assert old in plan.remove and stores[-1] not in plan.remove and not old.exists()
    assert (prefix / "x86_64-micro" / "vmlinux").read_bytes() == (builds[-1].kbuild / "vmlinux").read_bytes()


def test_an_older_ktailors_install_dir_is_adopted_not_deleted(tmp_path):
    prefix = tmp_path / "prefix"
    legacy = prefix / "6.1.1" / "x86_64-micro"
    legacy.mkdir(parents=True)
    (legacy / "vmlinux").write_bytes(b"old layout")
    Built(tmp_path, "a").install(prefix)
    assert legacy.is_symlink()
    (adopted,) = (p for p in (prefix / "6.1.1").iterdir() if ".pre-" in p.name)
    assert (adopted / "vmlinux").read_bytes() == b"old layout"


def test_unwritable_prefix_is_one_paragraph(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the prefix should be")
    with pytest.raises(EnvironmentProblem, match="cannot install into") as caught:
        Built(tmp_path, "a").install(blocker / "prefix")
    assert "KTAILOR_PREFIX" in str(caught.value)


def test_a_current_link_that_cannot_be_swapped_leaves_every_link_as_it_was(tmp_path, monkeypatch):
    """An immutable prefix dir (chattr +i) lets the version dir's link change but not <prefix>/<target>: the
    install fails saying nothing changed, and that is true, because the first swap is undone."""
    prefix = tmp_path / "prefix"
    old = Built(tmp_path, "old").install(prefix)
    real_replace = os.replace

    def immutable_prefix(source, destination):
        if Path(destination) == prefix / "x86_64-micro":
            raise PermissionError(1, "Operation not permitted", str(destination))
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", immutable_prefix)
    with pytest.raises(EnvironmentProblem, match="Nothing that was installed before was changed"):
        Built(tmp_path, "new").install(prefix)
    assert (prefix / "6.1.1" / "x86_64-micro").resolve() == old.resolve()
    assert (prefix / "x86_64-micro").resolve() == old.resolve()


def test_files_that_differ_from_what_the_gate_judged_are_refused(tmp_path):
    build = Built(tmp_path, "a")
    gate = build.gate()
    (build.kbuild / "vmlinux").write_bytes(elf(62) + b"rebuilt between the gate and the copy")
    with pytest.raises(VerificationFailed, match="vmlinux changed after the checks judged them"):
        install_target(name="x86_64-micro", version="6.1.1", prefix=tmp_path / "prefix",
                       files=build.images | {"config": build.kbuild / ".config"}, manifest={}, make_current=True,
                       checked=gate["evidence"])
    assert not (tmp_path / "prefix" / "6.1.1" / "x86_64-micro").exists()
