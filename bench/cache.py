"""Compile cache, distcc and extraction, measured in one run and printed as ratios to a clean build.

    .venv/bin/python bench/cache.py --old 6.1.187 --new 6.1.192 [--target x86_64-micro] [--work DIR]

Both versions must be in the versions file (KTAILOR_VERSIONS or versions.toml; `python -m ktailor.sources.mirror`
writes one for local tarballs: Debian's archive keeps older linux-source-6.1 releases, a real stable
update pair). Every build is a real `doit build:` in its own build dir; the make time comes from build.json:

1. clean: the new release, no compile cache (KTAILOR_CCACHE=0) — the baseline;
2. cold: the old release into an empty ccache (what last night's build left in the cache);
3. point-release bump: the new release with that warm cache (goal <= 0.3x clean);
4. second identical build: the new release again, another build dir, warm cache (goal <= 0.15x);
5. distcc: the new release, no cache, over two distccd daemons started on 127.0.0.1 (on one 2-core machine
   it cannot be faster; the point is that it works and is measured);
6. extraction: ktailor's extract vs GNU tar on the new tarball (goal <= 1.2x).
The point-release bump is also judged against the best any compile cache can do for this pair (goal <= 1.10x):
only the objects whose inputs changed between the two trees must compile again — ccache's misses in the bump,
since those inputs are its key (in depend mode, ktailor's default, the source, the headers kbuild's -MMD lists and
the arguments; preprocessor mode keys on the preprocessed text and misses a few fewer: 1,106 against 1,156 of ~1,200
objects for 6.1.187 → 6.1.192, a bound 3 % lower) — and what no compile cache removes (link, compression, make's
walk) is the second identical build's time. So the bound is again + (clean − again) × misses / (hits + misses).
Builds 1, 3, 4 and 5 must give byte-identical images; the table says whether they did.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pipeline import extract_ratio  # noqa: E402

from ktailor.core.records import read_report  # noqa: E402
from ktailor.project.layout import Project  # noqa: E402

DOIT = [sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), "-d", str(ROOT)]
GOALS = {"bump": 0.3, "again": 0.15, "extract": 1.2, "bound": 1.10}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def distccd_daemons(count: int, log_dir: Path):
    """`count` distccd daemons on 127.0.0.1; yields the DISTCC_HOSTS value naming them."""
    if not shutil.which("distccd"):
        sys.exit("distccd is not installed: apt-get install distcc")
    processes, hosts = [], []
    try:
        for number in range(count):
            port = free_port()
            log = (log_dir / f"distccd-{number}.log").open("w")
            processes.append(subprocess.Popen(["distccd", "--no-detach", "--daemon", "--allow", "127.0.0.1", "--listen",
                                               "127.0.0.1", "--port", str(port), "--jobs", "2", "--log-stderr"],
                                              stdout=log, stderr=subprocess.STDOUT))
            hosts.append(f"127.0.0.1:{port}/2")
        time.sleep(1)
        yield " ".join(hosts)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


def write_versions(project: Project, old: str, new: str, target: str, path: Path) -> None:
    kernels = {k.version: k for k in project.versions.kernels}
    missing = [v for v in (old, new) if v not in kernels]
    if missing:
        sys.exit(f"{project.versions_path} does not list {', '.join(missing)}; add them (python -m ktailor.sources.mirror writes "
                 "a versions file for local tarballs) or point KTAILOR_VERSIONS at one that does.")
    lines = [f'mirror = "{kernels[new].mirror}"', f'default = "{new}"']
    for version in (old, new):
        lines += ["", "[[kernel]]", f'version = "{version}"', f'sha256 = "{kernels[version].sha256}"', f'targets = ["{target}"]']
    path.write_text("\n".join(lines) + "\n")


def build(name: str, task: str, work: Path, env: dict[str, str]) -> dict:
    """One real `doit build:` in work/<name>; returns its build.json plus the images' sha256."""
    build_dir = work / name
    shutil.rmtree(build_dir, ignore_errors=True)
    run_env = os.environ | {"KTAILOR_BUILD_DIR": str(build_dir), "KTAILOR_QUIET": "1"} | env
    print(f"I: {name}: doit {task} (log: {build_dir}/…/build.log)", file=sys.stderr, flush=True)
    result = subprocess.run([*DOIT, task], cwd=ROOT, env=run_env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{name}: doit {task} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    project = Project(ROOT, run_env)
    target, _, version = task.removeprefix("build:").partition("@")
    kernel = project.versions.get_or_default(version)
    files = project.artifacts(kernel, project.catalog.target(target))
    record = read_report(files.build_json, "build")
    record["images"] = {image: hashlib.sha256(path.read_bytes()).hexdigest() for image, path in files.images.items()}
    return record


def perfect_cache_bound(clean_s: float, again_s: float, hits: int, misses: int) -> float:
    """Seconds a build of the new release would take if every object whose inputs (ccache's key) are unchanged since
    the old release came from a cache for free and the rest compiled as fast as in the clean build."""
    compiles = hits + misses
    if compiles == 0:
        return again_s
    return again_s + max(clean_s - again_s, 0.0) * misses / compiles


def verdict(ratio: float, goal: float | None) -> str:
    return "" if goal is None else ("meets goal" if ratio <= goal else "MISSES goal") + f" ≤ {goal}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="the older point release (its build warms the cache)")
    parser.add_argument("--new", required=True, help="the newer point release of the same series")
    parser.add_argument("--target", default="x86_64-micro")
    parser.add_argument("--work", type=Path, help="where the builds go (default: <build dir>/bench/cache)")
    args = parser.parse_args()
    project = Project.from_env(ROOT)
    work = (args.work or project.build_dir / "bench" / "cache").resolve()
    work.mkdir(parents=True, exist_ok=True)
    versions = work / "versions.toml"
    write_versions(project, args.old, args.new, args.target, versions)
    ccache_dir = work / "ccache"
    shutil.rmtree(ccache_dir, ignore_errors=True)
    common = {"KTAILOR_VERSIONS": str(versions), "KTAILOR_CCACHE_DIR": str(ccache_dir), "KTAILOR_SKIP_BOOT": "1"}
    new_task, old_task = f"build:{args.target}", f"build:{args.target}@{args.old}"

    runs = {"clean": build("clean", new_task, work, common | {"KTAILOR_CCACHE": "0"})}
    runs["cold"] = build("cold", old_task, work, common)
    runs["bump"] = build("bump", new_task, work, common)
    runs["again"] = build("again", new_task, work, common)
    with distccd_daemons(2, work) as hosts:
        runs["distcc"] = build("distcc", new_task, work, common | {"KTAILOR_CCACHE": "0", "KTAILOR_DISTCC_HOSTS": hosts})
    tar_seconds, our_seconds = extract_ratio(project.tarball(project.versions.get(args.new)), scratch_parent=work)

    clean = runs["clean"]["seconds"]
    rows = [
        ("clean build, no cache (baseline)", "clean", None),
        (f"cold cache: {args.old} into an empty ccache", "cold", None),
        (f"point-release bump {args.old} → {args.new}, warm ccache", "bump", GOALS["bump"]),
        ("second identical build, other build dir, warm ccache", "again", GOALS["again"]),
        (f"distcc over two local distccd ({hosts}), no cache", "distcc", None),
    ]
    print(f"Linux {args.old} → {args.new}, {args.target}, make -j as ktailor chose it, {os.cpu_count()} CPUs\n")
    print("| build | make seconds | ratio to clean | ccache hits/misses | engine | images = clean's |")
    print("|---|---|---|---|---|---|")
    for label, key, goal in rows:
        run = runs[key]
        cache = run.get("ccache") or {}
        counts = f"{cache.get('hits', 0)}/{cache.get('misses', 0)}" if cache else "off"
        engine = run["engine"]["compile"]
        if engine == "distcc":
            engine += " " + ", ".join(f"{host}: {n}" for host, n in run["engine"]["objects"].items())
        same = "—" if key == "cold" else ("identical" if run["images"] == runs["clean"]["images"] else "DIFFERENT")
        ratio = run["seconds"] / clean
        print(f"| {label} | {run['seconds']:.0f} | {ratio:.2f}× {verdict(ratio, goal)} | {counts} | {engine} | {same} |")
    bump_cache = runs["bump"].get("ccache") or {}
    bound = perfect_cache_bound(clean, runs["again"]["seconds"], bump_cache.get("hits", 0), bump_cache.get("misses", 0))
    ratio = runs["bump"]["seconds"] / bound
    print(f"| perfect-cache bound for {args.old} → {args.new}: {bump_cache.get('misses', 0)} of "
          f"{bump_cache.get('hits', 0) + bump_cache.get('misses', 0)} objects changed their inputs (ccache's key) | "
          f"{bound:.0f} | bump = {ratio:.2f}× the bound {verdict(ratio, GOALS['bound'])} | | | |")
    ratio = our_seconds / tar_seconds
    print(f"| extraction of linux-{args.new}.tar.xz: ktailor {our_seconds:.1f} s vs GNU tar {tar_seconds:.1f} s | | "
          f"{ratio:.2f}× {verdict(ratio, GOALS['extract'])} | | | |")
    (work / "cache.json").write_text(json.dumps({"runs": runs, "perfect_cache_bound": bound,
                                                            "extract": {"tar": tar_seconds, "ktailor": our_seconds}},
                                                indent=2) + "\n")


if __name__ == "__main__":
    main()
