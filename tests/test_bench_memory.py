"""bench/memory.py: used memory split from a real console's /proc files, and the QEMU argv with one device changed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from memory import (  # noqa: E402
    adjusted,
    breakdown,
    entry,
    largest_gaps,
    median_range,
    phases,
    run_measured,
    slowest_initcalls,
)

from ktailor.guest.guest_devices import Attached, Attachment  # noqa: E402
from ktailor.guest.guest_files import GuestFiles  # noqa: E402
from ktailor.guest.qemu import boot_settings, build_qemu_argv  # noqa: E402
from ktailor.project.targets import load_catalog  # noqa: E402

CONSOLE = """\
=== /proc/meminfo
MemTotal:         249496 kB
MemFree:          243804 kB
MemAvailable:     241200 kB
Buffers:              24 kB
Cached:              728 kB
AnonPages:            52 kB
Slab:               2196 kB
KernelStack:         272 kB
PageTables:           32 kB
VmallocUsed:         284 kB
Percpu:               32 kB
=== /proc/slabinfo
slabinfo - version: 2.1
# name <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables … : slabdata …
kmalloc-4k          1032   1032   4096    8    8 : tunables    0    0    0 : slabdata    129    129      0
dentry                96     96    192   21    1 : tunables    0    0    0 : slabdata      6      6      0
=== END
"""


def test_used_memory_is_split_into_slab_and_the_pages_nobody_named():
    found = breakdown(CONSOLE)
    assert found["used_kib"] == 249496 - 241200
    assert found["slab_kib"] == 2196 and found["largest_slabs"] == {"kmalloc-4k": 129 * 8 * 4, "dentry": 6 * 1 * 4}
    assert found["other_kib"] == 249496 - 243804 - (728 + 52 + 2196 + 272 + 32 + 284 + 32)


def test_one_device_is_dropped_or_given_a_property_and_nothing_else_changes():
    argv = ["qemu", "-device", "virtio-blk-device,drive=root", "-device", "virtio-serial-device", "-append", "x"]
    assert adjusted(argv, ["virtio-serial-device"], []) == ["qemu", "-device", "virtio-blk-device,drive=root", "-append", "x"]
    assert adjusted(argv, [], ["virtio-blk-device,queue-size=64"]) == [
        "qemu", "-device", "virtio-blk-device,drive=root,queue-size=64", "-device", "virtio-serial-device", "-append", "x"]


def test_the_slowest_initcalls_are_named_even_without_kallsyms():
    console = ("initcall 0xffffffff818de72c returned 0 after 67000 usecs\n"
               "initcall virtio_console_init+0x0/0x10e returned 0 after 15600 usecs\n"
               "initcall chr_dev_init+0x0/0xa0 returned 0 after 3900 usecs\n")
    system_map = "ffffffff818de72c t serial8250_init\nffffffff818dcc55 t other_init\n"
    assert slowest_initcalls(console, 2, system_map) == [("serial8250_init", 67000), ("virtio_console_init", 15600)]


def test_the_boot_is_split_at_the_logs_milestones_by_the_kernels_own_timestamps():
    console = ("=== kmsg\n"
               "kmsg 0 Linux version 5.10.262\n"
               "kmsg 212500 Memory: 236000K/261752K available (10248K kernel code, 1040K rwdata)\n"
               "kmsg 300000 calling  net_ns_init+0x0/0x140 @ 1\n"
               "kmsg 300900 initcall net_ns_init+0x0/0x140 returned 0 after 900 usecs\n"
               "kmsg 310000 calling  0xffffffff818de72c @ 1\n"
               "kmsg 377000 initcall 0xffffffff818de72c returned 0 after 67000 usecs\n"
               "kmsg 401000 Freeing unused kernel image (initmem) memory: 1024K\n"
               "kmsg 402500 Run /init as init process\n"
               "time-to-init-us 405100\n")
    assert phases(console) == {"mem_init": 212.5, "first initcall": 300.0, "last initcall": 377.0, "/init": 402.5,
                               "time-to-init": 405.1, "initcalls": 67.9}
    assert phases("kmsg 5 Linux version 6.1\n") == {"mem_init": None, "first initcall": None, "last initcall": None,
                                                     "/init": None, "time-to-init": None, "initcalls": 0}


def test_the_longest_silences_are_named_by_the_record_that_ends_them():
    console = ("kmsg 0 Linux version 5.10.262\n"
               "kmsg 212500 Memory: 236000K/261752K available\n"
               "kmsg 213000 SLUB: HWalign=64\n"
               "kmsg 300000 Freeing SMP alternatives memory: 32K\n")
    assert largest_gaps(console, 2) == [(212.5, "Memory: 236000K/261752K available"),
                                        (87.0, "Freeing SMP alternatives memory: 32K")]


def test_a_kernel_can_be_listed_again_with_its_own_command_line_words():
    assert entry("/k/kbuild") == (Path("/k/kbuild"), "")
    assert entry("/k/kbuild::init_on_free=0 page_alloc.shuffle=0") == (Path("/k/kbuild"),
                                                                     "init_on_free=0 page_alloc.shuffle=0")
    assert median_range([740.2, 718.0, 905.9]) == "740 [718–906]" and median_range([]) == "n/a"


def test_a_vms_host_memory_is_its_own_process_peak_resident_set():
    touched = ("b = bytearray(96 * 2**20); b[::4096] = b'x' * len(range(0, len(b), 4096)); print('wrote 96 MiB')")
    console, rss = run_measured([sys.executable, "-c", touched])
    assert console == "wrote 96 MiB\n" and 96 * 1024 <= rss < 200 * 1024
    console, rss = run_measured([sys.executable, "-c", "print('small')"])
    assert console == "small\n" and rss < 96 * 1024  # this child's peak, not the largest child's so far


def test_a_vm_that_outlives_its_timeout_is_killed():
    started = time.monotonic()
    console, _ = run_measured(["sleep", "30"], timeout=0.5)
    assert console == "" and time.monotonic() - started < 10


def test_shared_memory_backs_guest_ram_with_the_boot_stages_memfd():
    """--shared-memory passes the boot stage's own mechanism (an attachment that needs shared RAM) to its argv builder."""
    target = load_catalog(REPO / "targets.toml").target("x86_64-micro")
    settings = boot_settings(target)
    files = GuestFiles(Path("init"), Path("root.ext4"), Path("root.ext4"))
    argv = build_qemu_argv(target, settings, Path("bzImage"), files, accel="tcg", cmdline="", mode="rootfs",
                           vsock_cid=None, attached=Attached([Attachment(shared_memory=True)]))
    at = argv.index("-object")
    assert argv.count("-object") == 1
    assert argv[at:at + 4] == ["-object", "memory-backend-memfd,id=ktailor-ram,size=256M,share=on",
                               "-machine", "memory-backend=ktailor-ram"]
