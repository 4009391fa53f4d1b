"""doit actions: each loads the project, calls one stage module, and reports errors as one paragraph.

Actions are module-level functions taking plain strings so `doit -n N` can run them in worker
processes. A KtailorError becomes `E: <message>` on stderr and a failed task (return False); a
traceback only with KTAILOR_DEBUG=1.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path

from .build import build_target
from .config import configure_target, lint_target
from .configdiff import MUST_STAY_FILE, error_count, render_changes, target_drift
from .download import MIN_RATE, RATE_WINDOW, check_cached, fetch, is_verified
from .errors import KtailorError, number_setting
from .evidence import SKIP_BOOT_ENV
from .extract import extract_tarball
from .fragments import EXPECTED_DROPS, load_expected_drops, load_fragments, requested_options
from .install import install_kernel, is_current
from .layout import Project
from .progress import info, warn
from .records import read_optional, sha256_of
from .source_tree import describe, record_identity, unchanged
from .toolchain import compiler_version, jobs_from_env, make_vars, require_tools
from .verify import verify_target


def reports_errors(action: Callable[..., object]) -> Callable[..., bool]:
    @wraps(action)
    def wrapper(*args, **kwargs) -> bool:
        try:
            result = action(*args, **kwargs)
        except KtailorError as exc:
            if os.environ.get("KTAILOR_DEBUG"):
                raise
            print(f"E: {exc}", file=sys.stderr, flush=True)
            return False
        except OSError as exc:  # a full disk, a permission: the environment, said in one paragraph
            if os.environ.get("KTAILOR_DEBUG"):
                raise
            print(f"E: {action.__name__} failed: {exc.strerror or exc} ({exc.filename or 'no file named'}); free space "
                  "or fix the permissions there and run `doit` again (KTAILOR_DEBUG=1 shows the traceback).",
                  file=sys.stderr, flush=True)
            return False
        return result is not False

    return wrapper


def _load(root: str, version: str, target: str | None = None):
    project = Project.from_env(root)
    kernel = project.versions.get(version)
    return project, kernel, (project.catalog.target(target) if target else None)


def tarball_verified(task, values, tarball: str, sha256: str) -> bool:  # doit uptodate callable
    return is_verified(Path(tarball), sha256)


@reports_errors
def download(root: str, version: str) -> None:
    project, kernel, _ = _load(root, version)
    fetch(kernel.url, project.tarball(kernel), kernel.sha256,
          min_rate=_number(project.env, "KTAILOR_DOWNLOAD_MIN_RATE", MIN_RATE),
          rate_window=_number(project.env, "KTAILOR_DOWNLOAD_RATE_WINDOW", RATE_WINDOW))


def _number(env: dict[str, str], variable: str, default: float) -> float:
    return number_setting(env, variable, default,
                          f"is not a number of bytes/seconds; unset it or give e.g. {variable}={default:g}.")


@reports_errors
def extract(root: str, version: str) -> None:
    project, kernel, _ = _load(root, version)
    started = time.monotonic()
    check_cached(project.tarball(kernel), kernel.sha256)
    tree = extract_tarball(project.tarball(kernel), project.source_tree(kernel), project.patches_root / kernel.series,
                           version=kernel.version)
    info(f"extracted {kernel.tarball_name} into {project.display(tree)} in {time.monotonic() - started:.1f}s")


@reports_errors
def identify_source(root: str, version: str) -> None:
    """The `extract:` step of a source kernel: check the user's tree and record what it holds."""
    project, kernel, _ = _load(root, version)
    record = record_identity(project.source_tree(kernel), project.source_stamp(kernel))
    info(f"source of {kernel.version}{kernel.extraversion}: {project.source_tree(kernel)} ({describe(record)})")


def source_unchanged(task, values, tree: str, identity: str) -> bool:  # doit uptodate callable
    return unchanged(Path(tree), Path(identity))


@reports_errors
def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def requested_for(project: Project, kernel, target):
    fragments = load_fragments(project.fragment_paths(target), project.root)
    return requested_options(fragments, target.arch.name, kernel.version_tuple)


@reports_errors
def lint(root: str) -> None:
    from .lint import format_findings, lint_failed, lint_fragments

    project = Project.from_env(root)
    # every target's list that exists (versions.toml already insists on the lists of the kernels' targets)
    names = sorted({t.list_name for t in project.catalog.targets.values() if (project.fragments_dir / t.list_name).is_file()})
    findings = lint_fragments(project.fragments_dir, project.root, project.catalog, names)
    if findings:
        print(format_findings(findings), file=sys.stderr)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        raise lint_failed(len(errors))
    info(f"lint: {len(names)} lists, {len(list(project.fragments_dir.glob('*.conf')))} fragments, "
         f"{len(findings)} finding(s)")


def checked_make_vars(project: Project, kernel, row) -> dict[str, str]:
    """The make variables config, build and reproduce run with, once the tools they name are there."""
    variables = make_vars(row, project.env, srctree=project.source_tree(kernel), kbuild=project.artifacts(kernel, row).kbuild)
    require_tools(row, variables, project.env)
    return variables


@reports_errors
def configure(root: str, version: str, target: str) -> None:
    project, kernel, row = _load(root, version, target)
    lint_target(project.fragments_dir, project.root, project.catalog, row.list_name, kernel.version_tuple)
    variables = checked_make_vars(project, kernel, row)
    configure_target(
        name=row.name, version=kernel.version, version_tuple=kernel.version_tuple, arch=row.arch.name,
        kernel_arch=row.arch.kernel_arch, cross_compile=variables["CROSS_COMPILE"],
        srctree=project.source_tree(kernel), files=project.artifacts(kernel, row),
        requested=requested_for(project, kernel, row),
        expected_drops=load_expected_drops(project.fragments_dir / EXPECTED_DROPS), variables=variables,
        providers=providers_of(project, kernel), other_trees=other_trees(project, kernel),
    )


def providers_of(project: Project, kernel) -> dict[str, list[str]]:
    """symbol -> the targets whose fragments turn it on at this kernel version (where an option belongs)."""
    found: dict[str, list[str]] = {}
    for target in project.catalog.targets.values():
        if not (project.fragments_dir / target.list_name).is_file():
            continue
        for symbol, option in requested_for(project, kernel, target).items():
            if option.value not in ("n", ""):
                found.setdefault(symbol, []).append(target.name)
    return found


def other_trees(project: Project, kernel) -> list[tuple[str, Path]]:
    """(version, source tree) of every other kernel in versions.toml that is extracted here."""
    return [(other.version, project.source_tree(other)) for other in project.versions.kernels
            if other.version != kernel.version and (project.source_tree(other) / "Kconfig").is_file()]


@reports_errors
def build(root: str, version: str, target: str) -> None:
    project, kernel, row = _load(root, version, target)
    variables = checked_make_vars(project, kernel, row)
    build_target(srctree=project.source_tree(kernel), files=project.artifacts(kernel, row), variables=variables,
                 goals=row.make_goals, jobs=jobs_from_env(project.env),
                 label=f"{row.name} {kernel.version}", compiler=compiler_version(row, variables),
                 env=build_env(project, kernel), cache_dir=project.cache_dir, build_dir=project.build_dir)


def build_env(project: Project, kernel) -> dict[str, str]:
    """The environment of a build: a git source tree's builds are dated by its HEAD commit (an extracted
    tarball's by its newest file, extract.source_date), unless SOURCE_DATE_EPOCH says otherwise."""
    if kernel.source is None or project.env.get("SOURCE_DATE_EPOCH"):
        return project.env
    recorded = read_optional(project.source_stamp(kernel)) or {}
    stamp = recorded.get("commit_time")
    return project.env | {"SOURCE_DATE_EPOCH": str(stamp)} if isinstance(stamp, int) else project.env


@reports_errors
def ledger(root: str, version: str, target: str) -> None:
    from .ledger import build_ledger, requests_of, write_ledger

    project, kernel, row = _load(root, version, target)
    files = project.artifacts(kernel, row)
    fragments = load_fragments(project.fragment_paths(row), project.root)
    wanted = requests_of(fragments, requested_options(fragments, row.arch.name, kernel.version_tuple))
    result = build_ledger(kbuild=files.kbuild, srctree=project.source_tree(kernel), vmlinux=files.kbuild / "vmlinux",
                          requested=wanted)
    write_ledger(result, files.ledger_json, files.ledger_md, f"{row.name} {kernel.version}")
    costliest = next((o for o in result["options"] if o["option"].startswith("CONFIG_")), None)
    info(f"ledger {row.name} {kernel.version}: {100 * result['attributed_share']:.1f} % of vmlinux attributed"
         + (f"; costliest option {costliest['option']} {costliest['bytes']:,} B" if costliest else "")
         + f" ({project.display(files.ledger_md)})")


@reports_errors
def reproduce(root: str, version: str, target: str) -> None:
    from .reproduce import reproduce_target

    project, kernel, row = _load(root, version, target)
    variables = checked_make_vars(project, kernel, row)
    reproduce_target(srctree=project.source_tree(kernel), files=project.artifacts(kernel, row), variables=variables,
                     goals=row.make_goals, jobs=jobs_from_env(project.env),
                     label=f"{row.name} {kernel.version}", env=build_env(project, kernel))


@reports_errors
def verify(root: str, version: str, target: str) -> None:
    project, kernel, row = _load(root, version, target)
    files = project.artifacts(kernel, row)
    report = verify_target(name=row.name, version=kernel.version, kernel_arch=row.arch.kernel_arch,
                           kbuild=files.kbuild, images=row.images, budget=row.size_budget,
                           audit_file=files.audit, out=files.verify, hardening=hardening_of(project, kernel, row),
                           must_stay=must_stay_of(project, kernel, row))
    sizes = ", ".join(f"{name} {entry['size'] / 1e6:.2f} MB (budget {entry['budget'] / 1e6:.1f})"
                      for name, entry in report["artifacts"].items())
    score = f"; hardening {report['hardening']['score']}" if report.get("hardening") else ""
    info(f"verified {row.name} {kernel.version}: {sizes}{score}")


@reports_errors
def boot(root: str, version: str, target: str) -> None:
    from .boot import StderrLog, boot_target

    project, kernel, row = _load(root, version, target)
    files = project.artifacts(kernel, row)
    try:
        boot_target(row, files.kbuild, files.boot_dir, requested_for(project, kernel, row), StderrLog(),
                    guest_dir=project.guest_dir)
    finally:
        if files.boot.is_file() and files.config.is_file():
            write_target_report(project, kernel, row, quiet=True)  # with the observed hardening


def must_stay_of(project: Project, kernel, row) -> dict | None:
    """The must-stay entries for this arch that the final .config leaves off although the kernel has them,
    or None without a must-stay file. Symbols come from the source tree (from .config once it is cleaned)."""
    from .configdiff import load_must_stay, must_stay_missing
    from .dotconfig import parse_dotconfig
    from .explain import tree_symbols

    path = project.fragments_dir / MUST_STAY_FILE
    if not path.is_file():
        return None
    entries = [entry for entry in load_must_stay(path) if entry.arch in (None, row.arch.name)]
    config = parse_dotconfig(project.artifacts(kernel, row).config)
    tree = project.source_tree(kernel)
    symbols = tree_symbols(tree) if (tree / "Kconfig").is_file() else frozenset(config)
    return {"file": str(project.display(path)), "checked": len(entries),
            "missing": must_stay_missing(config, entries, row.arch.name, symbols)}


@reports_errors
def accept(root: str, version: str, target: str) -> None:
    from .accept import ACCEPTANCE, accept_target, load_acceptance
    from .boot import StderrLog

    project, kernel, row = _load(root, version, target)
    files = project.artifacts(kernel, row)
    accept_target(row, files.kbuild, files.accept_dir, files.accept, files.boot,
                  load_acceptance(project.guest_dir / ACCEPTANCE), requested_for(project, kernel, row), StderrLog(),
                  cache_dir=project.cache_dir, guest_dir=project.guest_dir, env=project.env)


def accept_is_settled(task, values, accept_json: str) -> bool:  # doit uptodate callable
    """A skipped acceptance reruns once the skip is no longer asked for; one without file hashes reruns."""
    from .accept import accept_settled

    return accept_settled(read_optional(Path(accept_json)), dict(os.environ))


def hardening_of(project: Project, kernel, row) -> dict | None:
    """The hardening audit of the target's final .config, or None without a checks file."""
    from .dotconfig import parse_dotconfig
    from .hardening import CHECKS_FILE, audit_hardening, load_checks

    path = project.fragments_dir / CHECKS_FILE
    if not path.is_file():
        return None
    return audit_hardening(load_checks(path), parse_dotconfig(project.artifacts(kernel, row).config),
                           arch=row.arch.name, version=kernel.version_tuple, target=row.name)


@reports_errors
def report(root: str, version: str, target: str) -> None:
    project, kernel, row = _load(root, version, target)
    write_target_report(project, kernel, row)


def write_target_report(project: Project, kernel, row, *, quiet: bool = False) -> None:
    """report.md/report.json: the report stage's, and the boot stage's again once boot.json holds the
    observed hardening (the configured / observed table)."""
    from .probes import load_probe_table
    from .report import write_report
    from .tables import PROBES

    fragments = load_fragments(project.fragment_paths(row), project.root)
    files = project.artifacts(kernel, row)
    drifts = {}
    for other in project.versions.kernels:
        if other.version != kernel.version and row.name in other.targets:
            drifted = target_drift(project, row, other.version, kernel)
            if drifted is not None:
                drifts[other.version] = drifted
    hardening = hardening_of(project, kernel, row)
    rows = write_report(target=row.name, version=kernel.version, fragments=fragments,
                        requested=requested_options(fragments, row.arch.name, kernel.version_tuple),
                        config=files.config, audit_file=files.audit, out_md=files.report_md,
                        out_json=files.report_json, drifts=drifts, hardening=hardening,
                        probes=load_probe_table(project.guest_dir / PROBES).for_target(row),
                        boot=read_optional(files.boot))
    if quiet:
        return
    landed = sum(r["status"] == "landed" for r in rows)
    if hardening:
        failing = ", ".join(r["symbol"] for r in hardening["failing"])
        info(f"hardening {row.name} {kernel.version}: {hardening['score']} checks pass, {hardening['waived']} waived"
             + (f"; failing: {failing}" if failing else ""))
    errors = sum(error_count(*pair) for pair in drifts.values())
    compared = f"; whole .config compared with {', '.join(drifts)}: {errors} must-stay loss(es)" if drifts else ""
    info(f"report {row.name} {kernel.version}: {landed}/{len(rows)} landed{compared} → "
         f"{project.display(files.report_md)}")
    for other, (changes, missing) in drifts.items():
        if error_count(changes, missing):
            warn(f"{row.name}: {other} → {kernel.version} loses what must stay:\n"
                 f"{render_changes(other, kernel.version, changes, missing)}")


@reports_errors
def install(root: str, version: str, target: str) -> None:
    project, kernel, row = _load(root, version, target)
    install_kernel(project, kernel, row)


def install_current(task, values, root: str, version: str, target: str) -> bool:  # doit uptodate callable
    """install.is_current: the one definition of "installed", shared with security-update."""
    try:
        project, kernel, row = _load(root, version, target)
        return is_current(project, kernel, row)
    except (KtailorError, OSError):
        return False


def config_matches_audit(task, values, config: str, audit: str) -> bool:  # doit uptodate callable
    """False when .config is not the file the audit judged (menuconfig or a hand edit): config reruns."""
    recorded = (read_optional(Path(audit)) or {}).get("config_sha256")
    return Path(config).is_file() and recorded == sha256_of(Path(config))


def has_evidence(task, values, report_json: str) -> bool:  # doit uptodate callable
    """A verify.json written before reports carried file hashes (an older ktailor) is out of date: the
    install gate would refuse it, so the stage reruns instead of telling the user to run it by hand."""
    return bool((read_optional(Path(report_json)) or {}).get("evidence"))


def boot_settled(task, values, boot_json: str) -> bool:  # doit uptodate callable
    """A skipped boot is never up to date unless the skip is still asked for: once QEMU is installed
    (or KTAILOR_SKIP_BOOT unset) the next run boots. A boot.json without file hashes reruns too."""
    report = read_optional(Path(boot_json)) or {}
    status = report.get("status")
    settled = status == "pass" or (status == "skipped" and bool(os.environ.get(SKIP_BOOT_ENV)))
    return settled and bool(report.get("evidence"))
