"""Userspace boot time per target: systemd's own figures (kernel + userspace) on the acceptance root filesystem.

    .venv/bin/python bench/userspace.py --boots 3 x86_64-micro=build/5.10.262/x86_64-micro/kbuild \\
        aarch64-micro=build/5.10.262/aarch64-micro/kbuild

Each build boots the way `doit accept` boots it (its target's machine, transport, image and command line,
the Debian root filesystem of guest/acceptance.toml, systemd as PID 1) and runs only the `systemd` workload,
N times round-robin; the table gives `systemd-analyze`'s kernel and userspace times (median [min–max]) and
the host's wall time for the whole VM, beside the boot stage's time-to-init from the build's boot.json.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from ktailor.core.records import read_optional
from ktailor.guest.vm import StderrLog
from ktailor.guest.workloads import ACCEPTANCE, load_acceptance
from ktailor.project.layout import Project
from ktailor.stages.accept import accept_target

ROOT = Path(__file__).resolve().parents[1]
SECONDS = re.compile(r"(?:(\d+)min )?([\d.]+)(ms|s)")


def seconds(text: str) -> float:
    match = SECONDS.fullmatch(text.strip())
    if not match:
        raise ValueError(text)
    value = float(match[2]) / (1000 if match[3] == "ms" else 1)
    return value + 60 * int(match[1] or 0)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s [{min(values):.2f}–{max(values):.2f}]" if values else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("builds", nargs="+", metavar="TARGET=KBUILD")
    args = parser.parse_args()
    project = Project.from_env(ROOT)
    spec = load_acceptance(project.guest_dir / ACCEPTANCE)
    spec = replace(spec, workloads=tuple(w for w in spec.workloads if w.name == "systemd"))
    builds = []
    for item in args.builds:
        name, sep, path = item.partition("=")
        if not sep or not (Path(path) / ".config").is_file():
            sys.exit(f"{item}: write TARGET=KBUILD, a build dir with its .config and images")
        builds.append((project.catalog.target(name), Path(path)))
    runs: dict[str, list[dict]] = {target.name: [] for target, _ in builds}
    for number in range(args.boots):
        for target, kbuild in builds:
            work = kbuild.parent / "bench-userspace"
            result = accept_target(target, kbuild, work, work / "accept.json", kbuild.parent / "boot" / "boot.json",
                                   spec, {}, StderrLog(), cache_dir=project.cache_dir, guest_dir=project.guest_dir,
                                   env=dict(project.env))
            runs[target.name].append(result.report)
        print(f"round {number + 1}/{args.boots} done", file=sys.stderr)
    print(f"{args.boots} boots each with systemd as PID 1 (guest/acceptance.toml root filesystem)\n")
    print("| target | time-to-init (boot stage) | systemd: kernel | systemd: userspace | whole VM (host wall) |")
    print("|---|---|---|---|---|")
    for target, kbuild in builds:
        reports = [r for r in runs[target.name] if r.get("systemd_analyze")]
        kernel = [seconds(r["systemd_analyze"]["kernel"]) for r in reports]
        user = [seconds(r["systemd_analyze"]["userspace"]) for r in reports]
        wall = [r["host_wall_s"] for r in runs[target.name] if r.get("host_wall_s")]
        booted = (read_optional(kbuild.parent / "boot" / "boot.json") or {}).get("metrics", {}).get("time_to_init_ms")
        print(f"| {target.name} | {booted or 'n/a'} ms | {spread(kernel)} | {spread(user)} | {spread(wall)} |")


if __name__ == "__main__":
    main()
