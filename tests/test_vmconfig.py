"""VMM-ready configs: each checked against its VMM's documented shape; the qemu one is the boot stage's argv."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

from ktailor.core.errors import InputError
from ktailor.guest import guest_files, qemu
from ktailor.guest.vmconfig import ROOTFS_PLACEHOLDER, VmShape, install_configs, vm_config, vm_config_command
from ktailor.project.layout import Project
from ktailor.project.targets import load_catalog

REPO = Path(__file__).resolve().parents[1]
CATALOG = load_catalog(REPO / "targets.toml")
KERNELS = Path("/usr/share/ktailor/5.10.262/x86_64-micro")

# Firecracker's API schema (src/firecracker/swagger/firecracker.yaml, v1.17.0-dev): for each object of a
# --config-file we write, its properties with their types and bounds, and the required ones.
FIRECRACKER = {
    "FullVmConfiguration": ({"boot-source": "BootSource", "machine-config": "MachineConfiguration",
                             "drives": ["Drive"], "network-interfaces": ["NetworkInterface"], "vsock": "Vsock",
                             "balloon": "object", "logger": "object", "metrics": "object", "mmds-config": "object",
                             "entropy": "object", "cpu-config": "object", "pmem": "array",
                             "memory-hotplug": "object"}, set()),
    "BootSource": ({"kernel_image_path": "string", "boot_args": "string", "initrd_path": "string"},
                   {"kernel_image_path"}),
    "MachineConfiguration": ({"vcpu_count": ("integer", 1, 32), "mem_size_mib": "integer", "smt": "boolean",
                              "track_dirty_pages": "boolean", "huge_pages": "string", "cpu_template": "object"},
                             {"vcpu_count", "mem_size_mib"}),
    "Drive": ({"drive_id": "string", "is_root_device": "boolean", "is_read_only": "boolean", "path_on_host": "string",
               "partuuid": "string", "cache_type": "string", "io_engine": "string", "socket": "string",
               "rate_limiter": "object"}, {"drive_id", "is_root_device"}),
    "NetworkInterface": ({"iface_id": "string", "host_dev_name": "string", "guest_mac": "string",
                          "mtu": ("integer", 68, 65535)}, {"iface_id", "host_dev_name"}),
    "Vsock": ({"guest_cid": ("integer", 3, None), "uds_path": "string", "vsock_id": "string"}, {"guest_cid", "uds_path"}),
}
JSON_TYPES = {"string": str, "boolean": bool, "object": dict, "array": list, "integer": int}


def firecracker_problems(value, definition: str = "FullVmConfiguration", where: str = "") -> list[str]:
    properties, required = FIRECRACKER[definition]
    problems = [f"{where}: {key} is required" for key in required if key not in value]
    for key, item in value.items():
        spec = properties.get(key)
        if spec is None:
            problems.append(f"{where}.{key}: not a property of {definition}")
        elif isinstance(spec, list):
            problems += [p for i, entry in enumerate(item) for p in firecracker_problems(entry, spec[0], f"{where}.{key}[{i}]")]
        elif spec in FIRECRACKER:
            problems += firecracker_problems(item, spec, f"{where}.{key}")
        elif isinstance(spec, tuple):
            low, high = spec[1], spec[2]
            if type(item) is not int or item < low or (high is not None and item > high):
                problems.append(f"{where}.{key}: {item!r} is not an integer in [{low}, {high}]")
        elif type(item) is not JSON_TYPES[spec]:  # exact: True is no integer here
            problems.append(f"{where}.{key}: {item!r} is not a {spec}")
    return problems


# Cloud Hypervisor's command-line options (cloud-hypervisor --help) and the sub-options we use of each.
CLOUD_HYPERVISOR = {"--kernel": None, "--cmdline": None, "--disk": {"path", "readonly"}, "--cpus": {"boot", "max"},
                    "--memory": {"size", "shared", "hugepages"}, "--serial": {"tty", "off", "null", "pty"},
                    "--console": {"tty", "off", "null", "pty"}, "--net": {"tap", "mac", "ip", "mask"},
                    "--vsock": {"cid", "socket"}}


def ch_problems(argv: list[str]) -> list[str]:
    problems = [] if argv[0] == "cloud-hypervisor" else [f"{argv[0]} is not cloud-hypervisor"]
    for option, value in zip(argv[1::2], argv[2::2], strict=True):
        keys = CLOUD_HYPERVISOR.get(option, "unknown")
        if keys == "unknown":
            problems.append(f"{option} is not a Cloud Hypervisor option")
        elif keys is not None and option in ("--serial", "--console"):
            problems += [] if value in keys else [f"{option} {value}"]
        elif keys is not None:
            pairs = [part.partition("=") for part in value.split(",")]
            problems += [f"{option} {key}=" for key, sep, _ in pairs if key not in keys or not sep]
    return problems


def ch_argv(script: str) -> list[str]:
    command = script.split("exec ", 1)[1].replace("\\\n", " ")
    return shlex.split(command.replace('"$ROOTFS"', "/images/root.ext4"))


@pytest.mark.parametrize("name", sorted(CATALOG.targets), ids=str)
def test_every_target_gets_the_configs_of_its_vmms_in_their_documented_shape(name):
    target = CATALOG.targets[name]
    configs = install_configs(target, KERNELS, "5.10.262")
    assert set(configs) == ({"firecracker.json", "qemu.sh", "kata-configuration.toml"} if "micro" in name else
                            {"cloud-hypervisor.sh", "qemu.sh", "kata-configuration.toml"})
    image = KERNELS / ("vmlinux" if name.startswith("x86_64") else "Image")
    if "firecracker.json" in configs:
        config = json.loads(configs["firecracker.json"])
        assert firecracker_problems(config) == []
        assert config["boot-source"] == {"kernel_image_path": str(image), "boot_args": target.cmdline}
        assert config["drives"][0]["path_on_host"] == ROOTFS_PLACEHOLDER and config["drives"][0]["is_root_device"]
    if "cloud-hypervisor.sh" in configs:
        argv = ch_argv(configs["cloud-hypervisor.sh"])
        assert ch_problems(argv) == []
        assert argv[argv.index("--kernel") + 1] == str(image)
        assert argv[argv.index("--disk") + 1] == "path=/images/root.ext4"
        assert argv[argv.index("--cmdline") + 1] == target.cmdline + " root=/dev/vda rw"
    kata = tomllib.loads(configs["kata-configuration.toml"])["hypervisor"]
    assert set(kata) == set(target.type.kata)
    assert all(section == {"kernel": str(image), "kernel_params": target.cmdline} for section in kata.values())


def test_a_users_network_vsock_and_size_land_in_firecracker_and_cloud_hypervisor():
    shape = VmShape(rootfs="/srv/vm/root.ext4", vcpus=4, mem_mib=1024, tap="tap7", vsock_cid=42,
                    vsock_socket="/run/vm7.vsock")
    config = json.loads(vm_config(CATALOG.targets["aarch64-micro"], "firecracker", KERNELS, shape, "5.10.262"))
    assert firecracker_problems(config) == []
    assert config["machine-config"] == {"vcpu_count": 4, "mem_size_mib": 1024, "smt": False}
    assert config["network-interfaces"] == [{"iface_id": "eth0", "host_dev_name": "tap7"}]
    assert config["vsock"] == {"guest_cid": 42, "uds_path": "/run/vm7.vsock"}
    assert config["drives"][0]["path_on_host"] == "/srv/vm/root.ext4"
    argv = ch_argv(vm_config(CATALOG.targets["x86_64-mini"], "cloud-hypervisor", KERNELS, shape, "5.10.262"))
    assert ch_problems(argv) == []
    assert argv[argv.index("--net") + 1] == "tap=tap7" and argv[argv.index("--vsock") + 1] == "cid=42,socket=/run/vm7.vsock"
    assert argv[argv.index("--cpus") + 1] == "boot=4" and argv[argv.index("--memory") + 1] == "size=1024M"
    with pytest.raises(InputError, match="vcpu"):
        vm_config(CATALOG.targets["x86_64-micro"], "firecracker", KERNELS, VmShape(vcpus=64), "5.10.262")
    with pytest.raises(InputError, match="Cloud Hypervisor is PCI-only"):
        vm_config(CATALOG.targets["x86_64-micro"], "cloud-hypervisor", KERNELS, VmShape(), "5.10.262")


@pytest.mark.parametrize("name", ["x86_64-micro", "x86_64-mini", "aarch64-micro"], ids=str)
def test_the_installed_qemu_command_is_the_boot_stages_with_the_users_disk(name, tmp_path):
    target = CATALOG.targets[name]
    settings = qemu.boot_settings(target)
    script = install_configs(target, KERNELS, "5.10.262")["qemu.sh"]
    installed = shlex.split(script.split("exec ", 1)[1].replace("\\\n", " ").replace('"$ROOTFS"', "/r.img"))
    files = guest_files.GuestFiles(Path(), Path("/r.img"), Path())
    cmdline = " ".join([*qemu.vmm_cmdline_words(target, settings, accel="kvm", tsc_khz=None), "root=/dev/vda", "rw"])
    staged = qemu.build_qemu_argv(target, settings, KERNELS / Path(settings.kernel).name, files, accel="kvm",
                                  cmdline=cmdline, mode="rootfs", vsock_cid=None)
    differing = [(a, b) for a, b in zip(installed, staged, strict=True) if a != b]
    assert differing == [("id=root,file=/r.img,format=raw,if=none", "id=root,file=/r.img,format=raw,if=none,snapshot=on")]
    assert installed[installed.index("-M") + 1] == settings.machine


def test_the_scripts_ask_for_the_root_filesystem_by_name(tmp_path):
    script = tmp_path / "qemu.sh"
    script.write_text(install_configs(CATALOG.targets["x86_64-micro"], KERNELS, "5.10.262")["qemu.sh"])
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=os.environ | {"ROOTFS": ""}, check=False)
    assert done.returncode != 0 and "set ROOTFS to the root filesystem image" in done.stderr


def test_every_install_carries_them_and_vm_config_prints_one_with_the_users_paths(two_kernels):
    from test_dag import run_doit

    root = two_kernels.root
    project = Project.from_env(root)
    with pytest.raises(InputError, match=r"not installed .* run `doit install:x86_64-micro` first"):
        vm_config_command(project, target="x86_64-micro", vmm="firecracker", version=None, shape=VmShape())
    os.environ["KTAILOR_ALLOW_UNBOOTED"] = "1"  # the fake kernel cannot boot
    try:
        code, _ran, err = run_doit(root, "install:x86_64-micro")
    finally:
        del os.environ["KTAILOR_ALLOW_UNBOOTED"]
    assert code == 0, err
    project = Project.from_env(root)
    files = project.artifacts(project.versions.default, project.catalog.target("x86_64-micro"))
    installed = json.loads((files.install / "firecracker.json").read_text())
    assert installed["boot-source"]["kernel_image_path"] == str(files.install / "vmlinux")
    assert (files.install / "vmlinux").is_file() and os.access(files.install / "qemu.sh", os.X_OK)
    printed = json.loads(vm_config_command(project, target="x86_64-micro", vmm="firecracker", version=None,
                                           shape=VmShape(rootfs="/srv/root.ext4", mem_mib=128)))
    assert printed["drives"][0]["path_on_host"] == "/srv/root.ext4" and printed["machine-config"]["mem_size_mib"] == 128
    assert printed["boot-source"] == installed["boot-source"]
