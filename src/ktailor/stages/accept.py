"""The acceptance stage: the built kernel runs the software users run, on a stock Debian userspace.

After boot (our own probes) and before install: the kernel is booted the way its VMM boots it — the
machine, transport, image and command line of [target.X.boot] in targets.toml — with a Debian root
filesystem (rootfs.py) and systemd as PID 1, and the workloads of guest/acceptance.toml that apply to
the target's type run inside it: systemd reaching `running`, a LUKS2 volume opened with a key handed in
over virtio-serial, OCI containers under crun and runc with cgroup v2 limits, a rootless container,
overlayfs over squashfs, veth traffic, netfilter (mini), eBPF tooling (the ebpf variant). The host
formats the volume, makes the squashfs image, sends the key when the guest asks, and afterwards checks
that the volume holds no plaintext.

Writes accept.json (status pass/fail/skipped, each workload's result, output tail and time, systemd's
boot times, the root filesystem and its package versions, the hashes of the images and .config it
judged); the install gate requires it as it requires boot.json. A failed workload names its
requirement and the fragment:line of each kconfig symbol it needs.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ktailor.core.errors import VerificationFailed
from ktailor.core.records import read_optional, write_json_atomically
from ktailor.guest.guest_devices import Attached, Attachment, Context, vsock_backend
from ktailor.guest.guest_devices import Unavailable as DeviceUnavailable
from ktailor.guest.guest_files import GuestFiles
from ktailor.guest.probes import ProbeResult, explain_failure
from ktailor.guest.qemu import (
    STANDARD_DEVICES,
    TRANSPORTS,
    boot_settings,
    build_qemu_argv,
    choose_accel,
    host_tsc_khz,
    vmm_cmdline_words,
)
from ktailor.guest.rootfs import Unavailable, root_image, rootfs_setting
from ktailor.guest.vm import Log, run_vm
from ktailor.guest.workloads import ACCEPTANCE, AcceptanceSpec, Workload, load_acceptance, parse_results
from ktailor.kconfig.dotconfig import parse_dotconfig
from ktailor.kconfig.fragments import Option
from ktailor.project import tables
from ktailor.project.targets import MODULES_ARCHIVE, Target
from ktailor.security.evidence import SKIP_ACCEPT_ENV, accept_skip_asked, fingerprint
from ktailor.stages.base import Context as StageContext
from ktailor.stages.base import Stage, removes

LUKS_SIZE = 32 * 1024 * 1024
KEY_PORT = "ktailor.key"  # the virtio-serial port the key goes down where vsock cannot be had
KEY_VSOCK_PORT = 1025  # the host's vsock port the guest fetches the key from (ktailor-key in the guest)
ANALYZE_RE = re.compile(r"Startup finished in (.+?) \(kernel\) \+ (.+?) \(userspace\)")
OUTPUT_TAIL = 20


# --- host-side devices ------------------------------------------------------------------------------

@dataclass
class HostSide:
    """What the host prepares for one run: the LUKS volume and its key, the squashfs image, the key socket."""

    volume: Path
    key: bytes
    squashfs: Path
    key_socket: Path
    marker: str
    held: list[socket.socket]
    modules: Path | None = None  # a squashfs of the build's lib/modules (types with modules), the guest's /dev/vdd

    def send_key(self) -> None:
        """KTAILOR-AWAIT name=luks-key: connect to the virtio-serial port's socket and send the key."""
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(str(self.key_socket))
        connection.sendall(self.key)
        self.held.append(connection)  # closed when the VM is gone: an early close could drop unread bytes

    def close(self) -> None:
        for connection in self.held:
            connection.close()


def prepare_host_side(workdir: Path, sockets: Path) -> HostSide:
    for tool, package in (("cryptsetup", "cryptsetup-bin"), ("mksquashfs", "squashfs-tools")):
        if not (shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")):
            raise Unavailable(f"{tool} is not installed (Debian: apt-get install {package}; scripts/setup installs it)")
    devices = workdir / "devices"
    shutil.rmtree(devices, ignore_errors=True)
    devices.mkdir(parents=True)
    key = secrets.token_hex(32).encode()  # 64 bytes of text: what the guest reads from the port
    key_file = devices / "luks.key"
    key_file.write_bytes(key)
    volume = devices / "luks2.img"
    with volume.open("wb") as handle:
        handle.truncate(LUKS_SIZE)
    cryptsetup = shutil.which("cryptsetup") or shutil.which("cryptsetup", path="/usr/sbin:/sbin")
    _run([str(cryptsetup), "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2",
          "--pbkdf-force-iterations", "1000", "--key-file", str(key_file), str(volume)], "cryptsetup luksFormat")
    key_file.unlink()  # the key exists only in this process from here on
    lower = devices / "layer" / "lower"
    lower.mkdir(parents=True)
    (lower / "hello.txt").write_text("hello from the squashfs layer\n")
    squashfs = devices / "layer.squashfs"
    mksquashfs = shutil.which("mksquashfs") or shutil.which("mksquashfs", path="/usr/sbin:/sbin")
    _run([str(mksquashfs), str(devices / "layer"), str(squashfs), "-comp", "xz", "-noappend", "-quiet"], "mksquashfs")
    return HostSide(volume, key, squashfs, sockets / "key.sock", secrets.token_hex(12), [])


def modules_image(archive: Path, devices: Path) -> Path:
    """The build's modules.tar as a squashfs the guest mounts on /lib/modules (the image stays the cached one)."""
    tree = devices / "modules-tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    image = devices / "modules.squashfs"
    mksquashfs = shutil.which("mksquashfs") or shutil.which("mksquashfs", path="/usr/sbin:/sbin")
    _run([str(mksquashfs), str(tree / "lib" / "modules"), str(image), "-comp", "xz", "-noappend", "-quiet",
          "-all-root"], "mksquashfs of the modules")
    shutil.rmtree(tree)
    return image


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Unavailable(f"{what} failed on the host ({(done.stderr or done.stdout).strip()[-300:]})")


def plaintext_left(host: HostSide) -> bool:
    """The marker the guest wrote into the encrypted filesystem, found in the volume file as plaintext."""
    return host.marker.encode() in host.volume.read_bytes()


# --- the VM -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyChannel:
    """How the LUKS key reaches the guest: the QEMU arguments and command-line word (ktailor_key=) that
    tell guest/accept/ktailor-key which way to read it, and what accept.json records of it."""

    attachment: Attachment
    transport: str


def key_channel(target: Target, host: HostSide, workdir: Path, sockets: Path, stack: contextlib.ExitStack,
                memory_mib: int) -> KeyChannel:
    """vsock, as microVM agents hand secrets in (Firecracker's vsock, Kata's agent), through vhost-device-vsock
    where it is installed; otherwise the virtio-serial port ktailor.key, the key sent when the guest asks."""
    settings = boot_settings(target)
    context = Context(target.arch.qemu, TRANSPORTS[settings.devices], settings.machine, memory_mib, workdir, sockets)
    try:
        attachment, vsock = vsock_backend(context, stack)
    except DeviceUnavailable as exc:
        serial = Attachment(args=["-chardev", f"socket,id=keyport,path={host.key_socket},server=on,wait=off",
                                  "-device", f"virtserialport,chardev=keyport,name={KEY_PORT}"],
                            words=["ktailor_key=virtio-serial"], on_await={"luks-key": host.send_key})
        return KeyChannel(serial, f"virtio-serial port {KEY_PORT} (no vsock here: {exc})")
    serve_key(vsock.port_path(KEY_VSOCK_PORT), host.key, stack)
    attachment.words.append(f"ktailor_key=vsock:{KEY_VSOCK_PORT}")
    return KeyChannel(attachment, f"vsock: guest CID {vsock.cid} to host port {KEY_VSOCK_PORT} through {vsock.backend}")


def serve_key(path: Path, key: bytes, stack: contextlib.ExitStack) -> None:
    """Listen on `path` for the length of the stack; every connection gets the key, then EOF."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with connection:
                connection.settimeout(10)
                with contextlib.suppress(OSError):
                    connection.sendall(key)

    thread = threading.Thread(target=serve, name="ktailor-key", daemon=True)
    thread.start()
    stack.callback(listener.close)
    stack.callback(thread.join, 5)
    stack.callback(stop.set)


def accept_argv(target: Target, kbuild: Path, image: Path, host: HostSide, names: list[str], *, accel: str,
                memory_mib: int, key: KeyChannel) -> list[str]:
    """QEMU's argv: the boot stage's machine, devices and command line, with the Debian image as root, the
    LUKS volume (vdb), the squashfs (vdc) and the modules (vdd, types with modules) as further virtio-blk
    disks, and the key channel's device."""
    settings = boot_settings(target)
    words = vmm_cmdline_words(target, settings, accel=accel, tsc_khz=host_tsc_khz())
    words += ["root=/dev/vda", "rootfstype=ext4", "rw", f"ktailor_workloads={','.join(names)}",
              f"ktailor_marker={host.marker}", *key.attachment.words]
    suffix = TRANSPORTS[settings.devices]
    spare = list(settings.virtio_mmio_buses[len(STANDARD_DEVICES):]) if settings.devices == "mmio" else []
    args = []
    disks = [("luks", host.volume), ("layer", host.squashfs), *([("modules", host.modules)] if host.modules else [])]
    for index, (drive, path) in enumerate(disks):
        bus = f",bus=virtio-mmio-bus.{spare[index]}" if index < len(spare) else ""
        args += ["-drive", f"id={drive},file={path},format=raw,if=none" + (",readonly=on" if drive != "luks" else ""),
                 "-device", f"virtio-blk-{suffix},drive={drive}{bus}"]
    settings_for_vm = replace(settings, memory_mib=max(memory_mib, settings.memory_mib))
    files = GuestFiles(init=image, rootfs=image, initramfs=image)
    channel = replace(key.attachment, words=[])  # its words are on the command line already
    argv = build_qemu_argv(target, settings_for_vm, kbuild / settings.kernel, files, accel=accel, cmdline=" ".join(words),
                           mode="rootfs", vsock_cid=None, attached=Attached([Attachment(args=args), channel]))
    return argv


@dataclass(frozen=True)
class AcceptResult:
    status: str  # pass | fail | skipped
    report: dict[str, Any]


def _skip(out: Path, target: Target, reason: str, evidence: dict, log: Log) -> AcceptResult:
    log.warning(f"{target.name} is NOT accepted with real userspace: {reason}")
    report = {"target": target.name, "status": "skipped", "reason": reason, "evidence": evidence}
    write_json_atomically(out, report)
    return AcceptResult("skipped", report)


def accept_target(target: Target, kbuild: Path, workdir: Path, out: Path, boot_json: Path, spec: AcceptanceSpec,
                  requested: dict[str, Option], log: Log, *, cache_dir: Path, guest_dir: Path,
                  env: dict[str, str]) -> AcceptResult:
    """Boot the kernel in kbuild with the Debian userspace, run the target's workloads, write accept.json;
    raise VerificationFailed when one fails."""
    workdir.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # a run that raises must not leave the last "pass" standing
    evidence = fingerprint({Path(relative).name: kbuild / relative for relative in target.images}, kbuild / ".config")
    booted = read_optional(boot_json) or {}
    if env.get(SKIP_ACCEPT_ENV):
        return _skip(out, target, f"{SKIP_ACCEPT_ENV} is set: acceptance was skipped on purpose", evidence, log)
    if booted.get("status") == "skipped":
        return _skip(out, target, f"the kernel was not booted ({booted.get('reason')})", evidence, log)
    if not shutil.which(target.arch.qemu):
        return _skip(out, target, f"{target.arch.qemu} is not installed (apt-get install {target.arch.qemu_package})",
                     evidence, log)
    workloads = spec.for_target(target)
    scripts = {w.name: (w.script, w.timeout_s) for w in spec.workloads}
    try:
        rootfs = root_image(spec.rootfs, target.arch.name, cache_dir, guest_dir, scripts, env)
    except Unavailable as exc:
        return _skip(out, target, str(exc), evidence, log)
    accel, note = choose_accel(target)
    if accel == "tcg":
        log.info(f"{target.name}: {note}.")
    console_log = workdir / "console.log"
    with contextlib.ExitStack() as stack:
        sockets = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ktailor-accept-")))
        try:
            host = prepare_host_side(workdir, sockets)
            if target.type.modules:
                host.modules = modules_image(kbuild / MODULES_ARCHIVE, host.volume.parent)
        except Unavailable as exc:
            return _skip(out, target, str(exc), evidence, log)
        stack.callback(host.close)
        memory_mib = max(spec.memory_mib, boot_settings(target).memory_mib)
        key = key_channel(target, host, workdir, sockets, stack, memory_mib)
        argv = accept_argv(target, kbuild, rootfs.image, host, [w.name for w in workloads], accel=accel,
                           memory_mib=memory_mib, key=key)
        started = time.monotonic()
        run = run_vm(argv, spec.timeout_s, console_log, f"{target.name} accept", len(workloads),
                     key.attachment.on_await)
        wall_s = time.monotonic() - started
        leaked = plaintext_left(host)
    entries, problems = judge_run(target, workloads, run, kbuild, requested, spec.timeout_s)
    if leaked:
        problems.append("the LUKS2 volume holds the guest's plaintext marker after the run: the data was not encrypted")
    analyze = next((m for line in run.lines if (m := ANALYZE_RE.search(line))), None)
    report: dict[str, Any] = {
        "target": target.name, "status": "fail" if problems else "pass", "accel": accel,
        "qemu_command": argv, "console_log": str(console_log), "workloads": entries,
        "systemd_analyze": {"kernel": analyze[1], "userspace": analyze[2]} if analyze else None,
        "host_wall_s": round(wall_s, 1), "luks_plaintext_found": leaked,
        "key_transport": key.transport,
        "rootfs": {"image": str(rootfs.image), "key": rootfs.key, "made_by": rootfs.source, "packages": rootfs.packages},
        "evidence": evidence,
    }
    if problems:
        report["message"] = "; ".join(problems) + f". Console log: {console_log}"
        write_json_atomically(out, report)
        raise VerificationFailed(f"{target.name} failed acceptance with real userspace: " + report["message"])
    write_json_atomically(out, report)
    timing = f"; systemd: {analyze[1]} kernel + {analyze[2]} userspace" if analyze else ""
    log.info(f"{target.name} accepted under {accel}: {len(entries)} workloads passed in {wall_s:.0f}s{timing}")
    return AcceptResult("pass", report)


def judge_run(target: Target, workloads: list[Workload], run, kbuild: Path, requested: dict[str, Option],
              timeout_s: float) -> tuple[list[dict[str, Any]], list[str]]:
    """accept.json's per-workload entries, and the problems: each failed workload traced to fragment lines."""
    results, outputs, finished = parse_results(run.lines)
    final = parse_dotconfig(kbuild / ".config") if (kbuild / ".config").is_file() else {}
    entries, problems = [], []
    for workload in workloads:
        entry = _judge(workload, results.get(workload.name), outputs.get(workload.name, []))
        if entry["status"] != "pass":
            failure = explain_failure(workload.as_probe(), ProbeResult(workload.name, entry["status"], entry["detail"]),
                                      requested, final)
            entry |= failure.as_json()
            problems.append(failure.sentence(target, kind="workload") + _tail(entry["output"]))
        entries.append(entry)
    if not finished:
        why = f"timed out after {timeout_s:g}s" if run.timed_out else f"the VM ended (QEMU exit {run.returncode})"
        problems.insert(0, f"{target.name}: the acceptance run did not finish: {why}; last console lines: "
                           + " | ".join(run.lines[-8:]))
    return entries, problems


def _judge(workload: Workload, result: dict[str, Any] | None, output: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": workload.name, "requirement": workload.requirement, "proves": workload.proves,
                             "output": output[-OUTPUT_TAIL:]}
    if result is None:
        return entry | {"status": "missing", "detail": "the guest printed no result for it"}
    entry["ms"] = result["ms"]
    if result["rc"] != 0:
        why = "timed out" if result["rc"] in (124, 137) else f"exit {result['rc']}"
        return entry | {"status": "fail", "detail": why}
    if workload.expect and not any(workload.expect in line for line in output):
        return entry | {"status": "fail", "detail": f"its output lacks {workload.expect!r}"}
    return entry | {"status": "pass", "detail": ""}


def _tail(output: list[str]) -> str:
    return f" (output: {' | '.join(output[-4:])})" if output else ""


def accept_settled(report: dict | None, env: dict[str, str]) -> bool:
    """A skipped acceptance is up to date only while the skip is still asked for (or boot is still skipped)."""
    if not report or not report.get("evidence"):
        return False
    status = report.get("status")
    return status == "pass" or (status == "skipped" and accept_skip_asked(env))


# --- the stage ---------------------------------------------------------------------------------
def run(ctx: StageContext) -> None:
    from ktailor.guest.vm import StderrLog

    project, files = ctx.project, ctx.files
    accept_target(ctx.the_target, files.kbuild, files.accept_dir, files.accept, files.boot,
                  load_acceptance(project.guest_dir / ACCEPTANCE), ctx.requested(), StderrLog(),
                  cache_dir=project.cache_dir, guest_dir=project.guest_dir, env=project.env)


def accept_is_settled(task, values, accept_json: str) -> bool:  # doit uptodate callable
    """A skipped acceptance reruns once the skip is no longer asked for; one without file hashes reruns."""
    return accept_settled(read_optional(Path(accept_json)), dict(os.environ))


STAGE = Stage(
    "accept", "boot each target with a stock Debian userspace and run the workloads users run (guest/acceptance.toml)",
    doc=lambda ctx: f"accept {ctx.label}: systemd, LUKS2, crun/runc, … on a Debian root filesystem",
    run=run,
    inputs=lambda ctx: [*ctx.files.images.values(), ctx.files.boot, *sorted((ctx.project.guest_dir / "accept").glob("*"))],
    outputs=lambda ctx: [ctx.files.accept],
    state=lambda ctx: {"boot": ctx.the_target.boot, "cmdline": ctx.the_target.cmdline,
                       "skip": accept_skip_asked(ctx.project.env),
                       "acceptance": tables.acceptance_state(ctx.project.guest_dir, ctx.the_target),
                       "rootfs": rootfs_setting(ctx.project.env, ctx.the_target.arch.name)},
    check=lambda ctx: (accept_is_settled, [str(ctx.files.accept)]),
    clean=lambda ctx: removes(ctx.files.accept_dir),
)
