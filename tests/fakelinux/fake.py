"""The fake kernel's tool: see Makefile."""

import os
import struct
import sys
from pathlib import Path

srctree, out, arch, fail, goal, allconfig = sys.argv[1:7]
out_dir = Path(out)
out_dir.mkdir(parents=True, exist_ok=True)
with (out_dir / "make-calls").open("a") as calls:
    calls.write(f"{goal} ARCH={arch}\n")
if fail == goal:
    print(f"fake: {goal} failed as asked (FAIL={fail})", file=sys.stderr)
    sys.exit(2)

if goal == "allnoconfig":
    unsupported = set(Path(srctree, "unsupported").read_text().split()) if Path(srctree, "unsupported").exists() else set()
    lines = [f"CONFIG_FAKE_ARCH_{arch.upper()}=y"]
    for line in Path(allconfig).read_text().splitlines():
        symbol = line.split("=")[0].removeprefix("# ").split(" ")[0]
        if symbol.removeprefix("CONFIG_") not in unsupported:
            lines.append(line)
    defaults = Path(srctree, "defaults")  # unrequested options this fake kernel's defaults turn on
    lines += defaults.read_text().splitlines() if defaults.exists() else []
    (out_dir / ".config").write_text("\n".join(lines) + "\n")
    sys.exit(0)

if os.environ.get("FAKE_SLEEP"):  # a slow build, for tests of concurrent runs and of Ctrl-C
    import time

    Path(out_dir, "build-started").write_text(str(os.getpid()))
    time.sleep(float(os.environ["FAKE_SLEEP"]))
print(f"  CC      fake/{goal}.o")
compiler = os.environ.get("FAKE_CC", "").split()
if compiler and arch == "x86":  # one real compile, through ccache/distcc when CC names them
    import subprocess

    source = Path(srctree, "hello.c")
    leak = [f'-DFAKE_BUILD_DIR="{out_dir.resolve()}"'] if os.environ.get("FAKE_REPRODUCIBLE") == "leak" else []
    # as the kernel's Makefile does: strip the source tree from __FILE__, then the user's KCFLAGS
    flags = [f"-fmacro-prefix-map={srctree}/=", *os.environ.get("FAKE_KCFLAGS", "").split()]
    subprocess.run([*compiler[:-1], "gcc", f'-DFAKE_GOAL="{goal}"', *flags, *leak, "-c", str(source),
                    "-o", str((out_dir / f"hello-{goal}.o").resolve())], check=True, cwd=out_dir)  # kbuild compiles in O=
# kbuild's record of what it compiled (.<obj>.cmd: source_ and deps_ lines), for sources.json
compiled = Path(srctree, "compiled")
for source in (compiled.read_text().split() if compiled.exists() else
               ["drivers/md/dm-crypt.c", "fs/ext4/inode.c", f"arch/{arch}/kernel/setup.c"]):
    obj = source.rsplit(".", 1)[0] + ".o"
    cmd = out_dir / Path(obj).parent / f".{Path(obj).name}.cmd"
    cmd.parent.mkdir(parents=True, exist_ok=True)
    cmd.write_text(f"cmd_{obj} := gcc -c -o {obj} {srctree}/{source}\n\nsource_{obj} := {srctree}/{source}\n\n"
                   f"deps_{obj} := \\\n  {srctree}/include/linux/jbd2.h \\\n  $(wildcard include/config/FAKE) \\\n\n"
                   f"{obj}: $(deps_{obj})\n")
host = out_dir / "scripts" / "basic" / ".fixdep.o.cmd"  # a host program: not part of the kernel
host.parent.mkdir(parents=True, exist_ok=True)
host.write_text(f"source_scripts/basic/fixdep.o := {srctree}/scripts/basic/fixdep.c\n")
machine = {"x86": 62, "arm64": 183}[arch]
elf = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack("<HH", 2, machine) + bytes(44)
compiled_vmlinux = out_dir / "hello-vmlinux.o"
if os.environ.get("FAKE_REPRODUCIBLE") and compiled_vmlinux.is_file():  # a real ELF with sections, no noise
    (out_dir / "vmlinux").write_bytes(compiled_vmlinux.read_bytes())
else:
    (out_dir / "vmlinux").write_bytes(elf + os.urandom(64))
(out_dir / "System.map").write_text("ffffffff81000000 T _text\n")
boot = out_dir / "arch" / arch / "boot"
boot.mkdir(parents=True, exist_ok=True)
if goal == "bzImage":
    header = bytearray(0x400)
    header[0x1FE:0x200] = b"\x55\xaa"
    header[0x202:0x206] = b"HdrS"
    if os.environ.get("FAKE_REPRODUCIBLE"):  # the "compressed kernel": made from vmlinux, as the real one is
        import hashlib

        header += hashlib.sha256((out_dir / "vmlinux").read_bytes()).digest()
    (boot / "bzImage").write_bytes(bytes(header))
if goal == "Image":
    header = bytearray(64)
    header[0x38:0x3C] = b"ARM\x64"
    (boot / "Image").write_bytes(bytes(header) + os.urandom(64))
