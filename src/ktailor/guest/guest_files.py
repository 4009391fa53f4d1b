"""The guest side of a boot: /init (guest/init.c, compiled static for the target) and the two ways it
reaches the guest, an ext4 root filesystem made without root privileges (`mke2fs -d`) and a newc
initramfs written here."""

from __future__ import annotations

import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ktailor.core.errors import EnvironmentProblem
from ktailor.project.targets import Target

GUEST_DIR = Path(__file__).resolve().parents[3] / "guest"
ROOTFS_SIZE = "16M"


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
