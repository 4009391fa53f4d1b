"""The supported arches, kernel types and targets, loaded from targets.toml (data, not code)."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ktailor.core.errors import InputError
from ktailor.core.records import read_toml

IMAGE_KINDS = ("elf", "bzimage", "arm64-image")
MODULES_ARCHIVE = "modules.tar"  # modules.py packs a type's modules into it, beside the images
VMMS = ("firecracker", "cloud-hypervisor", "qemu")  # those vmconfig.py writes configs for
KATA_HYPERVISORS = ("firecracker", "clh", "qemu")  # Kata's [hypervisor.<name>] sections


@dataclass(frozen=True)
class Arch:
    name: str  # ktailor's name: x86_64, aarch64
    kernel_arch: str  # the kernel's ARCH=: x86, arm64
    cross_compile: str  # prefix used when the host is another arch
    make_targets: tuple[str, ...]
    images: dict[str, str]  # path inside the build dir -> kind of check
    qemu: str
    qemu_package: str
    direct_boot_image: str = "vmlinux"  # the image a firmware-less VMM (Firecracker, Cloud Hypervisor) loads

    def compiler_prefix(self, host: str | None = None) -> str:
        """CROSS_COMPILE for this arch on this host ('' when building natively)."""
        host = host or platform.machine()
        return "" if host == self.name else self.cross_compile


@dataclass(frozen=True)
class KernelType:
    name: str
    description: str
    default: bool
    vmms: tuple[str, ...] = ()  # VMMs whose configs each install carries
    kata: tuple[str, ...] = ()  # Kata hypervisor sections that can use the kernel
    modules: bool = False  # builds, signs, checks and installs loadable modules (modules.py)


@dataclass(frozen=True)
class Target:
    arch: Arch
    type: KernelType
    size_budget: dict[str, int]  # image file name -> bytes
    cmdline: str
    boot: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.arch.name}-{self.type.name}"

    @property
    def list_name(self) -> str:
        return f"{self.type.name}-{self.arch.name}.list"

    @property
    def images(self) -> dict[str, str]:
        """What the build installs, as paths in the kbuild dir -> the check verify applies: the arch's
        images, and the packed module tree for types with modules."""
        return self.arch.images | ({MODULES_ARCHIVE: "modules"} if self.type.modules else {})

    @property
    def make_goals(self) -> list[str]:
        return [*self.arch.make_targets, *(["modules"] if self.type.modules else [])]


@dataclass(frozen=True)
class Catalog:
    """Everything targets.toml declares."""

    path: Path
    arches: dict[str, Arch]
    types: dict[str, KernelType]
    targets: dict[str, Target]

    def target(self, name: str, *, where: str = "") -> Target:
        if name not in self.targets:
            known = ", ".join(sorted(self.targets))
            raise InputError(
                f"unknown target {name!r}{where}. Known targets (from {self.path}): {known}. "
                "A target is <arch>-<type>; add a [target.<arch>-<type>] table to targets.toml "
                "and a fragments/<type>-<arch>.list to create one."
            )
        return self.targets[name]

    def default_targets(self) -> list[str]:
        return [name for name, t in self.targets.items() if t.type.default]


def _require(table: dict[str, Any], key: str, path: Path, what: str) -> Any:
    if key not in table:
        raise InputError(f"{what} has no {key!r}; add `{key} = …` to it.", path=path)
    return table[key]


def _kernel_type(name: str, row: dict[str, Any], path: Path) -> KernelType:
    for key, known in (("vmms", VMMS), ("kata", KATA_HYPERVISORS)):
        if unknown := sorted(set(row.get(key, ())) - set(known)):
            raise InputError(f"[type.{name}] {key} names {', '.join(unknown)}; the known ones are {', '.join(known)}.",
                             path=path)
    return KernelType(name=name, description=row.get("description", ""), default=row.get("default", True),
                      vmms=tuple(row.get("vmms", ())), kata=tuple(row.get("kata", ())),
                      modules=bool(row.get("modules", False)))


def load_catalog(path: Path) -> Catalog:
    _, data = read_toml(path, "targets file not found; ktailor needs it to know arches and types.")

    arches = {}
    for name, row in data.get("arch", {}).items():
        images = dict(_require(row, "images", path, f"[arch.{name}]"))
        for image, kind in images.items():
            if kind not in IMAGE_KINDS:
                raise InputError(
                    f"[arch.{name}] image {image!r} has check {kind!r}; use one of {', '.join(IMAGE_KINDS)}.",
                    path=path,
                )
        arches[name] = Arch(
            name=name,
            kernel_arch=_require(row, "kernel_arch", path, f"[arch.{name}]"),
            cross_compile=row.get("cross_compile", ""),
            make_targets=tuple(_require(row, "make_targets", path, f"[arch.{name}]")),
            images=images,
            qemu=row.get("qemu", f"qemu-system-{name}"),
            qemu_package=row.get("qemu_package", f"qemu-system-{name}"),
            direct_boot_image=row.get("direct_boot_image", "vmlinux"),
        )
        if Path(arches[name].direct_boot_image).name not in {Path(p).name for p in images}:
            raise InputError(f"[arch.{name}] direct_boot_image = {arches[name].direct_boot_image!r} is not one of "
                             f"its images ({', '.join(Path(p).name for p in images)}).", path=path)
    types = {name: _kernel_type(name, row, path) for name, row in data.get("type", {}).items()}
    targets = {}
    for name, row in data.get("target", {}).items():
        arch_name, sep, type_name = name.partition("-")
        if not sep or arch_name not in arches:
            raise InputError(
                f"[target.{name}]: {arch_name!r} is not an arch declared here; "
                f"declared arches: {', '.join(sorted(arches))}.",
                path=path,
            )
        if type_name not in types:
            raise InputError(
                f"[target.{name}]: {type_name!r} is not a type declared here; "
                f"declared types: {', '.join(sorted(types))}.",
                path=path,
            )
        budget = dict(_require(row, "size_budget", path, f"[target.{name}]"))
        arch = arches[arch_name]
        image_names = {Path(p).name for p in arch.images} | ({MODULES_ARCHIVE} if types[type_name].modules else set())
        if set(budget) != image_names:
            raise InputError(
                f"[target.{name}] size_budget covers {sorted(budget)} but the arch installs "
                f"{sorted(image_names)}; give one budget per image.",
                path=path,
            )
        targets[name] = Target(
            arch=arch,
            type=types[type_name],
            size_budget=budget,
            cmdline=row.get("cmdline", ""),
            boot=dict(row.get("boot", {})),
        )
    return Catalog(path=path, arches=arches, types=types, targets=targets)
