"""Host-side devices that some guest probes need, attached to the boot stage's QEMU.

A probe in guest/probes.toml names its `device`; each name here is a function that prepares what the
device needs (an XFS image, a shared directory with a token, a virtiofsd daemon, a QMP socket) and
returns the QEMU arguments and the command-line words init reads. A host that cannot provide a device
raises Unavailable with the reason (a missing tool or QEMU device model); the boot stage then records
the probes that need it as "skip" with that reason and never counts them as passed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ktailor.core import processes

XFS_IMAGE_SIZE = 300 * 1024 * 1024  # mkfs.xfs's minimum since xfsprogs 5.19
PMEM_SIZE_MIB = 32
VIRTIOFSD_PATHS = ("virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")
CAD_KEYS = ("ctrl", "alt", "delete")
VSOCK_BACKEND = "vhost-device-vsock"  # rust-vmm's vhost-user vsock backend (Debian 13+ package of that name)
GUEST_CID = 3  # the guest's vsock CID under vhost-device-vsock (its own namespace: no clash between VMs)


class Unavailable(Exception):
    """This host cannot attach the device; the message says why and what would provide it."""


@dataclass(frozen=True)
class Context:
    qemu: str  # the QEMU binary (its device models decide what can be attached)
    suffix: str  # virtio-<kind>-<suffix>: "pci" or "device" (MMIO)
    machine: str
    memory_mib: int
    files: Path  # where device files go (the boot's guest dir)
    sockets: Path  # a short directory for unix sockets (sun_path holds 108 bytes)


@dataclass
class Attachment:
    args: list[str] = field(default_factory=list)  # QEMU arguments
    words: list[str] = field(default_factory=list)  # kernel command-line words (init reads them as environment)
    memory_options: str = ""  # appended to QEMU's -m size
    shared_memory: bool = False  # guest RAM must be a shareable memfd (vhost-user devices)
    smp: int = 0  # at least this many vCPUs
    on_await: dict[str, Callable[[], None]] = field(default_factory=dict)  # KTAILOR-AWAIT name=<key> → host action


@functools.cache
def qemu_devices(qemu: str) -> frozenset[str]:
    """The device model names this QEMU binary offers (`-device help`)."""
    try:
        done = subprocess.run([qemu, "-device", "help"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(line.split('"')[1] for line in done.stdout.splitlines() if line.startswith('name "'))


def _need_device(context: Context, model: str, why: str = "") -> None:
    if model not in qemu_devices(context.qemu):
        raise Unavailable(f"{context.qemu} has no {model} device model{why}")


def _tool(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        raise Unavailable(f"{name} is not installed (Debian: apt-get install {package})")
    return found


def _token_share(directory: Path) -> str:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    token = secrets.token_hex(8)
    (directory / "token").write_text(token)
    return token


def scsi_disk(context: Context, stack: contextlib.ExitStack) -> Attachment:
    """A virtio-scsi controller with one read-only disk holding a fresh XFS filesystem."""
    _need_device(context, f"virtio-scsi-{context.suffix}")
    mkfs = _tool("mkfs.xfs", "xfsprogs")
    image = context.files / "xfs.img"
    image.unlink(missing_ok=True)
    with image.open("wb") as handle:
        handle.truncate(XFS_IMAGE_SIZE)  # sparse
    done = subprocess.run([mkfs, "-q", "-f", "-L", "ktailor-xfs", str(image)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Unavailable(f"mkfs.xfs could not make the XFS image: {done.stderr.strip()[-300:]}")
    return Attachment(args=["-device", f"virtio-scsi-{context.suffix},id=ktailor-scsi",
                            "-drive", f"id=ktailor-xfs,file={image},format=raw,if=none,readonly=on",
                            "-device", "scsi-hd,drive=ktailor-xfs,bus=ktailor-scsi.0"])


def share_9p(context: Context, stack: contextlib.ExitStack) -> Attachment:
    """A read-only 9p share (QEMU's own file server) holding a token file."""
    _need_device(context, f"virtio-9p-{context.suffix}", " (QEMU built without virtfs)")
    token = _token_share(context.files / "share-9p")
    return Attachment(args=["-fsdev", f"local,id=ktailor-9p,path={context.files / 'share-9p'},security_model=none,"
                                      "readonly=on",
                            "-device", f"virtio-9p-{context.suffix},fsdev=ktailor-9p,mount_tag=ktailor9p"],
                      words=[f"ktailor_9p_token={token}"])


def _virtiofsd() -> str:
    for candidate in VIRTIOFSD_PATHS:
        found = shutil.which(candidate)
        if found:
            return found
    raise Unavailable("no virtiofsd on this host (Debian 12: qemu-system-common's /usr/lib/qemu/virtiofsd; "
                      "later releases: apt-get install virtiofsd)")


def start_daemon(argv: list[str], sock: Path, log_path: Path, stack: contextlib.ExitStack, wait_s: float = 10) -> None:
    """Start a vhost-user backend for the length of the stack and wait until its socket exists."""
    log = log_path.open("w")
    stack.callback(log.close)
    process = processes.start(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    stack.callback(processes.stop, process)
    deadline = time.monotonic() + wait_s
    while not sock.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise Unavailable(f"{Path(argv[0]).name} did not start ({' '.join(argv)}; see {log_path})")
        time.sleep(0.05)


def virtiofs(context: Context, stack: contextlib.ExitStack) -> Attachment:
    """A vhost-user-fs device served by virtiofsd (started here, stopped after the VM) over a token share."""
    _need_device(context, f"vhost-user-fs-{context.suffix}")
    daemon = _virtiofsd()
    legacy = daemon.endswith("/lib/qemu/virtiofsd")  # QEMU's C daemon: -o options, root only
    if legacy and os.geteuid() != 0:
        raise Unavailable(f"{daemon} (QEMU's C virtiofsd) runs only as root, and the boot stage is not root")
    share = context.files / "share-virtiofs"
    token = _token_share(share)
    sock = context.sockets / "virtiofs.sock"
    argv = ([daemon, f"--socket-path={sock}", "-o", f"source={share}", "-o", "cache=none"] if legacy else
            [daemon, "--socket-path", str(sock), "--shared-dir", str(share), "--cache", "never", "--sandbox", "none"])
    start_daemon(argv, sock, context.files / "virtiofsd.log", stack)
    return Attachment(args=["-chardev", f"socket,id=ktailor-vfs,path={sock}",
                            "-device", f"vhost-user-fs-{context.suffix},chardev=ktailor-vfs,tag=ktailorfs"],
                      words=[f"ktailor_virtiofs_token={token}"], shared_memory=True)


@dataclass(frozen=True)
class VsockHost:
    """The host end of a vhost-user vsock device: a guest connection to the host (CID 2) on port P reaches
    the unix socket `<uds>_P` (vhost-device-vsock's convention), which the host listens on."""

    uds: Path
    cid: int
    backend: str

    def port_path(self, port: int) -> Path:
        return Path(f"{self.uds}_{port}")


def vsock_backend(context: Context, stack: contextlib.ExitStack, cid: int = GUEST_CID) -> tuple[Attachment, VsockHost]:
    """A virtio-vsock device served by vhost-device-vsock (started here, stopped after the VM): AF_VSOCK
    between host and guest without the kernel's /dev/vhost-vsock, which nested or container hosts lack."""
    _need_device(context, f"vhost-user-vsock-{context.suffix}")
    daemon = shutil.which(VSOCK_BACKEND)
    if not daemon:
        raise Unavailable(f"no {VSOCK_BACKEND} on this host (Debian 13+: apt-get install {VSOCK_BACKEND}; on "
                          "Debian 12 scripts/setup installs sid's package, which needs only libc6 >= 2.34)")
    sock, uds = context.sockets / "vsock-vhu.sock", context.sockets / "vsock.uds"
    argv = [daemon, "--guest-cid", str(cid), "--socket", str(sock), "--uds-path", str(uds)]
    start_daemon(argv, sock, context.files / "vhost-device-vsock.log", stack)
    attachment = Attachment(args=["-chardev", f"socket,id=ktailor-vsock,path={sock}",
                                  "-device", f"vhost-user-vsock-{context.suffix},chardev=ktailor-vsock"],
                            words=[f"ktailor_vsock_cid={cid}"], shared_memory=True)
    return attachment, VsockHost(uds, cid, daemon)


def vsock(context: Context, stack: contextlib.ExitStack) -> Attachment:
    """The vsock probe's device where the host has no /dev/vhost-vsock: the guest must see CID 3."""
    return vsock_backend(context, stack)[0]


def pmem(context: Context, stack: contextlib.ExitStack) -> Attachment:
    """A virtio-pmem region backed by a host file."""
    _need_device(context, f"virtio-pmem-{context.suffix}", " (QEMU 8.1 added it for arm64 virt; x86 has had it since 4.1)")
    backing = context.files / "pmem.img"
    backing.unlink(missing_ok=True)
    with backing.open("wb") as handle:
        handle.truncate(PMEM_SIZE_MIB * 1024 * 1024)
    return Attachment(args=["-object", f"memory-backend-file,id=ktailor-pmem,share=on,mem-path={backing},"
                                       f"size={PMEM_SIZE_MIB}M",
                            "-device", f"virtio-pmem-{context.suffix},memdev=ktailor-pmem,id=ktailor-vpmem"],
                      memory_options=f",slots=2,maxmem={context.memory_mib + 1024}M")


def second_cpu(context: Context, stack: contextlib.ExitStack) -> Attachment:
    """Two vCPUs, so the guest can take one offline and bring it back."""
    return Attachment(smp=2)


def i8042(context: Context, stack: contextlib.ExitStack) -> Attachment:
    """An i8042 keyboard controller (q35 has one built in; microvm gets one added) and a QMP socket the host
    presses Ctrl-Alt-Del through when init asks for it, as Firecracker's SendCtrlAltDel does."""
    qmp = context.sockets / "qmp.sock"
    args = ["-qmp", f"unix:{qmp},server=on,wait=off"]
    if "microvm" in context.machine:
        _need_device(context, "i8042")
        args = ["-device", "i8042", *args]
    return Attachment(args=args, on_await={"cad": lambda: send_keys(qmp, CAD_KEYS)})


def send_keys(qmp: Path, keys: tuple[str, ...], timeout: float = 10) -> None:
    """Press keys together on the VM's keyboard through QMP (send-key)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(qmp))
        stream = conn.makefile("rwb")

        def call(execute: str, **arguments: object) -> None:
            stream.write(json.dumps({"execute": execute, "arguments": arguments}).encode() + b"\n")
            stream.flush()
            while True:
                reply = json.loads(stream.readline() or b"{}")
                if "return" in reply:
                    return
                if "error" in reply or not reply:
                    raise OSError(f"QMP {execute}: {reply.get('error', 'connection closed')}")

        stream.readline()  # the greeting
        call("qmp_capabilities")
        call("send-key", keys=[{"type": "qcode", "data": key} for key in keys])


# virtio transports each device takes (an MMIO machine has few: QEMU microvm 8); the others add none
VIRTIO_TRANSPORTS = {"scsi-disk": 1, "9p": 1, "virtiofs": 1, "pmem": 1, "vsock": 1}

DEVICES: dict[str, Callable[[Context, contextlib.ExitStack], Attachment]] = {
    "scsi-disk": scsi_disk, "9p": share_9p, "virtiofs": virtiofs, "pmem": pmem, "second-cpu": second_cpu,
    "i8042": i8042, "vsock": vsock,
}


@dataclass
class Attached:
    """What every device the probes asked for added up to, and why the others could not be attached."""

    parts: list[Attachment] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # device name → reason

    @property
    def args(self) -> list[str]:
        return [arg for part in self.parts for arg in part.args]

    @property
    def words(self) -> list[str]:
        return [word for part in self.parts for word in part.words]

    @property
    def memory_options(self) -> str:
        return "".join(part.memory_options for part in self.parts)

    @property
    def shared_memory(self) -> bool:
        return any(part.shared_memory for part in self.parts)

    @property
    def smp(self) -> int:
        return max((part.smp for part in self.parts), default=0)

    @property
    def on_await(self) -> dict[str, Callable[[], None]]:
        return {key: action for part in self.parts for key, action in part.on_await.items()}


@contextlib.contextmanager
def attach(names: list[str], context: Context) -> Iterator[Attached]:
    """Attach each named device for the length of the with-block (daemons stop, sockets go at its end)."""
    attached = Attached()
    with contextlib.ExitStack() as stack:
        for name in dict.fromkeys(names):
            try:
                attached.parts.append(DEVICES[name](context, stack))
            except Unavailable as exc:
                attached.unavailable[name] = str(exc)
        yield attached
