"""The QEMU command of a boot: a target's boot table, the accelerator, the kernel command line, the argv.

The machine, transport and command line per target are data in targets.toml ([target.X] cmdline,
[target.X.boot], and [target.X.boot.also.<name>] for a second way the same kernel boots). KVM is used
only where it works; elsewhere TCG, and it says so. The boot and acceptance stages and the qemu config
every install carries (vmconfig.py) all start from here.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ktailor.core.errors import InputError, VerificationFailed
from ktailor.guest.guest_devices import VIRTIO_TRANSPORTS, Attached, Context, attach
from ktailor.guest.guest_files import GUEST_DIR, GuestFiles, prepare_guest
from ktailor.guest.probes import ProbeTable, load_probe_table
from ktailor.project.tables import PROBES
from ktailor.project.targets import Target

MODES = ("rootfs", "initramfs")
TRANSPORTS = {"mmio": "device", "pci": "pci"}  # virtio-<kind>-<suffix>: QEMU's device model per transport
VSOCK_DEVICE = Path("/dev/vhost-vsock")
# Every boot's devices, in this order (on MMIO machines pinned to the first of virtio_mmio_buses)
STANDARD_DEVICES = ("virtio-blk-{suffix},drive=root", "virtio-net-{suffix},netdev=n0", "virtio-rng-{suffix}",
                    "virtio-balloon-{suffix}", "virtio-serial-{suffix}")


@dataclass(frozen=True)
class BootSettings:
    """A target's [target.X.boot] table, checked."""

    machine: str
    devices: str  # "mmio" | "pci"
    kernel: str  # image path inside the kbuild dir
    memory_mib: int = 256
    smp: int = 1
    timeout_s: float = 60
    cmdline_extra: str = ""  # appended to the target's cmdline for the boot test
    tcg_cmdline_extra: str = ""  # only under TCG; {host_tsc_khz} is filled in
    tcg_cpu: str = "max"
    kvm_cpu: str = "host"
    virtio_mmio_buses: tuple[int, ...] = ()  # pin virtio-mmio devices to these transports, in order
    qemu_args: tuple[str, ...] = ()


ALSO_KEY = "also"  # [target.X.boot.also.<name>]: the same kernel booted a second way (another image, machine…)


def alternate_boots(target: Target) -> list[tuple[str, Target, str]]:
    """(name, target as booted that way, why) for each [target.X.boot.also.<name>] table.

    An alternate boot is the main boot table with some keys replaced — e.g. `kernel = "vmlinux"` for the
    PVH entry Cloud Hypervisor uses, where the main boot loads the bzImage through firmware — and a `why`.
    """
    base = {key: value for key, value in target.boot.items() if key != ALSO_KEY}
    alternates = []
    for name, table in (target.boot.get(ALSO_KEY) or {}).items():
        where = f"targets.toml [target.{target.name}.boot.{ALSO_KEY}.{name}]"
        if not isinstance(table, dict) or not str(table.get("why", "")).strip():
            raise InputError(f"{where} needs a `why = \"…\"` saying which VMM boots the kernel this way, and the "
                             "keys that differ from the main boot table (e.g. kernel = \"vmlinux\").")
        changes = {key: value for key, value in table.items() if key != "why"}
        alternate = replace(target, boot=base | changes)
        boot_settings(alternate)  # its keys are checked like the main table's
        alternates.append((name, alternate, table["why"]))
    return alternates


def boot_settings(target: Target) -> BootSettings:
    where = f"targets.toml [target.{target.name}.boot]"
    known = {f.name for f in fields(BootSettings)}
    values = {key: value for key, value in target.boot.items() if key != ALSO_KEY}  # the alternates: alternate_boots
    if unknown := sorted(set(values) - known):
        raise InputError(f"{where} has unknown key(s) {', '.join(unknown)}; the known keys are {', '.join(sorted(known))}.")
    if missing := [key for key in ("machine", "devices", "kernel") if key not in target.boot]:
        raise InputError(f"{where} has no {', '.join(missing)}; add `{missing[0]} = …` (see the other targets).")
    if target.boot["devices"] not in TRANSPORTS:
        raise InputError(f"{where} devices = {target.boot['devices']!r}; use one of {', '.join(TRANSPORTS)}.")
    for key in ("virtio_mmio_buses", "qemu_args"):
        values[key] = tuple(values.get(key, ()))
    return BootSettings(**values)


def choose_accel(target: Target, wanted: str | None = None, *, host: str | None = None,
                 cpuinfo: Path = Path("/proc/cpuinfo"), kvm_device: Path = Path("/dev/kvm")) -> tuple[str, str]:
    """("kvm" | "tcg", why). KVM only for a same-arch guest on a host whose KVM can really run it."""
    if wanted in ("kvm", "tcg"):
        return wanted, f"{wanted} as requested"
    host = host or platform.machine()
    if host != target.arch.name:
        return "tcg", f"the host is {host}, so the {target.arch.name} guest runs under TCG emulation"
    if not os.access(kvm_device, os.R_OK | os.W_OK):
        return "tcg", f"{kvm_device} is missing or not accessible, so the guest runs under TCG emulation"
    if host == "x86_64":
        text = cpuinfo.read_text() if cpuinfo.is_file() else ""
        flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())
        if not flags & {"vmx", "svm"}:
            return "tcg", (f"{kvm_device} exists but the CPU has no vmx/svm flag (software nested virtualization, whose "
                           "guests crash), so the guest runs under TCG emulation: timings are slower than on KVM")
    return "kvm", "KVM is available"


def host_tsc_khz(cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """Under TCG the guest TSC ticks at the host's rate; 'cpu MHz' is the best cheap estimate."""
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    for line in text.splitlines():
        if line.startswith("cpu MHz"):
            return round(float(line.split(":", 1)[1]) * 1000)
    return None


def vmm_cmdline_words(target: Target, settings: BootSettings, *, accel: str, tsc_khz: int | None) -> list[str]:
    """The target's command line as its VMM passes it, plus the boot table's extras (and the TCG ones under TCG):
    what every boot of the target starts from, the boot stage's and the acceptance stage's alike."""
    words = [*target.cmdline.split(), *settings.cmdline_extra.split()]
    extra = settings.tcg_cmdline_extra if accel == "tcg" else ""
    if extra and ("{host_tsc_khz}" not in extra or tsc_khz):  # without a host value, leave the word out
        words += extra.format(host_tsc_khz=tsc_khz).split()
    return words


def kernel_cmdline(target: Target, settings: BootSettings, *, accel: str, mode: str, probe_names: list[str],
                   vsock_cid: int | None, interactive: bool = False, tsc_khz: int | None = None,
                   device_words: list[str] = ()) -> str:
    words = vmm_cmdline_words(target, settings, accel=accel, tsc_khz=tsc_khz)
    if interactive:
        words = [w for w in words if w != "quiet"]
    words += ["root=/dev/vda", "rootfstype=ext4", "ro", "init=/init"] if mode == "rootfs" else ["rdinit=/init"]
    # Words the kernel does not know reach /init as environment variables.
    words.append("ktailor_probes=" + ",".join(probe_names))
    if vsock_cid is not None:
        words.append(f"ktailor_vsock_cid={vsock_cid}")
    return " ".join([*words, *device_words])


RESTRICTED_NET = "user,id=n0,restrict=on"  # the guest gets a NIC but no way out


def build_qemu_argv(target: Target, settings: BootSettings, kernel: Path, files: GuestFiles, *, accel: str,
                    cmdline: str, mode: str, vsock_cid: int | None, interactive: bool = False,
                    attached: Attached | None = None, netdev: str = RESTRICTED_NET, snapshot: bool = True) -> list[str]:
    """The QEMU argv of a boot: the boot and acceptance stages' and, with a user's root disk and network
    (`snapshot=False`, a tap `netdev`), the qemu config every install carries (vmconfig.py)."""
    suffix = TRANSPORTS[settings.devices]
    attached = attached or Attached()
    argv = [target.arch.qemu, "-M", settings.machine, "-accel", accel,
            "-cpu", settings.kvm_cpu if accel == "kvm" else settings.tcg_cpu,
            "-m", f"{settings.memory_mib}M{attached.memory_options}", "-smp", str(max(settings.smp, attached.smp)),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]
    if attached.shared_memory:  # vhost-user devices (virtiofsd) map guest RAM: it must be a shareable memfd
        argv += ["-object", f"memory-backend-memfd,id=ktailor-ram,size={settings.memory_mib}M,share=on",
                 "-machine", "memory-backend=ktailor-ram"]
    argv += ["-serial", "mon:stdio"] if interactive else ["-serial", "stdio", "-monitor", "none"]
    argv += ["-kernel", str(kernel), "-append", cmdline]
    if mode == "initramfs":
        argv += ["-initrd", str(files.initramfs)]
    # snapshot: the guest may write (the fscaps probe remounts / read-write), but into a throwaway overlay.
    argv += ["-drive", f"id=root,file={files.rootfs},format=raw,if=none" + (",snapshot=on" if snapshot else ""),
             "-netdev", netdev]
    devices = [device.format(suffix=suffix) for device in STANDARD_DEVICES]
    if vsock_cid is not None:
        devices.append(f"vhost-vsock-{suffix},guest-cid={vsock_cid}")
    for index, device in enumerate(devices):
        pinned = settings.devices == "mmio" and index < len(settings.virtio_mmio_buses)
        argv += ["-device", device + (f",bus=virtio-mmio-bus.{settings.virtio_mmio_buses[index]}" if pinned else "")]
    return argv + attached.args + list(settings.qemu_args)


@dataclass
class Plan:
    argv: list[str]
    accel: str
    accel_note: str
    settings: BootSettings
    files: GuestFiles
    table: ProbeTable
    probe_names: list[str]  # the probes the guest runs
    skipped: dict[str, str]  # probe → why the host could not attach the device it needs
    on_await: dict[str, Any]  # KTAILOR-AWAIT name → host action


def plan_boot(target: Target, kbuild: Path, workdir: Path, stack: contextlib.ExitStack, *, mode: str = "rootfs",
              accel: str | None = None, interactive: bool = False, guest_dir: Path = GUEST_DIR) -> Plan:
    """Everything to start the VM; the devices the probes need stay attached until `stack` closes."""
    if mode not in MODES:
        raise InputError(f"boot mode {mode!r} is not one of {', '.join(MODES)}.")
    settings = boot_settings(target)
    kernel = kbuild / settings.kernel
    if not kernel.is_file():
        raise VerificationFailed(f"{target.name}: {kernel} does not exist, so there is nothing to boot; build the target "
                                 f"first (targets.toml [target.{target.name}.boot] kernel = {settings.kernel!r}).")
    table = load_probe_table(guest_dir / PROBES)
    probes = table.for_target(target)
    chosen, note = choose_accel(target, accel)
    # A vsock device only where the host has vhost-vsock; a CID per process so parallel boots do not collide.
    vsock_cid = 1000 + os.getpid() if os.access(VSOCK_DEVICE, os.R_OK | os.W_OK) else None
    files = prepare_guest(target, workdir, guest_dir)
    sockets = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ktailor-vm-")))
    context = Context(target.arch.qemu, TRANSPORTS[settings.devices], settings.machine, settings.memory_mib,
                      files.init.parent, sockets)
    wanted = [p.device for p in probes if p.device]
    # vhost-device-vsock where it is installed (else the probe checks the socket family only); on MMIO machines
    # only while a pinnable transport is free beside the standard devices' (a mini probe set fills microvm's).
    taken = len(STANDARD_DEVICES) + sum(VIRTIO_TRANSPORTS.get(device, 0) for device in wanted)
    if vsock_cid is None and any(p.name == "vsock" for p in probes) and (
            settings.devices == "pci" or taken < len(settings.virtio_mmio_buses)):
        wanted.append("vsock")
    attached = stack.enter_context(attach(wanted, context))
    skipped = {p.name: attached.unavailable[p.device] for p in probes if p.device in attached.unavailable}
    names = [p.name for p in probes if p.name not in skipped]
    cmdline = kernel_cmdline(target, settings, accel=chosen, mode=mode, probe_names=names, vsock_cid=vsock_cid,
                             interactive=interactive, tsc_khz=host_tsc_khz(), device_words=attached.words)
    argv = build_qemu_argv(target, settings, kernel, files, accel=chosen, cmdline=cmdline, mode=mode,
                           vsock_cid=vsock_cid, interactive=interactive, attached=attached)
    return Plan(argv, chosen, note, settings, files, table, names, skipped, attached.on_await)


@contextlib.contextmanager
def qemu_command(target: Target, kbuild: Path, workdir: Path, *, interactive: bool = False, mode: str = "rootfs",
                 accel: str | None = None, guest_dir: Path = GUEST_DIR) -> Iterator[list[str]]:
    """The QEMU argv that boots this target (guest files prepared in workdir, its devices attached for the
    with-block); interactive keeps the monitor on the console (Ctrl-A X quits) and drops `quiet`."""
    with contextlib.ExitStack() as stack:
        yield plan_boot(target, kbuild, workdir, stack, mode=mode, accel=accel, interactive=interactive,
                        guest_dir=guest_dir).argv
