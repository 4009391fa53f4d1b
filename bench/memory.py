"""Where a guest kernel's memory goes at init, and which device of the test VM costs it.

Boots each kernel (a kbuild dir with arch/x86/boot/bzImage) under the x86_64-micro target's QEMU flags with
an /init (bench/memory/meminit.c) that prints /proc/meminfo, zoneinfo and slabinfo, and reports used memory
(MemTotal − MemAvailable, the figure boot.json and bench/reference.py report) split into slab, the largest
slab caches, kernel stacks, percpu, vmalloc and the rest (pages drivers took straight from the page
allocator). `--without DEV` drops one of the VM's standard devices (virtio-serial-device, …), `--set DEV,PROP`
appends a property to it (virtio-blk-device,queue-size=64), `--append WORDS` adds kernel command-line words:
each changes one thing against the same kernel booted as the boot stage boots it. `--initcalls N` boots
with `initcall_debug` and lists each kernel's N slowest initcalls (from /dev/kmsg), what its time-to-init
is spent on.

    .venv/bin/python bench/memory.py KBUILD... [--without virtio-serial-device] [--set virtio-blk-device,queue-size=64]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ktailor.guest.guest_files import GuestFiles, build_init, make_rootfs  # noqa: E402
from ktailor.guest.qemu import boot_settings, build_qemu_argv, kernel_cmdline  # noqa: E402
from ktailor.project.targets import load_catalog  # noqa: E402

FIELDS = ("MemTotal", "MemFree", "MemAvailable", "Cached", "Slab", "KernelStack", "PageTables", "Percpu", "VmallocUsed",
          "AnonPages")
INITCALL_LINE = re.compile(r"initcall (\S+?)(?:\+0x[0-9a-f]+/0x[0-9a-f]+)? returned -?\d+ after (\d+) usecs")
SLAB_LINE = re.compile(r"^(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+:.*:\s+slabdata\s+(\d+)\s+(\d+)", re.MULTILINE)


def breakdown(console: str) -> dict:
    """Used memory at init and where it is, in KiB, from the init's console output."""
    meminfo = {key: int(m[1]) for key in FIELDS if (m := re.search(rf"^{key}:\s+(\d+) kB", console, re.MULTILINE))}
    if "MemAvailable" not in meminfo:
        raise SystemExit("the guest printed no /proc/meminfo: it did not reach /init (see the console above)")
    named = sum(meminfo.get(key, 0) for key in FIELDS[3:])
    slabs = {m[1]: int(m[8]) * int(m[6]) * 4 for m in SLAB_LINE.finditer(console)}  # num_slabs × pages/slab × 4 KiB
    return {"used_kib": meminfo["MemTotal"] - meminfo["MemAvailable"],
            "slab_kib": meminfo.get("Slab", 0),
            "largest_slabs": dict(sorted(slabs.items(), key=lambda item: -item[1])[:3]),
            "other_kib": meminfo["MemTotal"] - meminfo["MemFree"] - named,
            **{f"{key.lower()}_kib": meminfo.get(key, 0) for key in ("KernelStack", "Percpu", "VmallocUsed")}}


def slowest_initcalls(console: str, count: int, system_map: str = "") -> list[tuple[str, int]]:
    """(initcall, microseconds) of the `count` slowest, from initcall_debug's records; a kernel without
    kallsyms prints addresses, named here from its System.map."""
    names = {f"0x{line.split()[0].lstrip('0')}": line.split()[2] for line in system_map.splitlines() if line.count(" ") == 2}
    found = [(names.get(m[1], m[1]), int(m[2])) for m in INITCALL_LINE.finditer(console)]
    return sorted(found, key=lambda item: -item[1])[:count]


def adjusted(argv: list[str], without: list[str], settings: list[str]) -> list[str]:
    """The QEMU argv with the named -device entries dropped and the properties appended to theirs."""
    extra = {}
    for setting in settings:
        device, _, prop = setting.partition(",")
        extra[device] = extra.get(device, "") + "," + prop
    out: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "-device" and any(argv[index + 1].startswith(d) for d in without):
            continue
        if index and argv[index - 1] == "-device" and any(arg.startswith(d) for d in without):
            continue
        device = arg.split(",")[0]
        out.append(arg + extra.get(device, "") if index and argv[index - 1] == "-device" else arg)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kbuild", nargs="+", type=Path)
    parser.add_argument("--without", action="append", default=[], help="drop this -device (by its model name)")
    parser.add_argument("--set", action="append", default=[], help="DEVICE,PROP=VALUE appended to that device")
    parser.add_argument("--append", default="", help="extra kernel command-line words")
    parser.add_argument("--initcalls", type=int, default=0, help="also list this many slowest initcalls per kernel")
    args = parser.parse_args()
    target = load_catalog(ROOT / "targets.toml").target("x86_64-micro")
    settings = boot_settings(target)
    with tempfile.TemporaryDirectory(prefix="ktailor-memory-") as scratch:
        init = build_init(target, Path(__file__).resolve().parent / "memory" / "meminit.c", Path(scratch))
        rootfs = make_rootfs(init, Path(scratch) / "root.ext4")
        files = GuestFiles(init, rootfs, rootfs)
        cmdline = " ".join(filter(None, [kernel_cmdline(target, settings, accel="tcg", mode="rootfs", probe_names=[],
                                                        vsock_cid=None), args.append,
                                            "initcall_debug" if args.initcalls else ""]))
        print("| kernel | used at init KiB | slab KiB (largest caches) | other pages KiB | stacks | percpu | vmalloc |")
        print("|---|---|---|---|---|---|---|")
        for kbuild in args.kbuild:
            argv = build_qemu_argv(target, settings, kbuild / "arch/x86/boot/bzImage", files, accel="tcg", cmdline=cmdline,
                                   mode="rootfs", vsock_cid=None)
            console = subprocess.run(adjusted(argv, args.without, args.set), capture_output=True, text=True,
                                     timeout=600).stdout
            found = breakdown(console)
            largest = ", ".join(f"{name} {kib:,}" for name, kib in found["largest_slabs"].items())
            print(f"| {kbuild} | {found['used_kib']:,} | {found['slab_kib']:,} ({largest}) | {found['other_kib']:,} | "
                  f"{found['kernelstack_kib']:,} | {found['percpu_kib']:,} | {found['vmallocused_kib']:,} |", flush=True)
            if args.initcalls:
                system_map = kbuild / "System.map"
                slowest = slowest_initcalls(console, args.initcalls, system_map.read_text() if system_map.is_file() else "")
                listed = ", ".join(f"{name} {us / 1000:.1f}" for name, us in slowest)
                print(f"| slowest initcalls (ms) | {listed} |||||", flush=True)


if __name__ == "__main__":
    main()
