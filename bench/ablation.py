"""Measured ablation: what each requirement group of a target costs, by building the target without it.

For every requirement group of the target's fragments (the `# requirement:` of each fragment), the target
is configured and built without that group's fragments — through ktailor itself: a fragment overlay
(KTAILOR_FRAGMENTS) whose list is the target's minus those fragments, the kernel's already extracted tree as a
`source =` kernel (no extraction per variant), the same compile cache (only objects that change recompile).
A group other fragments depend on fails its config audit and is reported as such; a variant that builds is
booted N times interleaved with the full kernel under the target's QEMU flags (its probes may fail: they
test what was removed) and the table gives Δ image bytes, Δ memory and Δ time-to-init (median [min–max]).

With --options the variants are single requests instead of groups: each is the target with one option line
(or several joined by `+`, for options that only make sense together) taken out of its fragment — an overlay
copy of that fragment without the line — so the option falls back to what Kconfig gives without the request
(its default, or off). That is what one hardening option costs on its own.

    .venv/bin/python bench/ablation.py [--target x86_64-micro] [--version 5.10.262] [--boots 5] [--groups a,b]
    .venv/bin/python bench/ablation.py --options INIT_ON_FREE_DEFAULT_ON,STATIC_USERMODEHELPER+STATIC_USERMODEHELPER_PATH

Run it after `doit build:<target>[@version]` with the same KTAILOR_* environment; results go to
build/bench/<version>/ablation/<target>/ablation.json (options-ablation.json with --options) and the table to
stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from reference import boot_once  # noqa: E402

from ktailor.core.records import read_report  # noqa: E402
from ktailor.kconfig.dotconfig import parse_dotconfig  # noqa: E402
from ktailor.kconfig.fragments import load_fragments, resolve_list  # noqa: E402
from ktailor.project.layout import Project  # noqa: E402


def groups_of(project: Project, target) -> dict[str, list[Path]]:
    """requirement group -> the target's fragments that carry it, in list order."""
    paths = resolve_list(project.fragments_dir, target.list_name)
    found: dict[str, list[Path]] = {}
    for fragment, path in zip(load_fragments(paths, project.root), paths, strict=True):
        found.setdefault(fragment.requirement or "(no header)", []).append(path)
    return found


def variant_env(project: Project, kernel, target, group: str, paths: list[Path], work: Path) -> dict[str, str]:
    """A ktailor environment that builds `target` without `paths`, from the already extracted tree."""
    overlay = work / "fragments"
    overlay.mkdir(parents=True, exist_ok=True)
    kept = [p for p in resolve_list(project.fragments_dir, target.list_name) if p not in paths]
    (overlay / target.list_name).write_text(f"# {target.name} without the {group} group (bench/ablation.py)\n"
                                            + "".join(f"ktailor:{p.name}\n" for p in kept))
    return overlay_env(project, kernel, target, overlay, work)


def option_lines(project: Project, target) -> dict[str, tuple[Path, int]]:
    """symbol -> (the fragment file that requests it for this target, its line)."""
    paths = resolve_list(project.fragments_dir, target.list_name)
    return {option.symbol: (path, option.line)
            for fragment, path in zip(load_fragments(paths, project.root), paths, strict=True)
            for option in fragment.options}


def option_variant_env(project: Project, kernel, target, symbols: list[str], work: Path) -> dict[str, str]:
    """A ktailor environment that builds `target` with the lines requesting `symbols` (and their reason
    comments) taken out of overlay copies of their fragments; every other fragment is the project's."""
    where = option_lines(project, target)
    missing = [s for s in symbols if s not in where]
    if missing:
        raise SystemExit(f"E: {target.name} requests no {', '.join('CONFIG_' + s for s in missing)}; name options "
                         "its fragments set (see `invoke explain`).")
    overlay = work / "fragments"
    shutil.rmtree(overlay, ignore_errors=True)
    overlay.mkdir(parents=True)
    for path in sorted({where[s][0] for s in symbols}):
        lines = path.read_text().splitlines(keepends=True)
        drop: set[int] = set()
        for symbol in symbols:
            fragment, number = where[symbol]
            if fragment != path:
                continue
            index = number - 1
            drop.add(index)
            while index > 0 and lines[index - 1].startswith("#") and not lines[index - 1].startswith("# CONFIG_"):
                index -= 1
                drop.add(index)
        (overlay / path.name).write_text("".join(line for i, line in enumerate(lines) if i not in drop))
    return overlay_env(project, kernel, target, overlay, work)


def overlay_env(project: Project, kernel, target, overlay: Path, work: Path) -> dict[str, str]:
    versions = work / "versions.toml"
    versions.write_text(f'[[kernel]]\nsource = "{project.source_tree(kernel)}"\ntargets = ["{target.name}"]\n')
    return dict(project.env, KTAILOR_FRAGMENTS=str(overlay), KTAILOR_VERSIONS=str(versions),
                KTAILOR_BUILD_DIR=str(work / "build"), KTAILOR_QUIET="1")


def build_variant(env: dict[str, str], target, version: str, log: Path) -> tuple[bool, str]:
    done = subprocess.run([sys.executable, "-m", "doit", "-f", str(ROOT / "dodo.py"), "-d", str(ROOT),
                           f"build:{target.name}"], env=env, capture_output=True, text=True, check=False)
    log.write_text(done.stdout + done.stderr)
    if done.returncode == 0:
        return True, ""
    audit = Path(env["KTAILOR_BUILD_DIR"]) / version / target.name / "audit.json"
    return False, needed_by(audit) or next(
        (line for line in (done.stderr + done.stdout).splitlines() if line.startswith(("E:", "ERROR"))), f"see {log}")


def needed_by(audit_file: Path) -> str:
    """Why a group cannot go: the options of other fragments that stop landing, by root cause (the audit's)."""
    try:
        audit = read_report(audit_file, "config")
    except (OSError, ValueError):
        return ""
    causes = [f"{', '.join(c['members'][:4])}{' …' if len(c['members']) > 4 else ''} need "
              f"`{' '.join(c['root'].get('fix') or [c['root']['symbol']])}`"
              for c in audit.get("root_causes") or [] if c.get("root")]
    if causes:
        return "; ".join(causes)
    dropped = [d["symbol"] for d in audit.get("differences", []) if d.get("status") != "expected"]
    return f"other fragments' {', '.join(dropped[:6])} stop landing" if dropped else ""


def figures(boots: list[dict], kbuild: Path, images: list[str]) -> dict:
    def spread(key: str) -> tuple[float, float, float] | None:
        values = [b["metrics"][key] for b in boots if b.get("metrics", {}).get(key) is not None]
        return (statistics.median(values), min(values), max(values)) if values else None

    return {"images": {name: (kbuild / name).stat().st_size for name in images},
            "init_ms": spread("time_to_init_ms"), "used_kib": spread("guest_used_kib"),
            "overhead_kib": spread("kernel_overhead_kib"),
            "probes_failed": sorted({p["name"] for b in boots for p in b.get("probes", []) if p["status"] != "pass"})}


def delta(variant: tuple | None, full: tuple | None, scale: float = 1.0, unit: str = "") -> str:
    if not variant or not full:
        return "n/a"
    return (f"{(variant[0] - full[0]) / scale:+.1f}{unit} [{(variant[1] - full[0]) / scale:+.1f}–"
            f"{(variant[2] - full[0]) / scale:+.1f}]")


class Plan:
    """What one run varies: requirement groups (the default) or single option requests (--options)."""

    def __init__(self, args, project: Project, kernel, target, work: Path) -> None:
        self.work = work
        if args.options:
            where = option_lines(project, target)
            self.kind, self.record_file = "options", work / "options-ablation.json"
            self.wanted = args.options.replace("CONFIG_", "").split(",")
            self.labels = {item: ", ".join(f"{where[s][0].name}:{where[s][1]}" if s in where else "not requested"
                                           for s in item.split("+")) for item in self.wanted}
            self.environment = lambda item, directory: option_variant_env(project, kernel, target, item.split("+"),
                                                                          directory)
        else:
            groups = groups_of(project, target)
            self.kind, self.record_file = "groups", work / "ablation.json"
            self.wanted = args.groups.split(",") if args.groups else list(groups)
            self.labels = {group: ", ".join(p.name for p in groups.get(group, [])) for group in self.wanted}
            self.environment = lambda item, directory: variant_env(project, kernel, target, item, groups[item],
                                                                   directory)

    def variant_dir(self, item: str) -> Path:
        return self.work / ("options" if self.kind == "options" else "") / item.replace("/", "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="x86_64-micro")
    parser.add_argument("--version", help="kernel version in versions.toml (default: the default kernel)")
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--groups", help="comma-separated groups to measure (default: all)")
    parser.add_argument("--options", help="comma-separated options to measure one by one instead of groups "
                        "(A+B: taken out together)")
    parser.add_argument("--report", action="store_true", help="print the last run's table again (no builds or boots)")
    args = parser.parse_args()

    project = Project.from_env(ROOT)
    kernel = project.versions.get_or_default(args.version)
    target = project.catalog.target(args.target)
    full = project.artifacts(kernel, target)
    if not all(path.is_file() for path in full.images.values()):
        raise SystemExit(f"E: build {target.name} {kernel.version} first (doit build:{target.name}, same KTAILOR_* "
                         "environment): the full kernel is the baseline.")
    work = project.build_dir / "bench" / kernel.version / "ablation" / target.name
    plan = Plan(args, project, kernel, target, work)
    if args.report:  # the last run's table again, with the reasons re-read from each variant's audit
        last_boot = read_report(work / "boots" / "full" / Project.BOOT_REPORT, "boot")
        record = {"target": target.name, "version": kernel.version, "boots": args.boots,
                  "accel": last_boot.get("accel", "?")} | read_report(plan.record_file, "ablation")
        for item, row in record[plan.kind].items():
            if not row["removable"]:
                audit = plan.variant_dir(item) / "build" / kernel.version / target.name / "audit.json"
                row["why"] = needed_by(audit) or row["why"]
        print_table(record, target, plan.kind, plan.labels)
        return
    variants: dict[str, Path] = {}
    results: dict[str, dict] = {}
    for item in plan.wanted:
        env = plan.environment(item, plan.variant_dir(item))
        built, why = build_variant(env, target, kernel.version, plan.variant_dir(item) / "build.log")
        print(f"{item}: {'built' if built else 'not removable: ' + why}", file=sys.stderr)
        if built:
            variants[item] = plan.variant_dir(item) / "build" / kernel.version / target.name / "kbuild"
        else:
            results[item] = {"removable": False, "why": why}
    boots: dict[str, list[dict]] = {name: [] for name in ["full", *variants]}
    for round_number in range(args.boots):
        for name, done in boots.items():  # interleaved: machine noise hits every kernel alike
            kbuild = full.kbuild if name == "full" else variants[name]
            done.append(boot_once(target, kbuild, work / "boots" / name.replace("/", "-")))
        print(f"round {round_number + 1}/{args.boots} done", file=sys.stderr)
    base = figures(boots["full"], full.kbuild, list(target.arch.images))
    for item, kbuild in variants.items():
        results[item] = {"removable": True} | figures(boots[item], kbuild, list(target.arch.images))
        if plan.kind == "options":  # what each option fell back to without its request
            config = parse_dotconfig(kbuild / ".config")
            results[item]["without"] = {s: config.get(s, "n") for s in item.split("+")}
    record = {"target": target.name, "version": kernel.version, "boots": args.boots,
              "accel": boots["full"][-1].get("accel", "?"), "full": base, plan.kind: results}
    plan.record_file.write_text(json.dumps(record, indent=2) + "\n")
    print_table(record, target, plan.kind, plan.labels)


def print_table(record: dict, target, kind: str, labels: dict[str, str]) -> None:
    images = list(target.arch.images)
    base = record["full"]
    what = "the group" if kind == "groups" else "the option's request"
    print(f"{record['target']} on Linux {record['version']}, QEMU under {record['accel'].upper()}, {record['boots']} "
          f"interleaved boots each; Δ = without {what} − full kernel (median [min–max])\n")
    head = "group (fragments)" if kind == "groups" else "option (fragment:line) → without the request"
    print(f"| {head} | Δ {' | Δ '.join(Path(p).name for p in images)} | Δ time-to-init ms | "
          "Δ used at init KiB | Δ kernel overhead KiB | probes failing without it |")
    print("|---|" + "---|" * (len(images) + 4))
    for item, row in record[kind].items():
        fallback = " → " + ", ".join(f"{s}={v}" for s, v in row["without"].items()) if row.get("without") else ""
        name = f"{item} ({labels.get(item, '')}){fallback}"
        if not row["removable"]:
            print(f"| {name} | " + " | ".join(["—"] * (len(images) + 3)) + f" | not removable: {row['why']} |")
            continue
        sizes = " | ".join(f"{row['images'][p] - base['images'][p]:+,} B" for p in images)
        print(f"| {name} | {sizes} | {delta(row['init_ms'], base['init_ms'])} | "
              f"{delta(row['used_kib'], base['used_kib'])} | {delta(row['overhead_kib'], base['overhead_kib'])} | "
              f"{', '.join(row['probes_failed']) or '—'} |")


if __name__ == "__main__":
    main()
