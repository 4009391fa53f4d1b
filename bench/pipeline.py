"""Pipeline benchmarks: no-op `doit` time, extract vs GNU tar, and the rerun set after one edit.

Run after a complete `doit` (with the same KTAILOR_* environment):
    .venv/bin/python bench/pipeline.py [--fragment fragments/crypto-luks.conf] [--tarball PATH]
It prints one table; nothing is left changed (the edited fragment is restored).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOIT = [sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), "-d", str(ROOT)]


def noop_seconds(runs: int) -> tuple[float, float, bool]:
    """Median and max wall time of a `doit` run with nothing to do; and whether make ran."""
    times, make_ran = [], False
    for _ in range(runs):
        started = time.perf_counter()
        result = subprocess.run(DOIT, capture_output=True, text=True, cwd=ROOT)
        times.append(time.perf_counter() - started)
        if result.returncode != 0:
            sys.exit(f"doit failed; run a full `doit` first:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        make_ran |= bool(re.search(r"^\.  ", result.stdout, re.MULTILINE))
    return statistics.median(times), max(times), make_ran


def extract_ratio(tarball: Path, rounds: int = 2, scratch_parent: Path = ROOT / "build") -> tuple[float, float]:
    """Best of `rounds` for GNU tar and for ktailor, alternating (filesystem state swings a lot here)."""
    from ktailor.stages.extract import extract_tarball

    tar_times, our_times = [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(dir=scratch_parent) as scratch:
            work = Path(scratch)
            started = time.perf_counter()
            extract_tarball(tarball, work / "ours" / "linux")
            our_times.append(time.perf_counter() - started)
            shutil.rmtree(work / "ours")
            (work / "tar").mkdir()
            started = time.perf_counter()
            subprocess.run(["tar", "-xJf", str(tarball), "-C", str(work / "tar")], check=True)
            tar_times.append(time.perf_counter() - started)
    return min(tar_times), min(our_times)


def rerun_set(fragment: Path) -> list[str]:
    """Tasks `doit list --status` marks stale after appending a comment to `fragment` (restored afterwards).

    Only config (and lint/report) go stale directly; build and verify follow only if the .config
    produced then differs, which a comment edit does not do.
    """
    original = fragment.read_bytes()
    try:
        fragment.write_bytes(original + b"\n# benchmark edit\n")
        listing = subprocess.run([*DOIT[:-2], "list", "--all", "--status", "-d", str(ROOT)], capture_output=True,
                                 text=True, cwd=ROOT).stdout
    finally:
        fragment.write_bytes(original)
        os.utime(fragment)
    return [line.split()[1] for line in listing.splitlines() if line.startswith("R ") and ":" in line.split()[1]
            and not line.split()[1].startswith(("install", "report"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fragment", type=Path, action="append",
                        help="fragment to touch (repeatable; default: one shared by all, one micro-only, one aarch64-only)")
    parser.add_argument("--tarball", type=Path, help="a .tar.xz to time extraction on (default: skip)")
    args = parser.parse_args()
    median, worst, make_ran = noop_seconds(args.runs)
    print(f"| no-op `doit` (whole matrix), median of {args.runs} | {median:.2f} s (max {worst:.2f} s) |")
    print(f"| make ran during no-op | {'YES (bug)' if make_ran else 'no'} |")
    if args.tarball:
        tar_seconds, ours = extract_ratio(args.tarball)
        print(f"| extract {args.tarball.name}: GNU tar -xJf / ktailor | {tar_seconds:.1f} s / {ours:.1f} s "
              f"(ratio {ours / tar_seconds:.2f}) |")
    for fragment in args.fragment or [ROOT / "fragments" / name for name in
                                      ("crypto-luks.conf", "mmio-only.conf", "aarch64.conf")]:
        reruns = rerun_set(fragment.resolve())
        print(f"| stale after editing {fragment.resolve().relative_to(ROOT)} | {', '.join(reruns) or 'nothing'} |")


if __name__ == "__main__":
    main()
