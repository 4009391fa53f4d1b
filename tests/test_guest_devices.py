"""The host-side devices some guest probes need (guest_devices.py), with the real tools: mkfs.xfs, QEMU's
device list and its QMP socket, virtiofsd; and how the boot plan records a device the host cannot attach."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ktailor.core.errors import InputError
from ktailor.guest import guest_devices, probes, qemu
from ktailor.project.targets import load_catalog

REPO = Path(__file__).resolve().parents[1]
CATALOG = load_catalog(REPO / "targets.toml")


def context(tmp_path: Path, qemu: str = "qemu-system-x86_64", suffix: str = "pci", machine: str = "q35") -> guest_devices.Context:
    files, sockets = tmp_path / "guest", tmp_path / "s"
    files.mkdir(parents=True, exist_ok=True)
    sockets.mkdir(parents=True, exist_ok=True)
    return guest_devices.Context(qemu, suffix, machine, 512, files, sockets)


def test_scsi_disk_is_a_real_xfs_image_on_virtio_scsi(tmp_path):
    with guest_devices.attach(["scsi-disk"], context(tmp_path)) as attached:
        assert not attached.unavailable, attached.unavailable
        image = tmp_path / "guest" / "xfs.img"
        assert image.read_bytes()[:4] == b"XFSB"  # the XFS superblock magic mkfs.xfs wrote
        assert image.stat().st_blocks * 512 < image.stat().st_size  # sparse: 300 MB apparent, little on disk
        assert "virtio-scsi-pci,id=ktailor-scsi" in attached.args
        assert f"id=ktailor-xfs,file={image},format=raw,if=none,readonly=on" in attached.args


def test_9p_share_holds_the_token_init_is_told(tmp_path):
    with guest_devices.attach(["9p", "9p"], context(tmp_path)) as attached:  # asked twice, attached once
        assert attached.args.count("-fsdev") == 1
        token = attached.words[0].removeprefix("ktailor_9p_token=")
        assert (tmp_path / "guest" / "share-9p" / "token").read_text() == token and len(token) == 16


def test_a_device_qemu_lacks_is_unavailable_with_the_reason(tmp_path):
    ctx = context(tmp_path, qemu="qemu-system-aarch64", machine="virt")
    with guest_devices.attach(["pmem", "second-cpu"], ctx) as attached:
        if "virtio-pmem-pci" in guest_devices.qemu_devices("qemu-system-aarch64"):
            assert not attached.unavailable and "virtio-pmem-pci,memdev=ktailor-pmem,id=ktailor-vpmem" in attached.args
        else:  # Debian 12's QEMU 7.2: arm64 virt has no virtio-pmem
            assert attached.unavailable == {"pmem": "qemu-system-aarch64 has no virtio-pmem-pci device model (QEMU 8.1 "
                                                    "added it for arm64 virt; x86 has had it since 4.1)"}
        assert attached.smp == 2
    with guest_devices.attach(["pmem"], context(tmp_path / "x", qemu="/nonexistent/qemu")) as attached:
        assert "pmem" in attached.unavailable


def test_pmem_region_and_its_memory_slots(tmp_path):
    with guest_devices.attach(["pmem"], context(tmp_path)) as attached:
        assert attached.memory_options == ",slots=2,maxmem=1536M"
        assert (tmp_path / "guest" / "pmem.img").stat().st_size == guest_devices.PMEM_SIZE_MIB * 1024 * 1024


def test_ctrl_alt_del_goes_through_a_real_qemu_qmp_socket(tmp_path):
    ctx = context(tmp_path, machine="microvm,rtc=on,acpi=off", suffix="device")
    with guest_devices.attach(["i8042"], ctx) as attached:
        assert attached.args[:2] == ["-device", "i8042"]  # microvm has no keyboard controller of its own
        argv = ["qemu-system-x86_64", "-M", "microvm", "-accel", "tcg", "-S", "-nodefaults", "-display", "none",
                "-monitor", "none", "-serial", "none", *attached.args]
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as qemu:
            try:
                deadline = time.monotonic() + 20
                while not (tmp_path / "s" / "qmp.sock").exists() and qemu.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert qemu.poll() is None, qemu.stderr.read().decode()
                attached.on_await["cad"]()  # QMP send-key ctrl-alt-delete: raises on a QMP error
                with pytest.raises(OSError):
                    guest_devices.send_keys(tmp_path / "s" / "qmp.sock", ("no-such-key",))
            finally:
                qemu.kill()
    with guest_devices.attach(["i8042"], context(tmp_path / "q")) as attached:
        assert "-device" not in attached.args  # q35 has its i8042 built in


@pytest.mark.skipif(os.geteuid() != 0, reason="QEMU's C virtiofsd runs only as root")
def test_virtiofsd_runs_for_the_with_block_only(tmp_path):
    with guest_devices.attach(["virtiofs"], context(tmp_path)) as attached:
        if "virtiofs" in attached.unavailable:
            assert "virtiofsd" in attached.unavailable["virtiofs"] or "vhost-user-fs" in attached.unavailable["virtiofs"]
            pytest.skip(attached.unavailable["virtiofs"])
        sock = tmp_path / "s" / "virtiofs.sock"
        assert sock.exists() and attached.shared_memory
        daemons = subprocess.run(["pgrep", "-f", f"virtiofsd.*{sock}"], capture_output=True, text=True).stdout.split()
        assert daemons
    for _ in range(50):
        if not subprocess.run(["pgrep", "-f", f"virtiofsd.*{sock}"], capture_output=True).stdout:
            break
        time.sleep(0.1)
    else:
        pytest.fail("virtiofsd still runs after the with-block")


def test_probe_table_refuses_a_device_the_boot_stage_cannot_attach(tmp_path):
    table = tmp_path / "probes.toml"
    table.write_text('[[probe]]\nname = "x"\nrequirement = "r"\nsymbols = ["A"]\ntypes = ["mini"]\ndevice = "floppy"\n')
    with pytest.raises(InputError, match=r"probes.toml:6: .*device 'floppy'.*use one of 9p, i8042, pmem"):
        probes.load_probe_table(table)


@pytest.mark.skipif(not shutil.which("aarch64-linux-gnu-gcc"), reason="the aarch64 cross compiler builds the guest init")
def test_boot_plan_leaves_an_unattachable_probe_out_of_the_guest_and_says_why(tmp_path):
    target = CATALOG.target("aarch64-mini")
    kbuild = tmp_path / "kbuild"
    (kbuild / "arch/arm64/boot").mkdir(parents=True)
    (kbuild / "arch/arm64/boot/Image").write_bytes(b"not booted here")
    with contextlib.ExitStack() as stack:
        plan = qemu.plan_boot(target, kbuild, tmp_path / "work", stack, accel="tcg")
        cmdline = plan.argv[plan.argv.index("-append") + 1]
        wanted = cmdline.split("ktailor_probes=")[1].split()[0].split(",")
        assert "virtio-scsi" in wanted and "cpu-hotplug" in wanted
        assert plan.argv[plan.argv.index("-smp") + 1] == "2"
        if "virtio-pmem-pci" not in guest_devices.qemu_devices(target.arch.qemu):
            assert "pmem" not in wanted and "virtio-pmem-pci" in plan.skipped["pmem"]
        for name in plan.skipped:
            assert name not in wanted


@pytest.mark.skipif(not shutil.which(guest_devices.VSOCK_BACKEND), reason="vhost-device-vsock is not installed "
                    "(scripts/setup installs it; Debian 12 gets sid's package)")
def test_vsock_backend_runs_vhost_device_vsock_for_the_length_of_the_block(tmp_path):
    with guest_devices.attach(["vsock"], context(tmp_path, suffix="device", machine="microvm")) as attached:
        assert not attached.unavailable, attached.unavailable
        assert attached.shared_memory  # vhost-user: the backend maps guest RAM
        assert attached.words == ["ktailor_vsock_cid=3"]
        assert "vhost-user-vsock-device,chardev=ktailor-vsock" in attached.args
        socket_path = tmp_path / "s" / "vsock-vhu.sock"
        assert socket_path.is_socket()
        running = subprocess.run(["pgrep", "-f", f"vhost-device-vsock --guest-cid 3 --socket {socket_path}"],
                                 capture_output=True, text=True, check=False).stdout.split()
        assert running
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in running) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in running)


def test_without_a_vsock_backend_the_vsock_device_is_unavailable_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no vhost-device-vsock on this PATH
    with guest_devices.attach(["vsock"], context(tmp_path, suffix="device", machine="microvm")) as attached:
        assert "apt-get install vhost-device-vsock" in attached.unavailable["vsock"]
        assert not attached.args
