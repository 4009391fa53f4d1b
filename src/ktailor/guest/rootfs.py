"""The acceptance stage's root filesystem: a stock Debian userspace, built once per machine.

`mmdebstrap --variant=<variant> --include=<packages> <suite>` (guest/acceptance.toml [rootfs]) writes a
tarball into the cache, keyed by what went into it (suite, variant, packages, Debian architecture,
mirror), so every target and kernel of an arch shares one, and a rebuild happens only when the list
changes. The tarball is unpacked (as root, or under fakeroot) with the guest-side files of the stage
added — guest/accept/ (the runner, its systemd unit, helpers) and the workload scripts — and turned into
an ext4 image with `mke2fs -d`, cached under a key of the tarball and those files. QEMU opens the image
with snapshot=on, so one image serves every boot.

An air-gapped farm sets KTAILOR_ROOTFS_<ARCH> (e.g. KTAILOR_ROOTFS_X86_64) to a prebuilt tarball of the
same kind (a root filesystem with systemd and the packages the workloads use); its sha256 is the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ktailor.core.errors import EnvironmentProblem
from ktailor.core.progress import info
from ktailor.core.records import read_report, sha256_of

ROOTFS_ENV = "KTAILOR_ROOTFS_{arch}"  # a prebuilt root filesystem tarball per arch (air-gapped farms)
MIRROR_ENV = "KTAILOR_DEBIAN_MIRROR"  # e.g. http://deb.internal/debian; default: mmdebstrap's own choice
GUEST_FILES = "accept"  # guest/accept/: copied into the image (runner, unit, helpers)
UNIT = "ktailor-accept.service"


class Unavailable(Exception):
    """No root filesystem can be had for this arch here; the message says why and what would provide one."""


@dataclass(frozen=True)
class RootfsSpec:
    suite: str
    variant: str
    packages: tuple[str, ...]
    image_size: str
    debian_arch: dict[str, str]  # ktailor arch -> Debian architecture


@dataclass(frozen=True)
class RootImage:
    image: Path  # the ext4 image (open it with snapshot=on)
    key: str
    source: str  # how the tarball was made (mmdebstrap command or the prebuilt tarball's path)
    packages: dict[str, str]  # package -> version, of the packages the spec names


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-6:]
        raise EnvironmentProblem(f"{what} failed ({' '.join(argv[:6])} …, exit {done.returncode}): " + " / ".join(tail))


def rootfs_setting(env: dict[str, str], arch: str) -> str:
    """The prebuilt root filesystem an air-gapped farm names for `arch` ("" when mmdebstrap makes it)."""
    return env.get(ROOTFS_ENV.format(arch=arch.upper()), "")


def tarball_for(spec: RootfsSpec, arch: str, cache_dir: Path, env: dict[str, str]) -> tuple[Path, str, str]:
    """(the root filesystem tarball of `arch`, its key, how it was made); built with mmdebstrap when missing."""
    prebuilt = rootfs_setting(env, arch)
    if prebuilt:
        path = Path(prebuilt).expanduser()
        if not path.is_file():
            raise EnvironmentProblem(f"{ROOTFS_ENV.format(arch=arch.upper())} names {path}, which is not a file; point it "
                                     "at a root filesystem tarball (see README, Acceptance) or unset it.")
        return path, sha256_of(path)[:16], f"prebuilt {path}"
    debian_arch = spec.debian_arch.get(arch)
    if debian_arch is None:
        raise Unavailable(f"guest/acceptance.toml [rootfs.debian_arch] names no Debian architecture for {arch}: no "
                          f"root filesystem is made for it here (a prebuilt one can be given in "
                          f"{ROOTFS_ENV.format(arch=arch.upper())})")
    if debian_arch != _host_debian_arch() and not _can_run_foreign(debian_arch):
        raise Unavailable(f"a {debian_arch} root filesystem needs qemu-user-static and binfmt_misc to run its "
                          f"maintainer scripts, which this host lacks (give a prebuilt one in "
                          f"{ROOTFS_ENV.format(arch=arch.upper())})")
    if not shutil.which("mmdebstrap"):
        raise Unavailable("mmdebstrap is not installed (Debian: apt-get install mmdebstrap; scripts/setup installs it)")
    mirror = env.get(MIRROR_ENV, "")
    argv = ["mmdebstrap", "--format=tar", f"--variant={spec.variant}", f"--arch={debian_arch}",
            "--include=" + ",".join(spec.packages), spec.suite]
    key = hashlib.sha256(json.dumps([argv, mirror]).encode()).hexdigest()[:16]
    tarball = cache_dir / "rootfs" / f"{spec.suite}-{debian_arch}-{key}.tar"
    if not tarball.is_file():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        part = tarball.with_name(tarball.name + ".part")
        if part.is_dir():
            shutil.rmtree(part)
        info(f"making the acceptance root filesystem: {' '.join(argv)} (once per machine; ~1-2 min)")
        _run([*argv, str(part), *([mirror] if mirror else [])], "mmdebstrap")
        part.replace(tarball)
    return tarball, key, " ".join(argv) + (f" {mirror}" if mirror else "")


def _host_debian_arch() -> str:
    done = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "")


def _can_run_foreign(debian_arch: str) -> bool:
    qemu = {"arm64": "aarch64", "armhf": "arm", "riscv64": "riscv64"}.get(debian_arch, debian_arch)
    return Path(f"/proc/sys/fs/binfmt_misc/qemu-{qemu}").exists()


def guest_files_digest(guest_dir: Path, workloads: dict[str, tuple[str, float]]) -> str:
    digest = hashlib.sha256()
    for path in sorted((guest_dir / GUEST_FILES).iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(json.dumps(sorted(workloads.items())).encode())
    return digest.hexdigest()[:16]


def root_image(spec: RootfsSpec, arch: str, cache_dir: Path, guest_dir: Path, workloads: dict[str, tuple[str, float]],
               env: dict[str, str]) -> RootImage:
    """The ext4 image for `arch` with the guest side of the stage and every workload script in it.
    `workloads`: name -> (script, timeout in seconds)."""
    tarball, tar_key, source = tarball_for(spec, arch, cache_dir, env)
    key = f"{tar_key}-{guest_files_digest(guest_dir, workloads)}"
    image = cache_dir / "rootfs" / f"{arch}-{key}.ext4"
    packages_file = image.with_suffix(".packages.json")
    if not image.is_file() or not packages_file.is_file():
        _make_image(tarball, image, packages_file, spec, guest_dir, workloads)
    return RootImage(image, key, source, read_report(packages_file, "acceptance root filesystem"))


def _make_image(tarball: Path, image: Path, packages_file: Path, spec: RootfsSpec, guest_dir: Path,
                workloads: dict[str, tuple[str, float]]) -> None:
    wrap = [] if os.geteuid() == 0 else ([shutil.which("fakeroot")] if shutil.which("fakeroot") else None)
    if wrap is None:
        raise Unavailable("unpacking the root filesystem with its owners needs root or fakeroot (apt-get install fakeroot)")
    with tempfile.TemporaryDirectory(prefix="ktailor-rootfs-", dir=image.parent) as scratch:
        tree = Path(scratch) / "tree"
        tree.mkdir()
        _add_guest_files(tree, guest_dir, workloads)
        part = image.with_name(image.name + ".part")
        script = (f"tar -xf {_quote(tarball)} -C {_quote(tree)} && "
                  f"chown -R 0:0 {_quote(tree / 'etc/ktailor')} {_quote(tree / 'usr/local/sbin')} && "
                  f"mke2fs -q -F -t ext4 -L ktailor-accept -m 0 -d {_quote(tree)} {_quote(part)} {spec.image_size}")
        _run([*wrap, "sh", "-c", script], "making the acceptance root filesystem image")
        packages_file.write_text(json.dumps(installed_versions(tree / "var/lib/dpkg/status", spec.packages), indent=1))
        part.replace(image)


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


def _add_guest_files(tree: Path, guest_dir: Path, workloads: dict[str, tuple[str, float]]) -> None:
    sbin = tree / "usr/local/sbin"
    units = tree / "etc/systemd/system"
    scripts = tree / "etc/ktailor/workloads"
    for folder in (sbin, units / "multi-user.target.wants", scripts):
        folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((guest_dir / GUEST_FILES).iterdir()):
        if path.name == UNIT:
            shutil.copy2(path, units / UNIT)
            (units / "multi-user.target.wants" / UNIT).symlink_to(f"/etc/systemd/system/{UNIT}")
        else:
            shutil.copy2(path, sbin / path.name)
            (sbin / path.name).chmod(0o755)
    for name, (script, timeout_s) in workloads.items():
        (scripts / f"{name}.sh").write_text(script)
        (scripts / f"{name}.timeout").write_text(f"{timeout_s:g}\n")


def installed_versions(status_file: Path, packages: tuple[str, ...]) -> dict[str, str]:
    """package -> version from dpkg's status file, for the packages asked for (and systemd, the init)."""
    wanted = set(packages) | {"systemd"}
    found: dict[str, str] = {}
    if not status_file.is_file():
        return found
    for stanza in status_file.read_text(errors="replace").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
        if fields.get("Package") in wanted and "installed" in fields.get("Status", ""):
            found[fields["Package"]] = fields.get("Version", "")
    return dict(sorted(found.items()))
