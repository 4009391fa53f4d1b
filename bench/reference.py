"""Benchmark ktailor's x86_64-micro against the guest kernels people use today, and against the floor.

Builds, from the same extracted source, Firecracker's CI config (`make olddefconfig` on
firecracker/microvm-kernel-ci-x86_64-6.1.config), Kuasar's micro x86_64 fragments (allnoconfig +
`scripts/kconfig/merge_config.sh -r -n`) and the floor kernel (`tinyconfig` + bench/floor/x86_64.config: the
least that boots the check), then boots each N times interleaved with ktailor's built x86_64-micro under
identical QEMU flags (the target's boot data, bzImage for all) and the same static init, and prints one
Markdown table with every figure also as a ratio to the floor's.

    .venv/bin/python bench/reference.py --version 6.1.192 [--boots 10] [--anchors DIR]
    .venv/bin/python bench/reference.py --version 5.10.262
    .venv/bin/python bench/reference.py --hardening-only   # configure only: the three hardening scores

Firecracker's and Kuasar's files come from bench/anchors.toml: pinned upstream commits, fetched into
<cache>/anchors/ and checked by sha256 (KTAILOR_ANCHORS_URL serves them from a mirror); `--anchors DIR` uses
a local copy of the same layout instead. Run it after `doit build:x86_64-micro[@version]` (same KTAILOR_*
environment). Reference builds are cached in build/bench/<version>/ and reused.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from anchors import check_local, fetch_anchors  # noqa: E402

from ktailor.core.errors import VerificationFailed  # noqa: E402
from ktailor.core.records import read_report  # noqa: E402
from ktailor.guest.vm import StderrLog  # noqa: E402
from ktailor.kconfig.dotconfig import parse_dotconfig  # noqa: E402
from ktailor.kconfig.hardening import CHECKS_FILE, audit_hardening, load_checks  # noqa: E402
from ktailor.project.layout import Project  # noqa: E402
from ktailor.stages.boot import boot_target  # noqa: E402

IMAGES = ["arch/x86/boot/bzImage", "vmlinux"]
FLOOR = Path(__file__).resolve().parent / "floor" / "x86_64.config"


def make(srctree: Path, kbuild: Path, *goals: str, jobs: int = 2, env: dict | None = None) -> None:
    argv = ["make", "-C", str(srctree), f"O={kbuild}", "ARCH=x86", f"-j{jobs}", *goals]
    with (kbuild / "bench-build.log").open("a") as log:
        subprocess.run(argv, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)


def configure_firecracker(srctree: Path, kbuild: Path, anchors: Path) -> None:
    shutil.copy(anchors / "firecracker" / "microvm-kernel-ci-x86_64-6.1.config", kbuild / ".config")
    make(srctree, kbuild, "olddefconfig")


def merge_config(srctree: Path, kbuild: Path, *arguments: str) -> None:
    """The kernel's scripts/kconfig/merge_config.sh with output in kbuild, logged like make."""
    with (kbuild / "bench-build.log").open("a") as log:
        subprocess.run([str(srctree / "scripts/kconfig/merge_config.sh"), *arguments], check=True, cwd=srctree,
                       env=dict(os.environ, ARCH="x86"), stdout=log, stderr=subprocess.STDOUT)


def configure_kuasar(srctree: Path, kbuild: Path, anchors: Path) -> None:
    base = anchors / "kuasar"
    fragments = [str(base / line.strip()) for line in (base / "micro-kernel-x86_64.list").read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
    merge_config(srctree, kbuild, "-r", "-n", "-O", str(kbuild), *fragments)


def configure_floor(srctree: Path, kbuild: Path, anchors: Path) -> None:
    make(srctree, kbuild, "tinyconfig")
    merge_config(srctree, kbuild, "-m", "-O", str(kbuild), str(kbuild / ".config"), str(FLOOR))
    make(srctree, kbuild, "olddefconfig")


REFERENCES = {  # name → how its .config is made from the same source tree
    "Firecracker CI config": ("firecracker", configure_firecracker),
    "Kuasar micro fragments": ("kuasar", configure_kuasar),
    "floor (tinyconfig + boot minimum)": ("floor", configure_floor),
}


def prepare(srctree: Path, kbuild: Path, anchors: Path, configure, *, build: bool) -> Path:
    """A reference kernel's build dir: configured (once), and built too unless only its .config is wanted."""
    kbuild.mkdir(parents=True, exist_ok=True)
    if not (kbuild / ".config").is_file() or not (kbuild / ".config.configured").is_file():
        configure(srctree, kbuild, anchors)
        (kbuild / ".config.configured").touch()
    if build and not (kbuild / IMAGES[0]).is_file():
        make(srctree, kbuild, "bzImage", "vmlinux")
    return kbuild


def anchors_dir(args, project: Project) -> Path:
    if args.anchors is None:
        return fetch_anchors(project.cache_dir, project.env)
    for problem in check_local(args.anchors):
        print(f"W: {problem}: the figures are not those of the pinned reference", file=sys.stderr)
    return args.anchors.resolve()  # the references are configured with the source tree as cwd


def boot_once(target, kbuild: Path, workdir: Path) -> dict:
    with contextlib.suppress(VerificationFailed):  # the references fail some probes; boot.json is still written
        boot_target(target, kbuild, workdir, {}, StderrLog())
    return read_report(workdir / Project.BOOT_REPORT, "boot")


def hardening_score(kbuild: Path, version: tuple[int, int, int]) -> dict:
    """ktailor's hardening checks over a kernel's .config, without any target's waivers (the same bar for all)."""
    result = audit_hardening(load_checks(ROOT / "fragments" / CHECKS_FILE), parse_dotconfig(kbuild / ".config"),
                             arch="x86_64", version=version, target=None)
    return {"score": result["score"], "passed": result["passed"], "failing": [r["symbol"] for r in result["failing"]]}


def summarise(name: str, kbuild: Path, boots: list[dict], images: tuple[str, str] = (IMAGES[0], IMAGES[1])) -> dict:
    """`images`: (the compressed or boot image, the ELF vmlinux) inside kbuild."""
    times = [b["metrics"]["time_to_init_ms"] for b in boots if b["metrics"].get("time_to_init_ms") is not None]
    used = [b["metrics"]["guest_used_kib"] for b in boots if b["metrics"].get("guest_used_kib")]

    def median_mib(key: str) -> float | None:
        values = [b["metrics"][key] for b in boots if b["metrics"].get(key)]
        return statistics.median(values) / 1024 if values else None

    probes = boots[-1]["probes"]
    return {
        "kernel": name,
        "bzImage_mb": (kbuild / images[0]).stat().st_size / 1e6,
        "vmlinux_mb": (kbuild / images[1]).stat().st_size / 1e6,
        "init_ms": (statistics.median(times), min(times), max(times)) if times else None,
        "used_mib": statistics.median(used) / 1024 if used else None,
        "reserved_mib": median_mib("boot_reserved_kib"),  # guest RAM − MemTotal
        "overhead_mib": median_mib("kernel_overhead_kib"),  # guest RAM − MemAvailable − init's RSS (Kuasar's figure)
        "probes": f"{sum(p['status'] == 'pass' for p in probes)}/{len(probes)}",
        "failed": [p["name"] for p in probes if p["status"] != "pass"],
    }


def times_floor(value: float | None, floor: float | None) -> str:
    return f" ({value / floor:.2f}×)" if value and floor else ""


def print_hardening_only(kernel, kernels: dict[str, Path], bench_dir: Path) -> None:
    """The hardening audit alone: every kernel's .config scored by the same checks, no builds or boots."""
    rows = {name: hardening_score(kbuild, kernel.version_tuple) for name, kbuild in kernels.items()}
    print(f"Linux {kernel.version}, x86_64: ktailor's hardening checks (fragments/{CHECKS_FILE}) over each "
          "kernel's .config, no waivers\n")
    print("| kernel | checks passed | failing |")
    print("|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['score']} | {', '.join(row['failing']) or '—'} |")
    (bench_dir / "hardening.json").write_text(json.dumps(rows, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", help="kernel version in versions.toml (default: the default kernel)")
    parser.add_argument("--boots", type=int, default=10)
    parser.add_argument("--anchors", type=Path, help="a local copy of the reference files (default: fetch the pinned ones)")
    parser.add_argument("--hardening-only", action="store_true",
                        help="only configure the references and print the hardening scores (needs `doit config:x86_64-micro`)")
    args = parser.parse_args()

    project = Project.from_env(ROOT)
    kernel = project.versions.get_or_default(args.version)
    target = project.catalog.target("x86_64-micro")
    # identical QEMU flags for all three: the micro target's boot data, booting the bzImage
    target = dataclasses.replace(target, boot=target.boot | {"kernel": IMAGES[0]})
    srctree = project.source_tree(kernel)
    bench_dir = project.build_dir / "bench" / kernel.version
    anchors = anchors_dir(args, project)
    ours = project.artifacts(kernel, target).kbuild
    if not (ours / ".config").is_file():
        raise SystemExit(f"E: {ours / '.config'} does not exist: run `doit config:x86_64-micro` (same KTAILOR_* "
                         "environment) first.")
    kernels = {"ktailor x86_64-micro": ours} | {
        name: prepare(srctree, bench_dir / directory, anchors, configure, build=not args.hardening_only)
        for name, (directory, configure) in REFERENCES.items()}
    if args.hardening_only:
        print_hardening_only(kernel, kernels, bench_dir)
        return
    # One difference in QEMU flags, forced by the kernels: Firecracker's 6.1 config discovers virtio-mmio
    # devices through ACPI (VIRTIO_MMIO_CMDLINE_DEVICES is off), so its microvm keeps QEMU's ACPI tables on.
    machines = {"Firecracker CI config": target.boot["machine"].replace(",acpi=off", "")}
    boots: dict[str, list[dict]] = {name: [] for name in kernels}
    for round_number in range(args.boots):
        for name, kbuild in kernels.items():  # interleaved: machine noise hits every kernel alike
            workdir = bench_dir / "boots" / name.split()[0].lower()
            row = dataclasses.replace(target, boot=target.boot | {"machine": machines.get(name, target.boot["machine"])})
            boots[name].append(boot_once(row, kbuild, workdir))
        print(f"round {round_number + 1}/{args.boots} done", file=sys.stderr)
    rows = [summarise(name, kbuild, boots[name]) | {"hardening": hardening_score(kbuild, kernel.version_tuple)}
            for name, kbuild in kernels.items()]
    accel = boots["ktailor x86_64-micro"][-1]["accel"]
    print(f"Linux {kernel.version}, x86_64, QEMU microvm under {accel.upper()}, {args.boots} interleaved boots each\n")
    floor = rows[-1]
    print("| kernel | bzImage (× floor) | vmlinux | time-to-init median [min–max] (× floor) | used memory at init (× floor) "
          "| reserved at boot (× floor) | kernel memory overhead (× floor) | probes passed "
          "| hardening checks passed (no waivers) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        timing = "n/a" if row["init_ms"] is None else "{:.0f} ms [{:.0f}–{:.0f}]".format(*row["init_ms"])
        timing += times_floor(row["init_ms"] and row["init_ms"][0], floor["init_ms"] and floor["init_ms"][0])
        used = "n/a" if row["used_mib"] is None else f"{row['used_mib']:.1f} MiB"
        used += times_floor(row["used_mib"], floor["used_mib"])
        failed = f" (fails: {', '.join(row['failed'])})" if row["failed"] else ""
        memory = " | ".join("n/a" if row[key] is None else f"{row[key]:.1f} MiB{times_floor(row[key], floor[key])}"
                            for key in ("reserved_mib", "overhead_mib"))
        print(f"| {row['kernel']} | {row['bzImage_mb']:.2f} MB{times_floor(row['bzImage_mb'], floor['bzImage_mb'])} | "
              f"{row['vmlinux_mb']:.1f} MB | {timing} | {used} | {memory} | {row['probes']}{failed} | "
              f"{row['hardening']['score']} |")
    (bench_dir / "reference.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
