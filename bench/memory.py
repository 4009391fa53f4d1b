"""Where a guest kernel's memory goes at init, and which device of the test VM costs it.

Boots each kernel (a kbuild dir with arch/x86/boot/bzImage) under the x86_64-micro target's QEMU flags with
an /init (bench/memory/meminit.c) that prints /proc/meminfo, zoneinfo and slabinfo, and reports used memory
(MemTotal − MemAvailable, the figure boot.json and bench/reference.py report) split into slab, the largest
slab caches, kernel stacks, percpu, vmalloc and the rest (pages drivers took straight from the page
allocator). `--without DEV` drops one of the VM's standard devices (virtio-serial-device, …), `--set DEV,PROP`
appends a property to it (virtio-blk-device,queue-size=64), `--append WORDS` adds kernel command-line words:
`--shared-memory` backs guest RAM with a shared memfd as the boot stage does for vhost-user vsock: each changes one
thing against the same kernel booted as the boot stage boots it. `--initcalls N` boots
with `initcall_debug` and lists each kernel's N slowest initcalls (from /dev/kmsg), what its time-to-init
is spent on; `--phases` splits the time to /init at the log's milestones (mem_init's "Memory:" line, the
first and last initcall, "Run /init"), sums the initcalls' own time and names the longest silences in the
log (`--phases 8`: the 8 longest, each with the record that ended it). Every row also gives the host's side:
QEMU's peak resident set (wait4's ru_maxrss), the memory the VM took from the host, guest RAM it wrote included.

    .venv/bin/python bench/memory.py KBUILD... [--without virtio-serial-device] [--set virtio-blk-device,queue-size=64]
    .venv/bin/python bench/memory.py KBUILD KBUILD::init_on_free=0 FLOOR_KBUILD --phases 8 --boots 5
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ktailor.guest.guest_devices import Attached, Attachment  # noqa: E402
from ktailor.guest.guest_files import GuestFiles, build_init, make_rootfs  # noqa: E402
from ktailor.guest.qemu import boot_settings, build_qemu_argv, kernel_cmdline  # noqa: E402
from ktailor.project.targets import load_catalog  # noqa: E402

FIELDS = ("MemTotal", "MemFree", "MemAvailable", "Cached", "Slab", "KernelStack", "PageTables", "Percpu", "VmallocUsed",
          "AnonPages")
INITCALL_LINE = re.compile(r"initcall (\S+?)(?:\+0x[0-9a-f]+/0x[0-9a-f]+)? returned -?\d+ after (\d+) usecs")
KMSG_LINE = re.compile(r"^kmsg (\d+) (.*)$", re.MULTILINE)
# Milestones of a boot in the kernel log, in order: where each phase of bench/memory.py --phases ends.
MILESTONES = (("mem_init", "Memory: "), ("first initcall", "calling "), ("last initcall", None),
              ("/init", ("Run /init", "Freeing unused kernel")))
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


def kmsg_records(console: str) -> list[tuple[float, str]]:
    """(milliseconds, message) of every kernel-log record the /init printed."""
    return [(int(m[1]) / 1000, m[2]) for m in KMSG_LINE.finditer(console)]


def phases(console: str) -> dict:
    """Milliseconds from the kernel's start to each milestone of MILESTONES (the kernel log's own timestamps),
    and the initcalls' summed time; a milestone the log does not show is None."""
    records = kmsg_records(console)
    found: dict = {}
    for name, prefix in MILESTONES:
        if prefix is None:  # the last initcall's return
            returns = [ms for ms, text in records if INITCALL_LINE.match(text)]
            found[name] = returns[-1] if returns else None
            continue
        prefixes = (prefix,) if isinstance(prefix, str) else prefix  # the first that the log shows
        found[name] = next((ms for wanted in prefixes for ms, text in records if text.startswith(wanted)), None)
    time_to_init = re.search(r"^time-to-init-us (\d+)$", console, re.MULTILINE)
    found["time-to-init"] = int(time_to_init[1]) / 1000 if time_to_init else None  # CLOCK_BOOTTIME at /init
    found["initcalls"] = sum(int(m[2]) for _, text in records if (m := INITCALL_LINE.match(text))) / 1000
    return found


def largest_gaps(console: str, count: int) -> list[tuple[float, str]]:
    """(milliseconds, message) of the `count` longest silences in the kernel log, each with the record that
    ended it: where a boot spends time that no initcall accounts for."""
    records = kmsg_records(console)
    gaps = [(later[0] - earlier[0], later[1]) for earlier, later in itertools.pairwise(records)]
    return sorted(gaps, key=lambda gap: -gap[0])[:count]


def run_measured(argv: list[str], timeout: float = 600) -> tuple[str, int]:
    """Run a VM to its end: its console (stdout) and the peak resident set of its process in KiB — the host
    memory the VM took, the guest RAM it wrote included (QEMU backs guest RAM lazily and keeps what was touched)."""
    with tempfile.TemporaryFile() as errors:  # stderr to a file: a full pipe nobody reads would stall the VM
        vm = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True)
        timer = threading.Timer(timeout, vm.kill)
        timer.start()
        try:
            console = vm.stdout.read()
            _, status, usage = os.wait4(vm.pid, 0)  # wait4, not wait: its rusage is this child's alone
        finally:
            timer.cancel()
            vm.stdout.close()
        vm.returncode = os.waitstatus_to_exitcode(status)
    return console, usage.ru_maxrss


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


def entry(text: str) -> tuple[Path, str]:
    """KBUILD[::WORDS]: a kernel, and command-line words for its boots only (the same kernel can be listed twice)."""
    kbuild, _, words = text.partition("::")
    return Path(kbuild), words


def median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} [{min(values):.0f}–{max(values):.0f}]" if values else "n/a"


def report(name: str, consoles: list[str], host_rss: list[int], kbuild: Path, args: argparse.Namespace) -> None:
    """One kernel's rows: memory from its last boot; host RSS and phases as medians [min–max] over all its boots."""
    console = consoles[-1]
    found = breakdown(console)
    largest = ", ".join(f"{slab} {kib:,}" for slab, kib in found["largest_slabs"].items())
    rss = f"{statistics.median(host_rss):,.0f} [{min(host_rss):,}–{max(host_rss):,}]"
    print(f"| {name} | {found['used_kib']:,} | {found['slab_kib']:,} ({largest}) | {found['other_kib']:,} | "
          f"{found['kernelstack_kib']:,} | {found['percpu_kib']:,} | {found['vmallocused_kib']:,} | {rss} |", flush=True)
    if args.initcalls:
        system_map = kbuild / "System.map"
        slowest = slowest_initcalls(console, args.initcalls, system_map.read_text() if system_map.is_file() else "")
        listed = ", ".join(f"{initcall} {us / 1000:.1f}" for initcall, us in slowest)
        print(f"| slowest initcalls (ms) | {listed} ||||||", flush=True)
    if args.phases:
        each = [phases(text) for text in consoles]
        marks = ", ".join(f"{mark} {median_range([p[mark] for p in each if p[mark] is not None])}" for mark in each[0])
        print(f"| phases, ms from the kernel's start, median [min–max] of {len(consoles)} | {marks} ||||||", flush=True)
        silences = "; ".join(f"{ms:.0f} before “{text[:60]}”" for ms, text in largest_gaps(console, args.phases))
        print(f"| longest silences in the log (ms, last boot) | {silences} ||||||", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kbuild", nargs="+", type=entry, metavar="KBUILD[::WORDS]",
                        help="a kbuild dir; ::WORDS adds command-line words to this entry's boots only")
    parser.add_argument("--without", action="append", default=[], help="drop this -device (by its model name)")
    parser.add_argument("--set", action="append", default=[], help="DEVICE,PROP=VALUE appended to that device")
    parser.add_argument("--append", default="", help="extra kernel command-line words")
    parser.add_argument("--initcalls", type=int, default=0, help="also list this many slowest initcalls per kernel")
    parser.add_argument("--phases", type=int, nargs="?", const=5, default=0, metavar="GAPS",
                        help="also time each kernel's boot phases (to mem_init, initcalls, to /init) from its log, "
                             "and list its GAPS longest silences (default 5)")
    parser.add_argument("--boots", type=int, default=1, help="boot every entry this many times, interleaved")
    parser.add_argument("--shared-memory", action="store_true",
                        help="back guest RAM with a shared memfd, as the boot stage does when a vhost-user device "
                             "(vsock) is attached")
    args = parser.parse_args()
    target = load_catalog(ROOT / "targets.toml").target("x86_64-micro")
    settings = boot_settings(target)
    with tempfile.TemporaryDirectory(prefix="ktailor-memory-") as scratch:
        init = build_init(target, Path(__file__).resolve().parent / "memory" / "meminit.c", Path(scratch))
        rootfs = make_rootfs(init, Path(scratch) / "root.ext4")
        files = GuestFiles(init, rootfs, rootfs)
        cmdline = " ".join(filter(None, [kernel_cmdline(target, settings, accel="tcg", mode="rootfs", probe_names=[],
                                                        vsock_cid=None), args.append,
                                            # initcall_debug's records overflow a small log: 1 MiB holds them all
                                            "initcall_debug log_buf_len=1M" if args.initcalls or args.phases else ""]))
        # guest RAM as the boot stage backs it for a vhost-user device: the same mechanism, one memfd-backed part
        attached = Attached([Attachment(shared_memory=True)]) if args.shared_memory else None
        consoles: dict[int, list[str]] = {index: [] for index in range(len(args.kbuild))}
        host_rss: dict[int, list[int]] = {index: [] for index in range(len(args.kbuild))}
        for _ in range(args.boots):
            for index, (kbuild, words) in enumerate(args.kbuild):  # interleaved: machine noise hits each alike
                argv = build_qemu_argv(target, settings, kbuild / "arch/x86/boot/bzImage", files, accel="tcg",
                                       cmdline=" ".join(filter(None, [cmdline, words])), mode="rootfs", vsock_cid=None,
                                       attached=attached)
                console, rss = run_measured(adjusted(argv, args.without, args.set))
                consoles[index].append(console)
                host_rss[index].append(rss)
        print("| kernel | used at init KiB | slab KiB (largest caches) | other pages KiB | stacks | percpu | vmalloc "
              "| host: QEMU's peak RSS KiB |")
        print("|---|---|---|---|---|---|---|---|")
        for index, (kbuild, words) in enumerate(args.kbuild):
            report(f"{kbuild}{' + ' + words if words else ''}", consoles[index], host_rss[index], kbuild, args)


if __name__ == "__main__":
    main()
