"""The boot stage: boot a built kernel in QEMU (standing in for the VMM) and prove its capabilities.

The guest boots like a production guest: root filesystem on virtio-blk (an ext4 image made without
root privileges by `mke2fs -d`), or an initramfs (a newc cpio written here). Its /init is
guest/init.c, compiled static for the target; it runs the probes guest/probes.toml assigns to the
target's type and prints one line per result, then reboots, which ends the VM (`reboot=t` plus
QEMU's `-no-reboot`). The machine, transport and command line per target are data in targets.toml
([target.X] cmdline, [target.X.boot]). KVM is used only where it works; elsewhere TCG, and it says so.

Writes boot.json (status pass/fail/skipped, accel, per-probe results, failed probes mapped to their
requirement and fragment:line, time-to-init, memory, image sizes) and console.log in the workdir.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

from ktailor.core.errors import EnvironmentProblem, InputError, VerificationFailed
from ktailor.core.processes import reaped
from ktailor.core.progress import bar, info, warn
from ktailor.core.records import read_optional
from ktailor.farm.toolchain import TOOL_PACKAGES
from ktailor.guest.guest_devices import VIRTIO_TRANSPORTS, Attached, Context, attach
from ktailor.guest.probes import (
    QEMU_PREFIX,
    GuestReport,
    ProbeResult,
    ProbeTable,
    explain_failure,
    find_hint,
    load_cmdline_undoes,
    load_probe_table,
    parse_console,
    undone_by,
)
from ktailor.kconfig.dotconfig import parse_dotconfig
from ktailor.kconfig.fragments import Option
from ktailor.project import tables as guest_tables
from ktailor.project.layout import Project
from ktailor.project.tables import CMDLINE_UNDOES, PROBES
from ktailor.project.targets import Target
from ktailor.security.evidence import SKIP_BOOT_ENV, fingerprint
from ktailor.stages.base import Context as StageContext
from ktailor.stages.base import Stage, removes

GUEST_DIR = Path(__file__).resolve().parents[3] / "guest"
MODES = ("rootfs", "initramfs")
SKIP_ENV = SKIP_BOOT_ENV  # farms without QEMU: recorded as "skipped", never as a pass
TRANSPORTS = {"mmio": "device", "pci": "pci"}  # virtio-<kind>-<suffix>: QEMU's device model per transport
VSOCK_DEVICE = Path("/dev/vhost-vsock")
# Every boot's devices, in this order (on MMIO machines pinned to the first of virtio_mmio_buses)
STANDARD_DEVICES = ("virtio-blk-{suffix},drive=root", "virtio-net-{suffix},netdev=n0", "virtio-rng-{suffix}",
                    "virtio-balloon-{suffix}", "virtio-serial-{suffix}")
ROOTFS_SIZE = "16M"
LAST_LINES = 40


class Log(Protocol):
    """What the stage reports through; logging.Logger fits, and so does StderrLog."""

    def info(self, message: str) -> None: ...
    def warning(self, message: str) -> None: ...


class StderrLog:
    """The house `I:` / `W:` lines on stderr."""

    def info(self, message: str) -> None:
        info(message)

    def warning(self, message: str) -> None:
        warn(message)


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


# --- guest files ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class GuestFiles:
    init: Path
    rootfs: Path
    initramfs: Path


def compiler_for(target: Target) -> str:
    return f"{target.arch.compiler_prefix()}gcc"


def build_init(target: Target, source: Path, out_dir: Path) -> Path:
    """Compile init.c static for the target; cached until init.c or the compiler command changes."""
    init = out_dir / "init"
    argv = [compiler_for(target), "-static", "-Os", "-s", "-Wall", "-o", str(init), str(source)]
    key = f"{' '.join(argv[:-3])}\n{source.read_text()}"
    stamp = out_dir / "init.key"
    if init.is_file() and stamp.is_file() and stamp.read_text() == key:
        return init
    out_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        libc = "libc6-dev" if not target.arch.compiler_prefix() else f"libc6-dev-{target.arch.kernel_arch}-cross"
        raise EnvironmentProblem(f"compiling the guest init for {target.name} failed ({' '.join(argv)}): "
                                 f"{done.stderr.strip()[-800:]}. A static C library is needed (Debian: apt-get install {libc}).")
    stamp.write_text(key)
    return init


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int  # with the file type bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def newc_archive(entries: list[CpioEntry]) -> bytes:
    """An uncompressed newc cpio (what the kernel unpacks as an initramfs), device nodes included."""
    out = bytearray()
    for ino, entry in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], start=1):
        name = entry.name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        header = [ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev, len(name), 0]
        out += b"070701" + "".join(f"{value:08x}" for value in header).encode() + name
        out += b"\0" * (-len(out) % 4)
        out += entry.data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def make_initramfs(init: Path, out: Path) -> Path:
    directory = stat.S_IFDIR | 0o755
    entries = [CpioEntry(d, directory) for d in ("dev", "proc", "sys", "tmp")]
    entries += [CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
                CpioEntry("init", stat.S_IFREG | 0o755, init.read_bytes())]
    out.write_bytes(newc_archive(entries))
    return out


def make_rootfs(init: Path, out: Path) -> Path:
    """An ext4 image holding /init and the mount points, made without root privileges."""
    tree = out.with_suffix(".d")
    shutil.rmtree(tree, ignore_errors=True)
    for directory in ("dev", "proc", "sys", "tmp"):
        (tree / directory).mkdir(parents=True)
    shutil.copy2(init, tree / "init")
    out.unlink(missing_ok=True)
    argv = ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "ktailor-root", "-m", "0", "-E", "root_owner=0:0",
            "-d", str(tree), str(out), ROOTFS_SIZE]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise EnvironmentProblem(f"making the guest root filesystem failed ({' '.join(argv)}): {done.stderr.strip()}. "
                                 "mke2fs needs -d support (e2fsprogs 1.43 or later).")
    return out


def prepare_guest(target: Target, workdir: Path, guest_dir: Path) -> GuestFiles:
    out = workdir / "guest"
    init = build_init(target, guest_dir / "init.c", out)
    return GuestFiles(init, make_rootfs(init, out / "rootfs.ext4"), make_initramfs(init, out / "initramfs.cpio"))


# --- the VM ----------------------------------------------------------------------------------------

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


@dataclass
class VmRun:
    lines: list[str] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)  # seconds after QEMU started, per line
    returncode: int | None = None
    timed_out: bool = False
    wall_s: float = 0.0


def run_vm(argv: list[str], timeout_s: float, console_log: Path, label: str, probe_count: int,
           on_await: dict[str, Any] | None = None) -> VmRun:
    """Run QEMU with the console on a pipe, every line timestamped and saved; kill it at the timeout.
    A `KTAILOR-AWAIT name=<key>` line from init runs on_await[key] (e.g. pressing Ctrl-Alt-Del over QMP)."""
    run = VmRun()
    on_await = on_await or {}
    lock = threading.Lock()
    started = time.monotonic()
    with console_log.open("w") as log:
        log.write("$ " + shlex.join(argv) + "\n")
        with reaped(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:

            def pump(stream: Any, prefix: str) -> None:
                for raw in iter(stream.readline, b""):
                    line = prefix + raw.decode("utf-8", "replace").rstrip("\r\n")
                    with lock:
                        run.stamps.append(time.monotonic() - started)
                        run.lines.append(line)
                        log.write(line + "\n")
                        log.flush()
                    if (key := line.partition("KTAILOR-AWAIT name=")[2].strip()) and key in on_await:
                        threading.Thread(target=act, args=(key,), daemon=True).start()

            def act(key: str) -> None:
                try:
                    on_await[key]()
                    note = f"[ktailor] host did {key} as init asked"
                except OSError as exc:
                    note = f"[ktailor] host could not do {key}: {exc}"
                with lock:
                    run.stamps.append(time.monotonic() - started)
                    run.lines.append(note)
                    log.write(note + "\n")

            readers = [threading.Thread(target=pump, args=(process.stdout, ""), daemon=True),
                       threading.Thread(target=pump, args=(process.stderr, QEMU_PREFIX), daemon=True)]
            for reader in readers:
                reader.start()
            with bar(total=probe_count, unit="probe", desc=f"boot {label}", postfix="kernel booting") as progress:
                while process.poll() is None:
                    if time.monotonic() - started > timeout_s:
                        run.timed_out = True
                        process.kill()
                        break
                    time.sleep(0.1)
                    with lock:
                        done = sum("KTAILOR-PROBE " in line for line in run.lines)
                    if done > progress.n:
                        progress.set_postfix_str("probing", refresh=False)
                        progress.update(done - progress.n)
                run.returncode = process.wait()
            run.wall_s = time.monotonic() - started
            for reader in readers:
                reader.join(timeout=5)
            if run.timed_out:
                log.write(f"[ktailor] killed QEMU after {timeout_s:g}s\n")
    return run


# --- the stage -------------------------------------------------------------------------------------

@dataclass
class BootResult:
    target: str
    status: str  # pass | fail | skipped
    reason: str
    report: dict[str, Any]  # what boot.json holds
    boot_json: Path


def _write(workdir: Path, report: dict[str, Any]) -> Path:
    path = workdir / Project.BOOT_REPORT
    temp = path.with_suffix(".json.tmp")
    temp.write_text(json.dumps(report, indent=2) + "\n")
    temp.replace(path)
    return path


def _skip(target: Target, workdir: Path, reason: str, log: Log, evidence: dict) -> BootResult:
    log.warning(f"{target.name} is NOT boot-verified: {reason}")
    report = {"target": target.name, "status": "skipped", "reason": reason, "evidence": evidence}
    return BootResult(target.name, "skipped", reason, report, _write(workdir, report))


def missing_tool(target: Target, mode: str) -> str | None:
    """Why the stage cannot run here (a tool is missing), or None."""
    needs = {target.arch.qemu: target.arch.qemu_package, compiler_for(target): TOOL_PACKAGES.get(compiler_for(target), "gcc")}
    if mode == "rootfs":
        needs["mke2fs"] = "e2fsprogs"
    for tool, package in needs.items():
        if not shutil.which(tool):
            return f"{tool} is not installed; install it to boot-test kernels (Debian/Ubuntu: apt-get install {package})"
    return None


def metrics_of(guest: GuestReport, run: VmRun, memory_mib: int | None = None) -> dict[str, Any]:
    """Boot time and memory. Memory three ways: `guest_used_kib` (MemTotal − MemAvailable at init: what the
    running kernel holds beyond its image), `boot_reserved_kib` (guest RAM − MemTotal: the image, memmap,
    firmware and early allocations the kernel took before counting), and `kernel_overhead_kib` (guest RAM −
    MemAvailable − init's RSS: everything the guest costs but its workload, the way Kuasar reports it)."""
    init_at = next((t for t, line in zip(run.stamps, run.lines, strict=True) if "KTAILOR-INIT " in line), None)
    ram_kib = memory_mib * 1024 if memory_mib else None
    memory = {}
    if ram_kib and guest.mem_total_kb is not None and guest.mem_total_kb > 0:
        memory["guest_ram_kib"] = ram_kib
        memory["boot_reserved_kib"] = ram_kib - guest.mem_total_kb
        if guest.mem_available_kb is not None and guest.init_rss_kb is not None:
            memory["kernel_overhead_kib"] = ram_kib - guest.mem_available_kb - guest.init_rss_kb
    return memory | {
        "time_to_init_ms": round(guest.boottime_ns / 1e6, 1) if guest.boottime_ns is not None else None,
        "uptime_at_init_s": guest.uptime_s,
        "printk_run_init_ms": round(guest.run_init_us / 1e3, 1) if guest.run_init_us is not None else None,
        "host_wall_to_init_ms": round(init_at * 1e3) if init_at is not None else None,
        "host_wall_to_exit_ms": round(run.wall_s * 1e3),
        "guest_used_kib": guest.mem_used_kb,
        "guest_mem_total_kib": guest.mem_total_kb,
        "kernel_memory_kib": guest.kernel_memory,
    }




def undone_hardening(target: Target, guest: GuestReport, guest_dir: Path) -> tuple[dict[str, str], str | None]:
    """The words of the command line the guest ran with that switch a hardening off, and the failure they make."""
    undoes_file = guest_dir / CMDLINE_UNDOES
    undone = undone_by(guest.cmdline or "", load_cmdline_undoes(undoes_file)) if undoes_file.is_file() else {}
    if not undone:
        return undone, None
    words = "; ".join(f"{word} switches off {what}" for word, what in undone.items())
    return undone, (f"{target.name}: the kernel command line it ran with undoes hardening it was built with: {words}. "
                    f"Remove the word from [target.{target.name}] cmdline in targets.toml (or from the VMM's boot "
                    f"arguments); {undoes_file} lists the words checked.")


def probe_entries(target: Target, plan: Plan, guest: GuestReport, requested: dict[str, Option],
                  kbuild: Path) -> tuple[list[dict[str, Any]], list]:
    """boot.json's per-probe entries, and each failed probe traced back to the fragment lines behind it."""
    final = parse_dotconfig(kbuild / ".config") if (kbuild / ".config").is_file() else {}
    entries, failures = [], []
    for probe in plan.table.for_target(target):
        if probe.name in plan.skipped:  # the host could not attach its device: recorded, never counted as passed
            entries.append({"name": probe.name, "status": "skip", "detail": plan.skipped[probe.name]})
            continue
        result = guest.probes.get(probe.name, ProbeResult(probe.name, "missing", "init printed no result"))
        entry: dict[str, Any] = {"name": probe.name, "status": result.status, "detail": result.detail}
        if result.status != "pass" and guest.done:
            failure = explain_failure(probe, result, requested, final, plan.table.transport.get(plan.settings.devices, ()))
            failures.append(failure)
            entry |= failure.as_json()
        entries.append(entry)
    return entries, failures


def boot_alternates(target: Target, kbuild: Path, workdir: Path, requested: dict[str, Option], log: Log, *,
                    mode: str, accel: str | None, guest_dir: Path) -> dict[str, dict[str, Any]]:
    """Boot each [target.X.boot.also.<name>] way into workdir/also-<name>/; raise on the first failure."""
    also = {}
    for name, alternate, why in alternate_boots(target):
        log.info(f"{target.name}: also booting it as {name} ({why}).")
        result = boot_target(alternate, kbuild, workdir / f"{ALSO_KEY}-{name}", requested, log, mode=mode,
                             accel=accel, guest_dir=guest_dir)
        also[name] = {"why": why, "status": result.status, "kernel": str(kbuild / alternate.boot["kernel"]),
                      "probes": sum(p["status"] == "pass" for p in result.report.get("probes", [])),
                      "boot_json": str(result.boot_json)}
    return also


def boot_target(target: Target, kbuild: Path, workdir: Path, requested: dict[str, Option], log: Log, *,
                mode: str = "rootfs", accel: str | None = None, guest_dir: Path = GUEST_DIR) -> BootResult:
    """Boot the kernel in kbuild, run the probes, write boot.json; raise VerificationFailed on failure."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / Project.BOOT_REPORT).unlink(missing_ok=True)  # a boot that raises must not leave the last "pass" standing
    # The files this verdict is about, hashed before QEMU starts: install checks them against the files it copies.
    evidence = fingerprint({Path(relative).name: kbuild / relative for relative in target.images}, kbuild / ".config")
    if os.environ.get(SKIP_ENV):
        return _skip(target, workdir, f"{SKIP_ENV} is set: boot verification was skipped on purpose", log, evidence)
    if reason := missing_tool(target, mode):
        return _skip(target, workdir, reason, log, evidence)
    # first: a failing alternate raises before any boot.json of this target says pass
    also = boot_alternates(target, kbuild, workdir, requested, log, mode=mode, accel=accel, guest_dir=guest_dir)
    console_log = workdir / "console.log"
    with contextlib.ExitStack() as stack:
        plan = plan_boot(target, kbuild, workdir, stack, mode=mode, accel=accel, guest_dir=guest_dir)
        if plan.accel == "tcg" and accel is None:
            log.info(f"{target.name}: {plan.accel_note}.")
        run = run_vm(plan.argv, plan.settings.timeout_s, console_log, target.name, len(plan.probe_names), plan.on_await)
    guest = parse_console(run.lines)

    sizes = {Path(relative).name: (kbuild / relative).stat().st_size
             for relative in target.images if (kbuild / relative).is_file()}
    sizes |= {f"guest {path.name}": path.stat().st_size for path in (plan.files.init, plan.files.rootfs, plan.files.initramfs)}
    report: dict[str, Any] = {
        "target": target.name, "status": "pass", "mode": mode, "accel": plan.accel, "accel_note": plan.accel_note,
        "kernel": str(kbuild / plan.settings.kernel), "qemu_command": plan.argv, "console_log": str(console_log),
        "metrics": metrics_of(guest, run, plan.settings.memory_mib), "sizes": sizes, "probes": [],
        "guest_warnings": guest.warnings,
        "guest": {"cmdline": guest.cmdline, "vulnerabilities": guest.vulnerabilities}, "evidence": evidence,
    }
    if also:
        report[ALSO_KEY] = also

    problem = None
    if not guest.done:
        if run.timed_out:
            why = f"timed out after {plan.settings.timeout_s:g}s"
        elif guest.boottime_ns is None:
            why = "the VM ended before /init ran" + (f" (QEMU exit status {run.returncode})" if run.returncode else "")
        else:
            why = "the VM ended before /init finished its probes"
        hint = find_hint(plan.table.hints, run.lines, timed_out=run.timed_out)
        report |= {"hint": hint, "last_lines": run.lines[-LAST_LINES:]}
        problem = f"{target.name} did not finish booting: {why}." + (f" Hint: {hint}." if hint else "")
    elif run.timed_out:
        problem = (f"{target.name} ran every probe but the VM did not exit within {plan.settings.timeout_s:g}s: "
                   "the guest's reboot did not end it (reboot=t with QEMU -no-reboot).")

    report["probes"], failures = probe_entries(target, plan, guest, requested, kbuild)
    if failures and not problem:
        problem = (f"{target.name}: {len(failures)} of {len(plan.probe_names)} boot probes failed: "
                   + "; ".join(f.sentence(target) for f in failures) + ".")
    report["guest"]["undone_hardening"], undone_problem = undone_hardening(target, guest, guest_dir)
    problem = problem or undone_problem

    if problem:
        message = f"{problem} Full console log: {console_log}; results: {workdir / Project.BOOT_REPORT}"
        report |= {"status": "fail", "message": message}
        _write(workdir, report)
        if "last_lines" in report:
            message += f"\nlast {LAST_LINES} console lines:\n" + "\n".join(report["last_lines"])
        raise VerificationFailed(message)
    metrics = report["metrics"]
    for name, reason in plan.skipped.items():
        log.warning(f"{target.name}: probe {name} skipped, not passed: {reason}.")
    skipped = f", {len(plan.skipped)} skipped" if plan.skipped else ""
    log.info(f"{target.name} booted under {plan.accel}: {len(plan.probe_names)} probes passed{skipped}; init at "
             f"{metrics['time_to_init_ms']} ms, VM done in {metrics['host_wall_to_exit_ms']} ms, "
             f"{guest.mem_used_kb} KiB used at init")
    return BootResult(target.name, "pass", "", report, _write(workdir, report))


# --- the stage ---------------------------------------------------------------------------------
def run(ctx: StageContext) -> None:
    from ktailor.stages.report import write_target_report

    files = ctx.files
    try:
        boot_target(ctx.the_target, files.kbuild, files.boot_dir, ctx.requested(), StderrLog(),
                    guest_dir=ctx.project.guest_dir)
    finally:
        if files.boot.is_file() and files.config.is_file():
            write_target_report(ctx, quiet=True)  # with the observed hardening


def boot_settled(task, values, boot_json: str) -> bool:  # doit uptodate callable
    """A skipped boot is never up to date unless the skip is still asked for: once QEMU is installed
    (or KTAILOR_SKIP_BOOT unset) the next run boots. A boot.json without file hashes reruns too."""
    report = read_optional(Path(boot_json)) or {}
    status = report.get("status")
    settled = status == "pass" or (status == "skipped" and bool(os.environ.get(SKIP_BOOT_ENV)))
    return settled and bool(report.get("evidence"))


STAGE = Stage(
    "boot", "boot each target in QEMU (its VMM's device model) and run the capability probes",
    doc=lambda ctx: f"boot {ctx.label} in QEMU and run the capability probes",
    run=run,
    # the probe table and cmdline-undoes are entries of the boot's state
    inputs=lambda ctx: [*ctx.files.images.values(), ctx.files.verify, ctx.project.guest_dir / "init.c"],
    outputs=lambda ctx: [ctx.files.boot],
    state=lambda ctx: {"boot": ctx.the_target.boot, "cmdline": ctx.the_target.cmdline,
                       "skip": bool(ctx.project.env.get(SKIP_BOOT_ENV)),
                       "guest": guest_tables.guest_state(ctx.project.guest_dir, ctx.the_target)},
    check=lambda ctx: (boot_settled, [str(ctx.files.boot)]),
    clean=lambda ctx: removes(ctx.files.boot_dir),
)
