"""Boot several builds of one target side by side: image sizes, time-to-init and memory, interleaved.

    .venv/bin/python bench/boots.py --target x86_64-micro before=/path/to/kbuild after=build/6.1.192/x86_64-micro/kbuild

For before/after measurements of a fragment change (the hardening group's cost in the README was measured
so): each kbuild dir needs its .config and images; every build boots under the target's own QEMU flags and
probes, N times, round-robin so machine noise hits each alike.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reference import boot_once, summarise

from ktailor.project.layout import Project

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="x86_64-micro")
    parser.add_argument("--boots", type=int, default=7)
    parser.add_argument("builds", nargs="+", metavar="NAME=KBUILD")
    args = parser.parse_args()
    target = Project.from_env(ROOT).catalog.target(args.target)
    builds = {}
    for spec in args.builds:
        name, sep, path = spec.partition("=")
        if not sep or not (Path(path) / ".config").is_file():
            sys.exit(f"{spec}: write NAME=KBUILD, a build dir with its .config and images")
        builds[name] = Path(path)
    boots: dict[str, list[dict]] = {name: [] for name in builds}
    for number in range(args.boots):
        for name, kbuild in builds.items():
            boots[name].append(boot_once(target, kbuild, Path(kbuild).parent / f"bench-boot-{name}"))
        print(f"round {number + 1}/{args.boots} done", file=sys.stderr)
    image = next(p for p in target.arch.images if Path(p).name != "vmlinux")  # bzImage / Image
    print(f"{args.target}, {args.boots} interleaved boots each, {boots[next(iter(builds))][-1]['accel'].upper()}\n")
    print(f"| build | {Path(image).name} | time-to-init median [min–max] | used memory at init | reserved at boot "
          "| kernel memory overhead | probes passed |")
    print("|---|---|---|---|---|---|---|")
    for name, kbuild in builds.items():
        row = summarise(name, kbuild, boots[name], (image, "vmlinux"))
        size = (kbuild / image).stat().st_size
        timing = "n/a" if row["init_ms"] is None else "{:.0f} ms [{:.0f}–{:.0f}]".format(*row["init_ms"])
        used, reserved, overhead = ("n/a" if row[key] is None else f"{row[key]:.2f} MiB"
                                    for key in ("used_mib", "reserved_mib", "overhead_mib"))
        print(f"| {name} | {size:,} B | {timing} | {used} | {reserved} | {overhead} | {row['probes']} |")


if __name__ == "__main__":
    main()
