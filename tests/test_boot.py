"""The boot stage: probe table, console parser, hints, failure mapping, QEMU command lines, the guest
init (compiled and run on the host, where it must only look), and real boots of a built kernel."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ktailor.core.errors import InputError, VerificationFailed
from ktailor.guest import guest_files, probes, qemu, vm
from ktailor.guest.guest_devices import qemu_devices
from ktailor.kconfig.fragments import load_fragments, parse_fragment, requested_options, resolve_list, version_key
from ktailor.project.targets import Target, load_catalog
from ktailor.stages import boot

REPO = Path(__file__).resolve().parents[1]
GUEST = REPO / "guest"
CATALOG = load_catalog(REPO / "targets.toml")
TABLE = probes.load_probe_table(GUEST / "probes.toml")
KBUILD_ENV = "KTAILOR_TEST_KBUILD_X86"

MEMORY_61 = ("Memory: 239780K/261752K available (8192K kernel code, 764K rwdata, 1280K rodata, 776K init, "
             "808K bss, 21716K reserved, 0K cma-reserved)")
CONSOLE = [
    "KTAILOR-INIT boottime_ns=868412345 pid=1\r",
    "KTAILOR-UPTIME seconds=0.89",
    "KTAILOR-MEM total_kb=243648 available_kb=225292 used_kb=18356 init_rss_kb=412",
    f"KTAILOR-KMSG us=33626 text={MEMORY_61}",
    "KTAILOR-KMSG us=853512 text=Run /init as init process",
    "random: crng init done",
    "KTAILOR-PROBE name=virtio-blk status=pass detail=/dev/vda is a block device; / is /dev/root ext4",
    # kernel output sharing the line with init's: the parser looks anywhere in a line
    "[    1.2] virtio_net virtio1: liveKTAILOR-PROBE name=dm-crypt status=fail detail=/dev/mapper/control: No such file",
    "KTAILOR-CMDLINE text=console=ttyS0 reboot=k panic=1 pci=off reboot=t quiet ktailor_probes=virtio-blk,dm-crypt",
    "KTAILOR-VULN name=spectre_v2 state=Mitigation: Retpolines; STIBP: disabled; RSB filling",
    "KTAILOR-VULN name=meltdown state=Not affected",
    "KTAILOR-WARN mount cgroup2 on /sys/fs/cgroup: No such device",
    "KTAILOR-DONE probes=2 failed=1",
    "reboot: Restarting system",
]


def target_named(name: str) -> Target:
    return CATALOG.target(name)


# --- the probe table --------------------------------------------------------------------------------

def test_every_target_gets_its_probes():
    by_target = {name: {p.name for p in TABLE.for_target(t)} for name, t in CATALOG.targets.items()}
    common = {"virtio-blk", "dm-crypt", "crypto-xts-aes", "vsock", "seccomp-filter", "cgroup-freeze", "ns-user"}
    for name, names in by_target.items():
        assert common <= names, name
    assert {"pci", "acpi", "modules"} <= by_target["x86_64-mini"]
    assert "acpi" not in by_target["aarch64-mini"]  # device tree, not ACPI, on a direct arm64 boot
    assert not {"pci", "modules", "bpf"} & by_target["x86_64-micro"]
    assert "bpf" in by_target["x86_64-micro-ebpf"]


def test_every_probe_symbol_is_requested_by_the_repo_fragments():
    """A probe naming a symbol no fragment requests could never point at the line to fix."""
    for target in CATALOG.targets.values():
        requested = requested_options(load_fragments(resolve_list(REPO / "fragments", target.list_name), REPO),
                                      target.arch.name, version_key("6.1.192"))
        transport = TABLE.transport[target.boot["devices"]]
        for probe in TABLE.for_target(target):
            symbols = probe.symbols + (transport if probe.transport else ())
            missing = [s for s in symbols if s not in requested]
            assert not missing, f"{target.name}: probe {probe.name} needs {missing}, which no fragment requests"


@pytest.mark.parametrize(("text", "message"), [
    ('[[probe]]\nname = "x"\nrequirement = "r"\ntypes = ["micro"]\n', "has no symbols"),
    ('[[probe]]\nname = "x"\nrequirement = "r"\nsymbols = ["A"]\ntypes = ["micro"]\n' * 2, "declared twice"),
    ('[[hint]]\nhint = "h"\nwhen = "sometimes"\n', "is not one of"),
    ('[[hint]]\nhint = "h"\nmatch = "m"\nwhen = "timeout"\n', "exactly one of"),
], ids=["probe-without-symbols", "duplicate-probe", "unknown-condition", "match-and-when"])
def test_probe_table_rejects_bad_rows(tmp_path, text, message):
    path = tmp_path / "probes.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        probes.load_probe_table(path)


# --- parsing the guest's console ---------------------------------------------------------------------

@pytest.mark.parametrize(("line", "expected"), [
    (MEMORY_61, {"available": 239780, "total": 261752, "kernel code": 8192, "rwdata": 764, "rodata": 1280,
                 "init": 776, "bss": 808, "reserved": 21716, "cma-reserved": 0}),
    ("[    0.033626] Memory: 1000K/2000K available (10K kernel code, 5K bss, 0K reserved)",
     {"available": 1000, "total": 2000, "kernel code": 10, "bss": 5, "reserved": 0}),
    ("Memory: 239780K/261752K", None),
    ("Freeing unused kernel image (initmem) memory: 776K", None),
], ids=["linux-6.1", "with-printk-time", "truncated", "other-memory-line"])
def test_parse_memory_line(line, expected):
    assert probes.parse_memory_line(line) == expected


def test_memory_is_measured_three_ways_from_the_guests_own_figures():
    """256 MiB guest: what boot reserved (RAM − MemTotal), what the kernel holds at init (MemTotal − MemAvailable)
    and what the guest costs beyond its workload (RAM − MemAvailable − init's RSS, as Kuasar reports)."""
    metrics = boot.metrics_of(probes.parse_console(CONSOLE), vm.VmRun(), memory_mib=256)
    assert metrics["guest_ram_kib"] == 262144
    assert metrics["boot_reserved_kib"] == 262144 - 243648
    assert metrics["guest_used_kib"] == 18356
    assert metrics["kernel_overhead_kib"] == 262144 - 225292 - 412
    older_init = [line.replace(" init_rss_kb=412", "") for line in CONSOLE]  # an init without the RSS field
    assert "kernel_overhead_kib" not in boot.metrics_of(probes.parse_console(older_init), vm.VmRun(), memory_mib=256)


def test_parse_console_reads_every_kind_of_line():
    report = probes.parse_console(CONSOLE)
    assert (report.boottime_ns, report.pid, report.uptime_s) == (868412345, 1, 0.89)
    assert (report.mem_total_kb, report.mem_available_kb, report.mem_used_kb) == (243648, 225292, 18356)
    assert report.init_rss_kb == 412
    assert report.kernel_memory["kernel code"] == 8192
    assert report.run_init_us == 853512
    assert report.probes["virtio-blk"] == probes.ProbeResult("virtio-blk", "pass",
                                                             "/dev/vda is a block device; / is /dev/root ext4")
    assert report.probes["dm-crypt"].status == "fail"
    assert report.warnings == ["mount cgroup2 on /sys/fs/cgroup: No such device"]
    assert report.cmdline.startswith("console=ttyS0 reboot=k") and report.cmdline.endswith("virtio-blk,dm-crypt")
    assert report.vulnerabilities == {"spectre_v2": "Mitigation: Retpolines; STIBP: disabled; RSB filling",
                                      "meltdown": "Not affected"}
    assert report.done


def test_command_line_words_that_undo_hardening_are_found():
    undoes = probes.load_cmdline_undoes(REPO / "guest" / "cmdline-undoes.toml")
    assert probes.undone_by("console=ttyS0 mitigations=auto nokaslr quiet", undoes) == {
        "nokaslr": "kernel address space layout randomisation"}
    assert probes.undone_by("console=ttyS0 mitigations=off", undoes)["mitigations=off"].startswith("every CPU")
    for target in CATALOG.targets.values():  # what ktailor itself boots and records undoes nothing
        settings_words = " ".join(str(target.boot.get(key, "")) for key in ("cmdline_extra", "tcg_cmdline_extra"))
        assert probes.undone_by(f"{target.cmdline} {settings_words}", undoes) == {}, target.name


def test_a_bad_undoes_table_is_refused_with_its_path(tmp_path):
    bad = tmp_path / "cmdline-undoes.toml"
    bad.write_text('[undoes]\n"nokaslr" = 3\n')
    with pytest.raises(InputError, match=str(bad)):
        probes.load_cmdline_undoes(bad)


def test_parse_console_of_a_guest_that_died_early():
    report = probes.parse_console([*CONSOLE[:7], "Kernel panic - not syncing: Attempted to kill init!"])
    assert not report.done
    assert list(report.probes) == ["virtio-blk"]


def test_memory_line_from_an_unquiet_console_counts_too():
    assert probes.parse_console([f"[    0.03] {MEMORY_61}"]).kernel_memory["total"] == 261752


@pytest.mark.parametrize(("lines", "timed_out", "expected"), [
    (["VFS: Cannot open root device \"vda\" or unknown-block(0,0): error -6",
      "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"], False, "VIRTIO_BLK"),
    (["Kernel panic - not syncing: No working init found.  Try passing init= option to kernel."], False, "BINFMT_ELF"),
    (["Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b"], False, "/init crashed"),
    (["Kernel panic - not syncing: Out of memory and no killable processes..."], False, "the kernel panicked"),
    ([], True, "printed nothing"),
    (["[qemu] qemu-system-x86_64: Error loading uncompressed kernel without PVH ELF Note"], False, "refused to run the VM"),
    (["Linux version 6.1.192", "smp: Bringing up secondary CPUs ..."], True, "neither finished nor exited"),
    (["Linux version 6.1.192"], False, None),
], ids=["root-fs", "no-init", "init-died", "generic-panic", "no-output", "qemu-error", "hang", "nothing-known"])
def test_hints_from_the_console(lines, timed_out, expected):
    hint = probes.find_hint(TABLE.hints, lines, timed_out=timed_out)
    if expected is None:
        assert hint is None
    else:
        assert hint is not None and expected in hint


# --- mapping a failed probe back to its requirement and fragment line ---------------------------------

def crypto_fragment(tmp_path: Path) -> dict:
    path = tmp_path / "crypto-luks.conf"
    path.write_text("# requirement: volume-encryption\n# LUKS volumes.\n\n"
                    "# The device-mapper core.\nCONFIG_BLK_DEV_DM=y\n"
                    "# dm-crypt: the LUKS data path.\nCONFIG_DM_CRYPT=y\n")
    return requested_options([parse_fragment(path, Path("fragments/crypto-luks.conf"))], "x86_64", (6, 1, 0))


def test_failed_probe_names_the_fragment_line_and_what_did_not_land(tmp_path):
    probe = next(p for p in TABLE.probes if p.name == "dm-crypt")
    result = probes.ProbeResult("dm-crypt", "fail", "device-mapper works but its target list has no crypt")
    failure = probes.explain_failure(probe, result, crypto_fragment(tmp_path), {"MD": "y", "BLK_DEV_DM": "y"})
    sentence = failure.sentence(target_named("x86_64-micro"))
    assert "requirement 'volume-encryption'" in sentence
    assert "CONFIG_DM_CRYPT=y at fragments/crypto-luks.conf:7" in sentence
    assert "CONFIG_DM_CRYPT is not set in the built .config" in sentence
    assert "no fragment of micro-x86_64.list requests CONFIG_MD" in sentence
    providers = {p["symbol"]: p for p in failure.as_json()["provided_by"]}
    assert providers["DM_CRYPT"]["reason"] == "dm-crypt: the LUKS data path."
    assert providers["BLK_DEV_DM"]["final"] == "y"


def test_virtio_probe_failure_also_points_at_the_transport(tmp_path):
    probe = next(p for p in TABLE.probes if p.name == "virtio-rng")
    failure = probes.explain_failure(probe, probes.ProbeResult("virtio-rng", "fail", "no hw_random"), {}, {},
                                     TABLE.transport["mmio"])
    assert [p.symbol for p in failure.providers] == ["HW_RANDOM", "HW_RANDOM_VIRTIO", "VIRTIO_MMIO"]


# --- boot settings, accelerator, command lines ------------------------------------------------------

def with_boot(target: Target, **changes) -> Target:
    return dataclasses.replace(target, boot={**target.boot, **changes})


@pytest.mark.parametrize(("changes", "message"), [
    ({"devices": "isa"}, "use one of mmio, pci"),
    ({"kernal": "vmlinux"}, "unknown key"),
], ids=["bad-transport", "typo-key"])
def test_boot_settings_reject_bad_tables(changes, message):
    with pytest.raises(InputError, match=message):
        qemu.boot_settings(with_boot(target_named("x86_64-micro"), **changes))


def test_x86_64_mini_is_also_booted_the_way_cloud_hypervisor_boots_it():
    target = target_named("x86_64-mini")
    assert qemu.boot_settings(target).kernel == "arch/x86/boot/bzImage"  # the main boot: firmware loads the bzImage
    [(name, alternate, why)] = qemu.alternate_boots(target)
    assert name == "pvh-vmlinux" and "Cloud Hypervisor" in why and "PVH" in why
    settings = qemu.boot_settings(alternate)
    assert settings.kernel == "vmlinux" and settings.machine == "q35" and settings.devices == "pci"
    assert qemu.alternate_boots(alternate) == []  # no boot of a boot
    assert all(qemu.alternate_boots(target_named(n)) == [] for n in ("x86_64-micro", "aarch64-micro", "aarch64-mini"))


@pytest.mark.parametrize(("table", "message"), [
    ({"kernel": "vmlinux"}, "needs a `why"),
    ({"kernal": "vmlinux", "why": "a VMM"}, "unknown key"),
    ({"devices": "isa", "why": "a VMM"}, "use one of mmio, pci"),
], ids=["no-why", "typo-key", "bad-transport"])
def test_a_bad_alternate_boot_table_is_refused_with_its_name(table, message):
    target = with_boot(target_named("x86_64-micro"), also={"other": table})
    with pytest.raises(InputError, match=message) as caught:
        qemu.alternate_boots(target)
    assert "targets.toml [target.x86_64-micro.boot" in str(caught.value)


@pytest.mark.parametrize("case", [
    {"host": "x86_64", "flags": "fpu vmx sse", "kvm_ok": True, "expected": "kvm", "why": "KVM"},
    {"host": "x86_64", "flags": "fpu sse hypervisor", "kvm_ok": True, "expected": "tcg", "why": "no vmx/svm flag"},
    {"host": "x86_64", "flags": "fpu vmx", "kvm_ok": False, "expected": "tcg", "why": "not accessible"},
    {"host": "aarch64", "flags": "", "kvm_ok": True, "expected": "tcg", "why": "the host is aarch64"},
    {"host": "x86_64", "flags": "fpu vmx", "kvm_ok": True, "wanted": "tcg", "expected": "tcg", "why": "as requested"},
], ids=["kvm-works", "nested-software-kvm", "no-dev-kvm", "foreign-arch", "forced-tcg"])
def test_choose_accel(tmp_path, case):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {case['flags']}\ncpu MHz\t\t: 2596.120\n")
    kvm = tmp_path / "kvm"
    if case["kvm_ok"]:
        kvm.write_text("")
    accel, note = qemu.choose_accel(target_named("x86_64-micro"), case.get("wanted"), host=case["host"], cpuinfo=cpuinfo,
                                    kvm_device=kvm)
    assert accel == case["expected"]
    assert case["why"] in note
    assert qemu.host_tsc_khz(cpuinfo) == 2596120


FAKE_FILES = guest_files.GuestFiles(Path("/w/init"), Path("/w/rootfs.ext4"), Path("/w/initramfs.cpio"))


@pytest.mark.parametrize("name", sorted(CATALOG.targets))
def test_qemu_command_per_target(name):
    target = target_named(name)
    settings = qemu.boot_settings(target)
    argv = qemu.build_qemu_argv(target, settings, Path("/k") / settings.kernel, FAKE_FILES, accel="tcg",
                                cmdline="console=x", mode="rootfs", vsock_cid=None)
    assert argv[0] == target.arch.qemu
    assert argv[argv.index("-M") + 1] == target.boot["machine"]
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert "-no-reboot" in argv and "-initrd" not in argv
    devices = [argv[i + 1] for i, word in enumerate(argv) if word == "-device"]
    suffix = "-device" if target.boot["devices"] == "mmio" else "-pci"
    assert sorted(d.split(",")[0] for d in devices) == sorted(
        f"virtio-{kind}{suffix}" for kind in ("blk", "net", "rng", "balloon", "serial"))
    if name.startswith("x86_64-micro"):
        buses = [d.rsplit("bus=virtio-mmio-bus.", 1)[1] for d in devices]
        assert "3" not in buses  # GSI 8 belongs to the RTC under rtc=on


def test_qemu_command_modes_and_interactive():
    target = target_named("x86_64-micro")
    settings = qemu.boot_settings(target)
    argv = qemu.build_qemu_argv(target, settings, Path("/k/vmlinux"), FAKE_FILES, accel="kvm", cmdline="c",
                                mode="initramfs", vsock_cid=4242, interactive=True)
    assert argv[argv.index("-initrd") + 1] == "/w/initramfs.cpio"
    assert argv[argv.index("-serial") + 1] == "mon:stdio" and "-monitor" not in argv
    assert argv[argv.index("-cpu") + 1] == "host"
    assert any(word.startswith("vhost-vsock-device,guest-cid=4242") for word in argv)


def test_kernel_cmdline():
    target = target_named("x86_64-micro")
    settings = qemu.boot_settings(target)
    tcg = qemu.kernel_cmdline(target, settings, accel="tcg", mode="rootfs", probe_names=["a", "b"], vsock_cid=None,
                              tsc_khz=2596120).split()
    assert tcg[: len(target.cmdline.split())] == target.cmdline.split()
    assert {"reboot=t", "quiet", "tsc_early_khz=2596120", "root=/dev/vda", "init=/init", "ktailor_probes=a,b"} <= set(tcg)
    assert tcg.index("reboot=t") > tcg.index("reboot=k")  # the later reboot= wins
    kvm = qemu.kernel_cmdline(target, settings, accel="kvm", mode="initramfs", probe_names=["a"], vsock_cid=4242,
                              interactive=True, tsc_khz=2596120).split()
    assert "rdinit=/init" in kvm and "root=/dev/vda" not in kvm
    assert "ktailor_vsock_cid=4242" in kvm
    assert not any(w.startswith("tsc_early_khz") for w in kvm) and "quiet" not in kvm


# --- guest files ---------------------------------------------------------------------------------

@pytest.mark.skipif(not shutil.which("cpio"), reason="cpio is not installed (Debian: apt-get install cpio)")
def test_newc_archive_is_what_cpio_reads(tmp_path):
    init = tmp_path / "init-binary"
    init.write_bytes(b"\x7fELF" + b"x" * 1001)
    archive = guest_files.make_initramfs(init, tmp_path / "initramfs.cpio")
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=archive.read_bytes(), capture_output=True, check=True).stdout
    rows = {line.split()[-1]: line for line in listing.decode().splitlines()}
    assert set(rows) == {"dev", "proc", "sys", "tmp", "dev/console", "init"}
    assert rows["dev/console"].startswith("crw-------")
    assert rows["init"].startswith("-rwxr-xr-x") and " 1005 " in rows["init"]
    assert len(archive.read_bytes()) % 4 == 0


@pytest.mark.skipif(not shutil.which("mke2fs"), reason="mke2fs is not installed (Debian: apt-get install e2fsprogs)")
def test_rootfs_image_holds_init(tmp_path):
    init = tmp_path / "init"
    init.write_bytes(b"\x7fELF-init")
    image = guest_files.make_rootfs(init, tmp_path / "rootfs.ext4")
    assert image.read_bytes()[0x438:0x43A] == b"\x53\xef"  # the ext2/3/4 superblock magic
    copied = subprocess.run(["debugfs", "-R", "cat /init", str(image)], capture_output=True, check=True).stdout
    assert copied == init.read_bytes()
    listing = subprocess.run(["debugfs", "-R", "ls -p /", str(image)], capture_output=True, text=True, check=True).stdout
    assert {"dev", "proc", "sys", "tmp", "init"} <= {row.split("/")[5] for row in listing.splitlines() if row.count("/") > 5}


needs_gcc = pytest.mark.skipif(not shutil.which("gcc"), reason="gcc is not installed")


@pytest.fixture(scope="module")
def host_init(tmp_path_factory) -> Path:
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    return guest_files.build_init(target_named("x86_64-micro"), GUEST / "init.c", tmp_path_factory.mktemp("init"))


LINE_RES = [probes.PROBE_RE, probes.INIT_RE, probes.UPTIME_RE, probes.MEM_RE, probes.KMSG_RE, probes.CMDLINE_RE,
            probes.VULN_RE, probes.DONE_RE, probes.WARN_RE]


@needs_gcc
def test_init_on_the_host_only_looks_and_reports_well_formed_lines(host_init):
    names = [p.name for p in TABLE.probes]
    mounts_before = Path("/proc/self/mounts").read_text()
    env = {"PATH": os.environ.get("PATH", ""), "ktailor_probes": ",".join([*names, "no-such-probe"])}
    done = subprocess.run([str(host_init)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert Path("/proc/self/mounts").read_text() == mounts_before  # not PID 1: nothing mounted
    assert done.returncode == 1  # it exits (no reboot), failing because of no-such-probe at least
    lines = done.stdout.splitlines()
    for line in lines:
        assert any(regex.fullmatch(line) if regex is not probes.WARN_RE else regex.match(line) for regex in LINE_RES), line
    report = probes.parse_console(lines)
    assert report.pid != 1 and report.boottime_ns > 0 and report.done
    assert report.mem_used_kb > 0
    assert report.cmdline == Path("/proc/cmdline").read_text().strip()
    assert list(report.probes) == [*names, "no-such-probe"]
    assert all("has no probe named" not in r.detail for n, r in report.probes.items() if n != "no-such-probe")
    assert report.probes["no-such-probe"].status == "fail"
    assert report.probes["cgroup-freeze"].status == "skip"
    assert int(re.search(r"probes=(\d+)", lines[-1])[1]) == len(names) + 1


RUNTIME_VALUES = {  # probe → (file, value the fragments ask the booted kernel for)
    "page-shuffle": ("/sys/module/page_alloc/parameters/shuffle", "Y"),
    "yama-ptrace-scope": ("/proc/sys/kernel/yama/ptrace_scope", "1"),
    "dmesg-restrict": ("/proc/sys/kernel/dmesg_restrict", "1"),
    "mmap-min-addr": ("/proc/sys/vm/mmap_min_addr", "65536"),
    "unprivileged-bpf-off": ("/proc/sys/kernel/unprivileged_bpf_disabled", "2"),
}


@needs_gcc
def test_runtime_value_probes_report_what_this_kernel_reports(host_init):
    """The hardening probes read the running kernel; run on the host, each must agree with the host's own files."""
    env = {"PATH": os.environ.get("PATH", ""), "ktailor_probes": ",".join(RUNTIME_VALUES)}
    done = subprocess.run([str(host_init)], env=env, capture_output=True, text=True, timeout=60, check=False)
    report = probes.parse_console(done.stdout.splitlines())
    for name, (path, wanted) in RUNTIME_VALUES.items():
        try:
            actual = Path(path).read_text().strip()
        except OSError:
            actual = None
        result = report.probes[name]
        assert result.status == ("pass" if actual == wanted else "fail"), (name, actual, result.detail)
        assert path in result.detail
        if actual is not None and actual != wanted:
            assert f'is "{actual}", not "{wanted}"' in result.detail


@needs_gcc
def test_init_is_cached_until_its_source_changes(tmp_path):
    source = tmp_path / "init.c"
    shutil.copy(GUEST / "init.c", source)
    target = target_named("x86_64-micro")
    first = guest_files.build_init(target, source, tmp_path / "out")
    stamp = first.stat().st_mtime_ns
    assert guest_files.build_init(target, source, tmp_path / "out").stat().st_mtime_ns == stamp
    source.write_text(source.read_text() + "\n/* changed */\n")
    assert guest_files.build_init(target, source, tmp_path / "out").stat().st_mtime_ns != stamp


@pytest.mark.skipif(not shutil.which("aarch64-linux-gnu-gcc"), reason="aarch64-linux-gnu-gcc is not installed")
def test_init_cross_compiles_for_aarch64(tmp_path):
    init = guest_files.build_init(target_named("aarch64-micro"), GUEST / "init.c", tmp_path)
    head = init.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64


@needs_gcc
def test_a_broken_init_source_is_an_environment_error_with_the_compiler_message(tmp_path):
    source = tmp_path / "init.c"
    source.write_text("int main(void) { return missing_symbol; }\n")
    with pytest.raises(guest_files.EnvironmentProblem, match="missing_symbol"):
        guest_files.build_init(target_named("x86_64-micro"), source, tmp_path / "out")


# --- the stage, without and with a real kernel -------------------------------------------------------

def test_missing_qemu_is_a_loud_skip_not_a_pass(tmp_path, caplog):
    target = target_named("x86_64-micro")
    target = dataclasses.replace(target, arch=dataclasses.replace(target.arch, qemu="qemu-system-nowhere"))
    with caplog.at_level(logging.WARNING):
        result = boot.boot_target(target, tmp_path / "kbuild", tmp_path / "work", {}, logging.getLogger("t"))
    assert result.status == "skipped"
    saved = json.loads((tmp_path / "work" / "boot.json").read_text())
    assert saved["status"] == "skipped"
    assert "apt-get install qemu-system-x86" in saved["reason"]
    assert "NOT boot-verified" in caplog.text


@pytest.mark.skipif(not shutil.which("qemu-system-x86_64") or not shutil.which("gcc") or not shutil.which("mke2fs"),
                    reason="needs qemu-system-x86_64, gcc and mke2fs")
def test_an_unbootable_kernel_fails_with_console_log_and_hint(tmp_path):
    kbuild = tmp_path / "kbuild"
    kbuild.mkdir()
    (kbuild / "vmlinux").write_bytes(b"\x7fELF" + b"\0" * 4096)  # an ELF with no PVH entry
    with pytest.raises(VerificationFailed) as caught:
        boot.boot_target(target_named("x86_64-micro"), kbuild, tmp_path / "work", {}, logging.getLogger("t"), accel="tcg")
    message = str(caught.value)
    assert "did not finish booting" in message and str(tmp_path / "work" / "console.log") in message
    assert "[qemu] " in message.split("console lines:", 1)[1]  # QEMU's own complaint is shown
    saved = json.loads((tmp_path / "work" / "boot.json").read_text())
    assert saved["status"] == "fail" and saved["last_lines"]
    assert "QEMU printed an error" in saved["hint"]


@pytest.mark.skipif(not shutil.which("qemu-system-x86_64") or not shutil.which("gcc") or not shutil.which("mke2fs"),
                    reason="needs qemu-system-x86_64, gcc and mke2fs")
def test_a_failing_alternate_boot_fails_the_target_and_leaves_no_pass_standing(tmp_path):
    kbuild = tmp_path / "kbuild"
    (kbuild / "arch/x86/boot").mkdir(parents=True)
    (kbuild / "vmlinux").write_bytes(b"\x7fELF" + b"\0" * 4096)  # an ELF with no PVH entry
    (kbuild / "arch/x86/boot/bzImage").write_bytes(b"\0" * 4096)
    work = tmp_path / "work"
    work.mkdir()
    (work / "boot.json").write_text('{"status": "pass"}')  # an earlier run's verdict
    target = with_boot(target_named("x86_64-micro"), kernel="arch/x86/boot/bzImage",
                       also={"pvh": {"kernel": "vmlinux", "why": "a VMM that loads vmlinux"}})
    with pytest.raises(VerificationFailed, match="did not finish booting"):
        boot.boot_target(target, kbuild, work, {}, logging.getLogger("t"), accel="tcg")
    assert not (work / "boot.json").exists()
    alternate = json.loads((work / "also-pvh" / "boot.json").read_text())
    assert alternate["status"] == "fail" and alternate["kernel"] == str(kbuild / "vmlinux")
    assert not (work / "console.log").exists()  # the main boot never started


def real_kbuild() -> Path:
    value = os.environ.get(KBUILD_ENV)
    if not value:
        pytest.skip(f"set {KBUILD_ENV} to an x86_64-micro kbuild dir (with arch/x86/boot/bzImage) to boot a real kernel")
    kbuild = Path(value)
    if not (kbuild / "arch/x86/boot/bzImage").is_file() or not (kbuild / "vmlinux").is_file():
        pytest.fail(f"{KBUILD_ENV}={value} has no arch/x86/boot/bzImage and vmlinux; point it at a built kbuild dir")
    for tool in ("qemu-system-x86_64", "gcc", "mke2fs"):
        if not shutil.which(tool):
            pytest.fail(f"{KBUILD_ENV} is set but {tool} is missing, so the real boot cannot run")
    return kbuild


def requested_for(target: Target, kbuild: Path) -> dict:
    release = (kbuild / "include/config/kernel.release").read_text().strip()
    version = version_key(re.match(r"\d+\.\d+(\.\d+)?", release)[0])
    fragments = load_fragments(resolve_list(REPO / "fragments", target.list_name), REPO)
    return requested_options(fragments, target.arch.name, version)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["rootfs", "initramfs"])
def test_real_x86_64_micro_kernel_boots_and_passes_every_probe(tmp_path, mode):
    kbuild = real_kbuild()
    target = target_named("x86_64-micro")
    result = boot.boot_target(target, kbuild, tmp_path, requested_for(target, kbuild), logging.getLogger("t"), mode=mode)
    assert result.status == "pass"
    saved = json.loads((tmp_path / "boot.json").read_text())
    assert [p["name"] for p in saved["probes"]] == [p.name for p in TABLE.for_target(target)]
    assert all(p["status"] == "pass" for p in saved["probes"])
    metrics = saved["metrics"]
    assert 0 < metrics["time_to_init_ms"] < metrics["host_wall_to_exit_ms"]
    # the command line the guest really ran with, and the CPU vulnerability state it left
    assert saved["guest"]["cmdline"].startswith(target.cmdline) and "ktailor_probes=" in saved["guest"]["cmdline"]
    assert saved["guest"]["vulnerabilities"] and saved["guest"]["undone_hardening"] == {}
    assert metrics["guest_used_kib"] > 0 and metrics["kernel_memory_kib"]["kernel code"] > 0
    assert 0 < metrics["boot_reserved_kib"] < metrics["kernel_overhead_kib"] < metrics["guest_ram_kib"]
    assert saved["sizes"]["vmlinux"] > 0


@pytest.mark.slow
def test_real_kernel_alternate_boot_runs_every_probe_too(tmp_path):
    """The main boot and an alternate (here: the bzImage beside micro's PVH vmlinux) both boot for real,
    and boot.json records the alternate's verdict."""
    kbuild = real_kbuild()
    target = with_boot(target_named("x86_64-micro"),
                       also={"bzimage": {"kernel": "arch/x86/boot/bzImage", "why": "a VMM that loads a bzImage"}})
    result = boot.boot_target(target, kbuild, tmp_path, requested_for(target, kbuild), logging.getLogger("t"))
    assert result.status == "pass"
    saved = json.loads((tmp_path / "boot.json").read_text())
    count = len(TABLE.for_target(target))
    assert saved["also"]["bzimage"]["status"] == "pass" and saved["also"]["bzimage"]["probes"] == count
    alternate = json.loads((tmp_path / "also-bzimage" / "boot.json").read_text())
    assert alternate["kernel"].endswith("arch/x86/boot/bzImage") and saved["kernel"].endswith("vmlinux")
    assert "also" not in alternate


@pytest.mark.slow
def test_real_kernel_missing_capabilities_are_traced_to_fragment_lines(tmp_path):
    """The micro kernel booted as if it were mini: the mini-only probes must fail and name pci.conf etc."""
    kbuild = real_kbuild()
    micro = target_named("x86_64-micro")
    as_mini = dataclasses.replace(micro, type=CATALOG.types["mini"])
    requested = requested_for(target_named("x86_64-mini"), kbuild)
    with pytest.raises(VerificationFailed) as caught:
        boot.boot_target(as_mini, kbuild, tmp_path, requested, logging.getLogger("t"))
    message = str(caught.value)
    assert "probe pci failed" in message and "requirement 'pci'" in message
    assert re.search(r"CONFIG_PCI=y at fragments/pci\.conf:\d+", message)
    assert "probe modules failed" in message and "CONFIG_MODULES is not set in the built .config" in message
    saved = json.loads((tmp_path / "boot.json").read_text())
    not_passed = {p["name"]: p["status"] for p in saved["probes"] if p["status"] != "pass"}
    # everything mini adds is missing from the micro kernel except CPU hotplug (micro has SMP + HOTPLUG_CPU);
    # pmem cannot even be attached over MMIO when QEMU has no virtio-pmem-device model: skipped, not passed
    missing = {"pci", "acpi", "modules", "module-sig-enforce", "virtio-scsi", "xfs-mount", "9p-mount", "virtiofs-mount",
               "fs-nfs", "fs-nfs4", "ipv6-lo", "vlan", "nft-table", "nft-compat", "fs-hugetlbfs", "loop-device"}
    pmem = "fail" if "virtio-pmem-device" in qemu_devices(micro.arch.qemu) else "skip"
    assert not_passed == {**dict.fromkeys(missing, "fail"), "pmem": pmem}



@pytest.mark.slow
def test_real_kernel_booted_with_a_command_line_that_undoes_hardening_fails(tmp_path):
    """The check reads the command line the guest ran with, so a VMM or cmdline that adds nokaslr is caught."""
    kbuild = real_kbuild()
    target = target_named("x86_64-micro")
    undone = dataclasses.replace(target, cmdline=f"{target.cmdline} nokaslr mitigations=off")
    with pytest.raises(VerificationFailed) as caught:
        boot.boot_target(undone, kbuild, tmp_path, requested_for(target, kbuild), logging.getLogger("t"))
    message = str(caught.value)
    assert "undoes hardening it was built with: nokaslr switches off kernel address space layout" in message
    assert "mitigations=off switches off every CPU vulnerability mitigation" in message
    saved = json.loads((tmp_path / "boot.json").read_text())
    assert saved["status"] == "fail" and set(saved["guest"]["undone_hardening"]) == {"nokaslr", "mitigations=off"}
    assert all(state != "" for state in saved["guest"]["vulnerabilities"].values())


@pytest.mark.slow
def test_real_kernel_whose_command_line_leaves_a_hardening_off_fails_its_runtime_probe(tmp_path):
    """A VMM command line without `page_alloc.shuffle=1`: the .config has SHUFFLE_PAGE_ALLOCATOR=y, but the
    booted kernel does not shuffle, and the runtime probe says so, naming the fragment line."""
    kbuild = real_kbuild()
    target = target_named("x86_64-micro")
    assert "page_alloc.shuffle=1" in target.cmdline.split()
    forgotten = dataclasses.replace(target, cmdline=" ".join(w for w in target.cmdline.split() if w != "page_alloc.shuffle=1"))
    with pytest.raises(VerificationFailed) as caught:
        boot.boot_target(forgotten, kbuild, tmp_path, requested_for(target, kbuild), logging.getLogger("t"))
    message = str(caught.value)
    assert 'probe page-shuffle failed (/sys/module/page_alloc/parameters/shuffle is "N", not "Y")' in message
    assert re.search(r"CONFIG_SHUFFLE_PAGE_ALLOCATOR=y at fragments/hardening\.conf:\d+", message)
    saved = json.loads((tmp_path / "boot.json").read_text())
    assert [p["name"] for p in saved["probes"] if p["status"] != "pass"] == ["page-shuffle"]


@pytest.mark.slow
def test_real_kernel_boots_from_the_qemu_config_an_install_carries(tmp_path):
    """The qemu.sh every install carries, run as a user would (ROOTFS=…), starts the real kernel: it mounts the
    user's disk as / and runs its init (ours, asked for no probes: it says so and reboots, which ends QEMU)."""
    from ktailor.guest.vmconfig import VmShape, vm_config

    kbuild = real_kbuild()
    target = target_named("x86_64-micro")
    init = guest_files.build_init(target, GUEST / "init.c", tmp_path)
    rootfs = guest_files.make_rootfs(init, tmp_path / "rootfs.ext4")
    khz = qemu.host_tsc_khz()
    shape = VmShape(accel="tcg", extra_cmdline="init=/init" + (f" tsc_early_khz={khz}" if khz else ""))
    script = tmp_path / "qemu.sh"
    script.write_text(vm_config(target, "qemu", kbuild, shape, "test"))
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=120, check=False,
                          env=os.environ | {"ROOTFS": str(rootfs)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "KTAILOR-WARN no probes requested" in done.stdout, done.stdout[-3000:]
