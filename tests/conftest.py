"""Shared fixtures: a small ktailor project on disk, backed by the fake kernel in tests/fakelinux."""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAKELINUX = Path(__file__).resolve().parent / "fakelinux"

FRAGMENT = """\
# requirement: {group}
# A test fragment.

# The guest needs a serial console to say anything at all.
CONFIG_SERIAL_8250=y
# {symbol} is what this fragment is for.
CONFIG_{symbol}=y
"""


def fake_tarball(directory: Path, version: str, extra: str = "", defaults: str = "",
                 makefile_version: str | None = None) -> tuple[Path, str]:
    """A kernel.org-style mirror entry holding the fake kernel tree; returns (tarball, sha256).
    `extra`: symbols that never land; `defaults`: .config lines (one per line) its allnoconfig adds
    unasked, each symbol also defined in its Kconfig so that it exists in that tree; `makefile_version`:
    the release its Makefile claims (default: `version`)."""
    folder = directory / f"v{version.split('.', maxsplit=1)[0]}.x"
    folder.mkdir(parents=True, exist_ok=True)
    tarball = folder / f"linux-{version}.tar.xz"
    staging = directory / f"staging-{version}"
    shutil.copytree(FAKELINUX, staging / f"linux-{version}", ignore=shutil.ignore_patterns("__pycache__"))
    makefile = staging / f"linux-{version}" / "Makefile"
    numbers = [*(makefile_version or version).split("."), "0"][:3]
    makefile.write_text("VERSION = {}\nPATCHLEVEL = {}\nSUBLEVEL = {}\nEXTRAVERSION =\n".format(*numbers)
                        + makefile.read_text())
    if extra:
        (staging / f"linux-{version}" / "unsupported").write_text(extra)
    if defaults:
        (staging / f"linux-{version}" / "defaults").write_text(defaults)
        with (staging / f"linux-{version}" / "Kconfig").open("a") as kconfig:
            for symbol in re.findall(r"CONFIG_([A-Z0-9_]+)", defaults):
                kconfig.write(f"\nconfig {symbol}\n\tbool \"a default\"\n")
    with tarfile.open(tarball, "w:xz") as archive:
        archive.add(staging / f"linux-{version}", arcname=f"linux-{version}")
    shutil.rmtree(staging)
    return tarball, hashlib.sha256(tarball.read_bytes()).hexdigest()


class ProjectFactory:
    """Writes a project (targets.toml from the repo, small fragments, versions.toml) under tmp."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mirror = root / "mirror"
        (root / "fragments").mkdir(parents=True)
        shutil.copy(REPO / "targets.toml", root / "targets.toml")
        shutil.copytree(REPO / "guest", root / "guest")
        self.fragment("common.conf", "boot-console", "PRINTK")
        self.fragment("x86.conf", "cpu", "X86_THING")
        self.fragment("arm.conf", "cpu", "ARM_THING")
        self.fragment("micro.conf", "transport", "VIRTIO_MMIO")
        self.fragment("mini.conf", "pci", "PCI")
        self.list("micro-x86_64.list", "common.conf", "x86.conf", "micro.conf")
        self.list("mini-x86_64.list", "common.conf", "x86.conf", "mini.conf")
        self.list("micro-aarch64.list", "common.conf", "arm.conf", "micro.conf")
        self.list("mini-aarch64.list", "common.conf", "arm.conf", "mini.conf")

    def fragment(self, name: str, group: str, symbol: str) -> Path:
        path = self.root / "fragments" / name
        path.write_text(FRAGMENT.format(group=group, symbol=symbol))
        return path

    def must_stay(self, symbol: str = "FUTEX", why: str = "Every pthread mutex is built on futex(2).") -> Path:
        """fragments/must-stay.toml keeping one option."""
        path = self.root / "fragments" / "must-stay.toml"
        path.write_text(f'[[keep]]\noption = "CONFIG_{symbol}"\nwhy = "{why}"\n')
        return path

    def list(self, name: str, *entries: str) -> Path:
        path = self.root / "fragments" / name
        path.write_text("# test list\n" + "".join(f"{e}\n" for e in entries))
        return path

    def versions(self, kernels: list[tuple[str, str]], targets: list[str] | None = None, default: str | None = None) -> Path:
        lines = [f'mirror = "{self.mirror.as_uri()}"']
        if default:
            lines.append(f'default = "{default}"')
        for version, sha in kernels:
            lines += ["", "[[kernel]]", f'version = "{version}"', f'sha256 = "{sha}"']
            if targets:
                lines.append("targets = [" + ", ".join(f'"{t}"' for t in targets) + "]")
        path = self.root / "versions.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def kernel(self, version: str, unsupported: str = "", defaults: str = "") -> str:
        _, sha = fake_tarball(self.mirror, version, unsupported, defaults)
        return sha


@pytest.fixture
def project_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], ProjectFactory]:
    for variable in ("KTAILOR_VERSIONS", "KTAILOR_MIRROR", "KTAILOR_MAKE_VARS", "JOBS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("KTAILOR_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.setenv("KTAILOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KTAILOR_PREFIX", str(tmp_path / "prefix"))
    monkeypatch.setenv("KTAILOR_QUIET", "1")
    monkeypatch.setenv("KTAILOR_SKIP_BOOT", "1")  # the fake kernel cannot boot; its boot.json says "skipped"

    def make() -> ProjectFactory:
        return ProjectFactory(tmp_path / "project")

    return make


@pytest.fixture
def two_kernels(project_factory):
    """Two point releases of the fake kernel, both micro targets each; 6.1.1 is the default."""
    project = project_factory()
    old = project.kernel("6.1.1")
    new = project.kernel("6.1.2")
    project.versions([("6.1.1", old), ("6.1.2", new)], targets=["x86_64-micro", "aarch64-micro"], default="6.1.1")
    return project
