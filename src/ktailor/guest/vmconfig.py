"""Ready-to-run VMM configs for an installed kernel: what each VMM the target serves needs to boot it.

Every install carries them (targets.toml [type.*] vmms and kata say which), pointing at the install's
version link `<prefix>/<version>/<target>/`, so they stay valid across rebuilds of that version:

- `firecracker.json`: Firecracker's `--config-file` (boot-source, machine-config, a root drive whose
  path is a placeholder the user fills; vsock and network-interfaces when asked);
- `cloud-hypervisor.sh`: Cloud Hypervisor's argv (mini only: it is PCI-only);
- `qemu.sh`: the argv ktailor's boot stage starts the kernel with — made by the same function
  (boot.build_qemu_argv), with the user's root disk instead of the probe disk, writes kept, and KVM;
- `kata-configuration.toml`: the kernel lines of Kata Containers' [hypervisor.<name>] sections.

The scripts take the root filesystem image from $ROOTFS. `invoke vm-config` prints any of them with
the user's own paths and sizes.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from ktailor.core.errors import InputError
from ktailor.core.records import read_optional
from ktailor.guest.guest_files import GuestFiles
from ktailor.guest.qemu import RESTRICTED_NET, boot_settings, build_qemu_argv, vmm_cmdline_words
from ktailor.project.layout import Project
from ktailor.project.targets import VMMS, Target

ROOTFS_PLACEHOLDER = "/path/to/rootfs.ext4"  # Firecracker's JSON: the user fills it in
ROOTFS_VARIABLE = "ROOTFS"  # the scripts: `ROOTFS=img sh qemu.sh`
_SCRIPT_ROOTFS = "@ROOTFS@"  # stands for "$ROOTFS" until the script is quoted
FILES = {"firecracker": "firecracker.json", "cloud-hypervisor": "cloud-hypervisor.sh", "qemu": "qemu.sh"}
KATA_FILE = "kata-configuration.toml"


@dataclass(frozen=True)
class VmShape:
    """What the user chooses: the root disk, the size of the VM, and optional network and vsock."""

    rootfs: str | None = None
    vcpus: int | None = None  # default: the boot table's smp
    mem_mib: int | None = None  # default: the boot table's memory_mib
    tap: str | None = None  # a host tap device for the guest's NIC
    vsock_cid: int | None = None
    vsock_socket: str | None = None
    accel: str = "kvm"
    extra_cmdline: str = ""


def _checked(target: Target, shape: VmShape) -> VmShape:
    if shape.vcpus is not None and not 1 <= shape.vcpus <= 32:
        raise InputError(f"--vcpus {shape.vcpus}: Firecracker and ktailor's configs take 1 to 32 vCPUs.")
    if shape.mem_mib is not None and shape.mem_mib < 64:
        raise InputError(f"--mem-mib {shape.mem_mib}: give the guest at least 64 MiB.")
    if shape.vsock_cid is not None and shape.vsock_cid < 3:
        raise InputError(f"--vsock-cid {shape.vsock_cid}: guest CIDs start at 3 (0-2 are reserved).")
    settings = boot_settings(target)
    return replace(shape, vcpus=shape.vcpus or settings.smp, mem_mib=shape.mem_mib or settings.memory_mib)


def _cmdline(target: Target, shape: VmShape) -> str:
    return " ".join([*target.cmdline.split(), *shape.extra_cmdline.split()])


def firecracker_config(target: Target, kernel_dir: Path, shape: VmShape) -> dict:
    """Firecracker's --config-file: it adds root=/dev/vda and the virtio-mmio devices to boot_args itself."""
    shape = _checked(target, shape)
    config: dict = {
        "boot-source": {"kernel_image_path": str(kernel_dir / target.arch.direct_boot_image),
                        "boot_args": _cmdline(target, shape)},
        "drives": [{"drive_id": "rootfs", "path_on_host": shape.rootfs or ROOTFS_PLACEHOLDER,
                    "is_root_device": True, "is_read_only": False}],
        "machine-config": {"vcpu_count": shape.vcpus, "mem_size_mib": shape.mem_mib, "smt": False},
    }
    if shape.tap:
        config["network-interfaces"] = [{"iface_id": "eth0", "host_dev_name": shape.tap}]
    if shape.vsock_cid is not None:
        config["vsock"] = {"guest_cid": shape.vsock_cid,
                           "uds_path": shape.vsock_socket or f"/run/firecracker-{shape.vsock_cid}.vsock"}
    return config


def cloud_hypervisor_argv(target: Target, kernel_dir: Path, shape: VmShape) -> list[str]:
    """Cloud Hypervisor's command line: the direct-boot image, the virtio-blk root disk, a serial console."""
    shape = _checked(target, shape)
    cmdline = _cmdline(target, shape) + " root=/dev/vda rw"
    argv = ["cloud-hypervisor", "--kernel", str(kernel_dir / target.arch.direct_boot_image), "--cmdline", cmdline,
            "--disk", f"path={shape.rootfs or _SCRIPT_ROOTFS}", "--cpus", f"boot={shape.vcpus}",
            "--memory", f"size={shape.mem_mib}M", "--serial", "tty", "--console", "off"]
    if shape.tap:
        argv += ["--net", f"tap={shape.tap}"]
    if shape.vsock_cid is not None:
        argv += ["--vsock", f"cid={shape.vsock_cid},socket={shape.vsock_socket or f'/run/ch-{shape.vsock_cid}.vsock'}"]
    return argv


def qemu_argv(target: Target, kernel_dir: Path, shape: VmShape) -> list[str]:
    """The boot stage's QEMU command (boot.build_qemu_argv), for the user's root disk: the same machine,
    devices, image and command line, without the probes, keeping what the guest writes."""
    shape = _checked(target, shape)
    settings = replace(boot_settings(target), memory_mib=shape.mem_mib, smp=shape.vcpus)
    words = vmm_cmdline_words(target, settings, accel=shape.accel, tsc_khz=None)
    cmdline = " ".join([*words, *shape.extra_cmdline.split(), "root=/dev/vda", "rw"])
    kernel = kernel_dir / Path(settings.kernel).name
    rootfs = Path(shape.rootfs or _SCRIPT_ROOTFS)
    netdev = f"tap,id=n0,ifname={shape.tap},script=no,downscript=no" if shape.tap else RESTRICTED_NET
    return build_qemu_argv(target, settings, kernel, GuestFiles(Path(), rootfs, Path()), accel=shape.accel,
                           cmdline=cmdline, mode="rootfs", vsock_cid=shape.vsock_cid, netdev=netdev, snapshot=False)


def kata_lines(target: Target, kernel_dir: Path, shape: VmShape) -> str:
    shape = _checked(target, shape)
    sections = [f'[hypervisor.{name}]\nkernel = "{kernel_dir / target.arch.direct_boot_image}"\n'
                f'kernel_params = "{_cmdline(target, shape)}"\n' for name in target.type.kata]
    return (f"# The kernel lines of Kata Containers' configuration.toml for ktailor's {target.name} kernel:\n"
            "# merge them into the [hypervisor.<name>] section your runtime uses.\n\n" + "\n".join(sections))


def script(argv: list[str], what: str) -> str:
    """A shell script that runs `argv`, taking the root filesystem image from $ROOTFS when none was given."""
    words = []
    for word in argv:
        quoted = shlex.quote(word)
        variable = f'"${ROOTFS_VARIABLE}"'
        words.append(quoted.replace(_SCRIPT_ROOTFS, f"'{variable}'" if quoted.startswith("'") else variable))
    needs_rootfs = any(_SCRIPT_ROOTFS in word for word in argv)
    check = (f': "${{{ROOTFS_VARIABLE}:?set {ROOTFS_VARIABLE} to the root filesystem image (raw, the guest\'s '
             f'/dev/vda)}}"\n' if needs_rootfs else "")
    return f"#!/bin/sh\n# {what} (written by ktailor)\n{check}exec " + " \\\n  ".join(words) + "\n"


def render(target: Target, vmm: str, kernel_dir: Path, shape: VmShape, label: str) -> str:
    """One VMM's config as the text of its file."""
    if vmm == "firecracker":
        return json.dumps(firecracker_config(target, kernel_dir, shape), indent=2) + "\n"
    if vmm == "cloud-hypervisor":
        return script(cloud_hypervisor_argv(target, kernel_dir, shape), f"boots {label} with Cloud Hypervisor")
    if vmm == "qemu":
        return script(qemu_argv(target, kernel_dir, shape), f"boots {label} with QEMU, as ktailor's boot stage does")
    if vmm == "kata":
        return kata_lines(target, kernel_dir, shape)
    raise InputError(f"unknown VMM {vmm!r}; ktailor writes configs for {', '.join([*VMMS, 'kata'])}.")


def served_by(target: Target) -> list[str]:
    return [*target.type.vmms, *(["kata"] if target.type.kata else [])]


def install_configs(target: Target, kernel_dir: Path, version: str) -> dict[str, str]:
    """file name in the install dir -> content: the configs of every VMM the target serves."""
    label = f"{target.name} {version}"
    names = FILES | {"kata": KATA_FILE}
    return {names[vmm]: render(target, vmm, kernel_dir, VmShape(), label) for vmm in served_by(target)}


def vm_config(target: Target, vmm: str, kernel_dir: Path, shape: VmShape, version: str) -> str:
    """`invoke vm-config`: one VMM's config for an installed kernel, with the user's paths."""
    if vmm not in served_by(target):
        raise InputError(f"{target.name} is not built for {vmm}: its VMMs are {', '.join(served_by(target))} "
                         f"(targets.toml [type.{target.type.name}] vmms/kata)"
                         + ("; Cloud Hypervisor is PCI-only, so use a mini target." if vmm == "cloud-hypervisor" else "."))
    return render(target, vmm, kernel_dir, shape, f"{target.name} {version}")


def vm_config_command(project: Project, *, target: str, vmm: str, version: str | None, shape: VmShape) -> str:
    """`invoke vm-config`: the config of an installed kernel, with the command line its manifest records."""
    kernel = project.versions.get_or_default(version)
    row = project.catalog.target(target)
    files = project.artifacts(kernel, row)
    manifest = read_optional(files.manifest)
    if manifest is None:
        task = f"install:{row.name}" + ("" if kernel.is_default else f"@{kernel.version}")
        raise InputError(f"{row.name} {kernel.version} is not installed in {project.prefix}, so there is no kernel to "
                         f"configure; run `doit {task}` first (or point KTAILOR_PREFIX at the prefix it is in).")
    recorded = replace(row, cmdline=str(manifest.get("cmdline", row.cmdline)))
    return vm_config(recorded, vmm, files.install, shape, kernel.version)
