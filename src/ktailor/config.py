"""The config stage: allnoconfig + the target's fragments through the kernel's own kconfig.

`make allnoconfig KCONFIG_ALLCONFIG=<merged fragments>` in the target's own build dir decides the
final .config; then every requested option is checked against it (audit.py). A target whose
request did not land fails here with a table, and its .config is moved aside so no build uses it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from .audit import AuditResult, Difference, compare, mark_expected, render_table
from .dotconfig import final_value, parse_dotconfig, same_value
from .errors import ConfigAuditFailed, EnvironmentProblem
from .fragments import Option, fragment_text
from .progress import info, warn
from .toolchain import make_argv


def run_allnoconfig(srctree: Path, kbuild: Path, variables: dict[str, str], fragment_file: Path, log: Path) -> Path:
    """Produce kbuild/.config; raise with the log's tail when kconfig itself fails."""
    kbuild.mkdir(parents=True, exist_ok=True)
    argv = make_argv(srctree, kbuild, variables | {"KCONFIG_ALLCONFIG": str(fragment_file)}, ["allnoconfig"])
    with log.open("w") as handle:
        handle.write("$ " + " ".join(argv) + "\n")
        handle.flush()
        result = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise EnvironmentProblem(f"kconfig failed (make allnoconfig, exit {result.returncode}); full log: {log}\n{tail}")
    return kbuild / ".config"


def write_fragment_file(path: Path, requested: dict[str, Option]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    temp.write_text(fragment_text(requested))
    temp.replace(path)
    return path


def explain_differences(differences: list[Difference], srctree: Path, kbuild: Path, kernel_arch: str,
                        cross_compile: str) -> str:
    """Fill in why each difference happened; returns 'kconfiglib' or 'unavailable: <why>'."""
    if not differences:
        return "not needed"
    try:
        from . import explain
    except ImportError as exc:  # kconfiglib missing
        return f"unavailable: {exc}"
    try:
        kconf = explain.load_kconfig(srctree, kernel_arch, cross_compile, kbuild / ".config")
    except explain.ExplainUnavailable as exc:
        for difference in differences:
            difference.explanation = f"explanation unavailable for this kernel version: {exc}"
        return f"unavailable: {exc}"
    for difference in differences:
        try:
            result = explain.explain(kconf, difference.symbol, difference.requested, difference.final,
                                     srctree=srctree, kernel_arch=kernel_arch)
        except Exception as exc:  # noqa: BLE001 - the explainer must never hide the difference itself
            difference.explanation = f"explanation unavailable: {type(exc).__name__}: {exc}"
            continue
        difference.explanation = result.detail
        difference.explanation_kind = result.kind
        difference.fix = [line for line in result.fix if line.startswith("CONFIG_") or line.startswith("# CONFIG_")]
    return "kconfiglib"


def verify_fixes(differences: list[Difference], requested: dict[str, Option], srctree: Path,
                 variables: dict[str, str]) -> None:
    """Re-run kconfig with every proposed fix applied and record which requests then land."""
    fixes = [line for d in differences for line in d.fix]
    if not fixes:
        return
    with tempfile.TemporaryDirectory(prefix="ktailor-fixcheck-") as scratch:
        work = Path(scratch)
        fragment = work / "fragment.config"
        fragment.write_text(fragment_text(requested) + "".join(f"{line}\n" for line in fixes))
        try:
            config = run_allnoconfig(srctree, work / "kbuild", variables, fragment, work / "config.log")
        except EnvironmentProblem:
            return
        values = parse_dotconfig(config)
    for difference in differences:
        if difference.fix:
            difference.fix_verified = same_value(difference.requested, final_value(values, difference.symbol))


def configure_target(*, name: str, version: str, version_tuple: tuple[int, int, int], arch: str, kernel_arch: str,
                     cross_compile: str, srctree: Path, target_dir: Path, kbuild: Path, requested: dict[str, Option],
                     expected_drops: list, variables: dict[str, str]) -> AuditResult:
    target_dir.mkdir(parents=True, exist_ok=True)
    fragment_file = write_fragment_file(target_dir / "fragment.config", requested)
    rejected = kbuild / ".config.rejected"
    rejected.unlink(missing_ok=True)
    info(f"config {name} ({version}): allnoconfig + {len(requested)} requested options")
    config = run_allnoconfig(srctree, kbuild, variables, fragment_file, target_dir / "config.log")
    differences = compare(requested, parse_dotconfig(config))
    stale = mark_expected(differences, expected_drops, arch, version_tuple)
    explainer = explain_differences(differences, srctree, kbuild, kernel_arch, cross_compile)
    verify_fixes([d for d in differences if not d.expected], requested, srctree, variables)
    result = AuditResult(name, version, len(requested), differences, [f"CONFIG_{d.symbol}" for d in stale], explainer)
    result.write(target_dir / "audit.json")
    for drop in stale:
        warn(f"fragments/expected-drops.toml:{drop.line}: CONFIG_{drop.symbol} is declared as an expected drop for "
             f"{name} on {version}, but it lands now; narrow the entry's versions/arch or delete it.")
    expected = [d for d in differences if d.expected]
    if expected:
        info(f"{name}: {len(expected)} expected drop(s), as declared:\n{render_table(expected)}")
    if not result.passed:
        shutil.move(config, rejected)
        raise ConfigAuditFailed(
            f"{name} ({version}): {len(result.unexpected)} requested option(s) did not land in the final .config "
            f"(rejected config kept at {rejected}; details in {target_dir / 'audit.json'}):\n"
            f"{render_table(result.unexpected)}"
        )
    return result
