"""The config stage: allnoconfig + the target's fragments through the kernel's own kconfig.

`make allnoconfig KCONFIG_ALLCONFIG=<merged fragments>` in the target's own build dir decides the
final .config; then every requested option is checked against it (audit.py). A target whose
request did not land fails here with a table, and its .config is moved aside so no build uses it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ktailor.core.errors import ConfigAuditFailed, EnvironmentProblem
from ktailor.core.progress import info, warn
from ktailor.core.records import read_optional, sha256_of
from ktailor.farm.toolchain import make_argv
from ktailor.kconfig.audit import AuditResult, Difference, compare, mark_expected, render_causes, render_table
from ktailor.kconfig.dotconfig import final_value, parse_dotconfig, same_value
from ktailor.kconfig.fragments import EXPECTED_DROPS, Option, fragment_text, load_expected_drops
from ktailor.project import tables
from ktailor.project.layout import Artifacts
from ktailor.stages.base import Context, Stage, removes


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
                        cross_compile: str, requested: dict[str, Option] | None = None,
                        providers: dict[str, list[str]] | None = None,
                        other_trees: list[tuple[str, Path]] | None = None) -> tuple[str, list]:
    """Fill in why each difference happened and group them by root cause (rootcause.Cause, for the
    unexpected ones); returns ('kconfiglib' or 'unavailable: <why>', causes)."""
    if not differences:
        return "not needed", []
    try:
        from ktailor.kconfig import explain, kconfig_tree
    except ImportError as exc:  # kconfiglib missing
        return f"unavailable: {exc}", []
    try:
        kconf = kconfig_tree.load_kconfig(srctree, kernel_arch, cross_compile, kbuild / ".config")
    except kconfig_tree.ExplainUnavailable as exc:
        for difference in differences:
            difference.explanation = f"explanation unavailable for this kernel version: {exc}"
        return f"unavailable: {exc}", []
    for difference in differences:
        try:
            result = explain.explain(kconf, difference.symbol, difference.requested, difference.final,
                                     srctree=srctree, kernel_arch=kernel_arch, target_options=requested,
                                     providers=providers, other_trees=other_trees)
        except Exception as exc:  # noqa: BLE001 - the explainer must never hide the difference itself
            difference.explanation = f"explanation unavailable: {type(exc).__name__}: {exc}"
            continue
        difference.explanation = result.detail
        difference.explanation_kind = result.kind
        difference.fix = [line for line in result.fix if line.startswith("CONFIG_") or line.startswith("# CONFIG_")]
    from ktailor.kconfig.rootcause import find_causes
    try:
        causes = find_causes(kconf, [d for d in differences if not d.expected], requested or {}, srctree)
    except Exception as exc:  # noqa: BLE001 - grouping is a help; the differences are reported regardless
        info(f"root-cause grouping unavailable: {type(exc).__name__}: {exc}")
        causes = []
    return "kconfiglib", causes


def with_fixes(requested: dict[str, Option], fixes: list[str]) -> str | None:
    """The target's own fragments plus fix lines, or None when a fix contradicts one of its requests
    (a check must run with the target's choices, not with a line that silently overrides one)."""
    extra = {}
    for line in fixes:
        symbol = line.removeprefix("# ").removeprefix("CONFIG_").split("=")[0].split(" ")[0]
        option = requested.get(symbol)
        if option is not None and option.text != line:
            return None
        if option is None:
            extra[symbol] = line
    return fragment_text(requested) + "".join(f"{line}\n" for line in extra.values())


def _final_with(text: str, srctree: Path, variables: dict[str, str]) -> dict[str, str] | None:
    with tempfile.TemporaryDirectory(prefix="ktailor-fixcheck-") as scratch:
        work = Path(scratch)
        fragment = work / "fragment.config"
        fragment.write_text(text)
        try:
            config = run_allnoconfig(srctree, work / "kbuild", variables, fragment, work / "config.log")
        except EnvironmentProblem:
            return None
        return parse_dotconfig(config)


def verify_fixes(differences: list[Difference], requested: dict[str, Option], srctree: Path,
                 variables: dict[str, str], causes: list | None = None) -> None:
    """Re-run kconfig with the target's fragments plus every proposed fix and record which requests
    then land; then the same for each root cause's one fix, counting the differences that land."""
    fixes = [line for d in differences for line in d.fix]
    text = with_fixes(requested, fixes) if fixes else None
    values = _final_with(text, srctree, variables) if text else None
    for difference in differences:
        if difference.fix and values is not None:
            difference.fix_verified = same_value(difference.requested, final_value(values, difference.symbol))
    for cause in causes or []:
        if not cause.root.fix or cause.root.conflict:
            continue
        text = with_fixes(requested, list(cause.root.fix))
        values = _final_with(text, srctree, variables) if text else None
        if values is None:
            continue
        missing = [d.symbol for d in differences if not same_value(d.requested, final_value(values, d.symbol))]
        cause.landed_with_fix = len(differences) - len(missing)
        cause.still_missing = missing


def lint_target(fragments_dir: Path, root: Path, catalog, list_name: str, version: tuple[int, int, int]) -> None:
    """Lint first (fast, no make): this target's list, at this kernel version."""
    from ktailor.stages.lint import format_findings, lint_failed, lint_fragments

    findings = [f for f in lint_fragments(fragments_dir, root, catalog, [list_name], version=version)
                if f.severity == "error"]
    if findings:
        print(format_findings(findings), file=sys.stderr)
        raise lint_failed(len(findings))


def configure_target(*, name: str, version: str, version_tuple: tuple[int, int, int], arch: str, kernel_arch: str,
                     cross_compile: str, srctree: Path, files: Artifacts, requested: dict[str, Option],
                     expected_drops: list, variables: dict[str, str], providers: dict[str, list[str]] | None = None,
                     other_trees: list[tuple[str, Path]] | None = None) -> AuditResult:
    files.dir.mkdir(parents=True, exist_ok=True)
    kbuild = files.kbuild
    fragment_file = write_fragment_file(files.fragment_config, requested)
    rejected = files.rejected_config
    rejected.unlink(missing_ok=True)
    files.audit.unlink(missing_ok=True)  # no verdict stands for a .config that is being remade
    info(f"config {name} ({version}): allnoconfig + {len(requested)} requested options")
    config = run_allnoconfig(srctree, kbuild, variables, fragment_file, files.config_log)
    differences = compare(requested, parse_dotconfig(config))
    stale = mark_expected(differences, expected_drops, arch, version_tuple)
    explainer, causes = explain_differences(differences, srctree, kbuild, kernel_arch, cross_compile, requested,
                                            providers, other_trees)
    verify_fixes([d for d in differences if not d.expected], requested, srctree, variables, causes)
    result = AuditResult(name, version, len(requested), differences, [f"CONFIG_{d.symbol}" for d in stale], explainer,
                         causes, sha256_of(config))
    result.write(files.audit)
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
            f"(rejected config kept at {rejected}; details in {files.audit}):\n"
            f"{render_causes(causes)}{render_table(result.unexpected)}"
        )
    return result


# --- the stage ---------------------------------------------------------------------------------
def run(ctx: Context) -> None:
    project, kernel, row = ctx.project, ctx.the_kernel, ctx.the_target
    lint_target(project.fragments_dir, project.root, project.catalog, row.list_name, kernel.version_tuple)
    variables = ctx.checked_make_vars()
    configure_target(
        name=row.name, version=kernel.version, version_tuple=kernel.version_tuple, arch=row.arch.name,
        kernel_arch=row.arch.kernel_arch, cross_compile=variables["CROSS_COMPILE"],
        srctree=ctx.source_tree, files=ctx.files, requested=ctx.requested(),
        expected_drops=load_expected_drops(project.fragments_dir / EXPECTED_DROPS), variables=variables,
        providers=providers_of(ctx), other_trees=other_trees(ctx),
    )


def providers_of(ctx: Context) -> dict[str, list[str]]:
    """symbol -> the targets whose fragments turn it on at this kernel version (where an option belongs)."""
    project = ctx.project
    found: dict[str, list[str]] = {}
    for target in project.catalog.targets.values():
        if not (project.fragments_dir / target.list_name).is_file():
            continue
        for symbol, option in Context(project, ctx.kernel, target).requested().items():
            if option.value not in ("n", ""):
                found.setdefault(symbol, []).append(target.name)
    return found


def other_trees(ctx: Context) -> list[tuple[str, Path]]:
    """(version, source tree) of every other kernel in versions.toml that is extracted here."""
    project = ctx.project
    return [(other.version, project.source_tree(other)) for other in project.versions.kernels
            if other.version != ctx.the_kernel.version and (project.source_tree(other) / "Kconfig").is_file()]


def config_matches_audit(task, values, config: str, audit: str) -> bool:  # doit uptodate callable
    """False when .config is not the file the audit judged (menuconfig or a hand edit): config reruns."""
    recorded = (read_optional(Path(audit)) or {}).get("config_sha256")
    return Path(config).is_file() and recorded == sha256_of(Path(config))


def _state(ctx: Context) -> dict:
    return {"version": ctx.the_kernel.version, "arch": ctx.the_target.arch.name,
            "expected_drops": tables.expected_drops_state(ctx.project.fragments_dir, ctx.the_target,
                                                          ctx.the_kernel.version_tuple)} | ctx.toolchain_state()


STAGE = Stage(
    "config", "merge each target's fragments with the kernel's kconfig and audit the result",
    doc=lambda ctx: f"allnoconfig + {ctx.the_target.list_name} for {ctx.the_target.name} on {ctx.the_kernel.version}; "
                    "audit requested vs final",
    run=run,
    inputs=lambda ctx: [ctx.source_stamp, *ctx.project.fragment_paths(ctx.the_target), *ctx.project.list_paths(ctx.the_target)],
    outputs=lambda ctx: [ctx.files.config, ctx.files.audit],
    state=_state,
    check=lambda ctx: (config_matches_audit, [str(ctx.files.config), str(ctx.files.audit)]),
    clean=lambda ctx: removes(ctx.files.dir),
)
