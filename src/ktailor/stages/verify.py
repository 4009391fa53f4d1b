"""The verify stage: the audit passed, each image is what it claims, and fits its budget.

Checks by content, not by name: vmlinux is an ELF file for the right machine, bzImage carries the
x86 boot protocol header ("HdrS" at 0x202), an arm64 Image the "ARM\\x64" magic at 0x38.
Writes verify.json (read by install and by the boot stage).
"""

from __future__ import annotations

import struct
from pathlib import Path

from ktailor.core.errors import VerificationFailed
from ktailor.core.progress import info
from ktailor.core.records import read_optional, read_report, write_json_atomically
from ktailor.farm.modules import check_archive
from ktailor.project import tables
from ktailor.security.evidence import fingerprint
from ktailor.stages.base import Context, Stage

ELF_MACHINES = {"x86": 62, "arm64": 183}  # EM_X86_64, EM_AARCH64


def check_elf(path: Path, kernel_arch: str) -> str | None:
    head = _head(path, 20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return "is not an ELF file (no \\x7fELF magic)"
    if head[4] != 2:
        return "is a 32-bit ELF file; a 64-bit kernel was expected (is CONFIG_64BIT set?)"
    machine = struct.unpack_from("<H", head, 18)[0]
    if kernel_arch in ELF_MACHINES and machine != ELF_MACHINES[kernel_arch]:
        return f"is an ELF file for machine {machine}, not {kernel_arch} ({ELF_MACHINES[kernel_arch]})"
    return None


def check_bzimage(path: Path, kernel_arch: str) -> str | None:
    head = _head(path, 0x210)
    if len(head) < 0x206 or head[0x1FE:0x200] != b"\x55\xaa" or head[0x202:0x206] != b"HdrS":
        return "is not a bzImage (no 0x55AA boot signature and 'HdrS' header at 0x202)"
    return None


def check_arm64_image(path: Path, kernel_arch: str) -> str | None:
    head = _head(path, 64)
    if len(head) < 64 or head[0x38:0x3C] != b"ARM\x64":
        return "is not an arm64 Image (no 'ARM\\x64' magic at offset 0x38)"
    return None


CHECKS = {"elf": check_elf, "bzimage": check_bzimage, "arm64-image": check_arm64_image, "modules": check_archive}


def _head(path: Path, size: int) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def verify_target(*, name: str, version: str, kernel_arch: str, kbuild: Path, images: dict[str, str],
                  budget: dict[str, int], audit_file: Path, out: Path, hardening: dict | None = None,
                  must_stay: dict | None = None) -> dict:
    """`hardening`: the hardening audit of the .config (hardening.py); an unwaived failing check fails.
    `must_stay`: {"file", "checked", "missing": [MustStay…]} (configdiff.must_stay_missing): every entry of
    fragments/must-stay.toml this kernel has but the .config leaves off fails, whoever compares with what."""
    out.unlink(missing_ok=True)  # a verdict that crashed half-way must not leave the last one standing
    problems: list[str] = []
    audit = read_report(audit_file, "config") if audit_file.is_file() else {"status": "missing"}
    # Hashes first: the evidence names the files this verdict is about, whatever they turn out to be.
    evidence = fingerprint({Path(relative).name: kbuild / relative for relative in images}, kbuild / ".config", audit_file)
    if audit.get("status") == "passed" and audit.get("config_sha256") != evidence["config"]:
        problems.append(f"{kbuild / '.config'} is not the .config the audit passed (edited after `doit config`); "
                        "run `doit config` again")
    if audit.get("status") != "passed":
        problems.append(f"the config audit did not pass (status {audit.get('status')}; see {audit_file})")
    artifacts = {}
    for relative, kind in images.items():
        path = kbuild / relative
        entry: dict = {"path": str(path), "kind": kind}
        if not path.is_file():
            problems.append(f"{relative} was not built (expected at {path})")
            entry["status"] = "missing"
        else:
            size = path.stat().st_size
            limit = budget[path.name]
            entry.update(size=size, budget=limit)
            wrong = CHECKS[kind](path, kernel_arch)
            if wrong:
                problems.append(f"{relative} {wrong}")
            if size > limit:
                problems.append(f"{relative} is {size:,} bytes, over its budget of {limit:,} "
                                f"(targets.toml [target.{name}] size_budget); trim the fragments or raise the budget")
            entry["status"] = "ok" if not wrong and size <= limit else "failed"
        artifacts[Path(relative).name] = entry
    for check in (hardening or {}).get("failing", []):
        problems.append(f"hardening check CONFIG_{check['symbol']} wants {check['want']} but is {check['value']} "
                        f"({check['why']}; {check['source']}): request it in a fragment, or waive it for {name} with a "
                        "reason in fragments/hardening-checks.toml")
    for entry in (must_stay or {}).get("missing", []):
        problems.append(f"CONFIG_{entry.symbol} is off but must stay on ({must_stay['file']}:{entry.line}: {entry.why}); "
                        "request it in a fragment")
    report = {"target": name, "version": version, "status": "passed" if not problems else "failed",
              "audit": audit.get("status"), "artifacts": artifacts, "problems": problems, "evidence": evidence,
              "hardening": None if hardening is None else
              {key: hardening[key] for key in ("score", "passed", "applicable", "waived")},
              "must_stay": None if must_stay is None else
              {"checked": must_stay["checked"], "missing": [entry.symbol for entry in must_stay["missing"]]}}
    write_json_atomically(out, report)
    if problems:
        raise VerificationFailed(f"{name} ({version}) failed verification: " + "; ".join(problems) + f". Details: {out}")
    return report


# --- the stage ---------------------------------------------------------------------------------
def run(ctx: Context) -> None:
    row, files = ctx.the_target, ctx.files
    report = verify_target(name=row.name, version=ctx.the_kernel.version, kernel_arch=row.arch.kernel_arch,
                           kbuild=files.kbuild, images=row.images, budget=row.size_budget,
                           audit_file=files.audit, out=files.verify, hardening=hardening_of(ctx),
                           must_stay=must_stay_of(ctx))
    sizes = ", ".join(f"{name} {entry['size'] / 1e6:.2f} MB (budget {entry['budget'] / 1e6:.1f})"
                      for name, entry in report["artifacts"].items())
    score = f"; hardening {report['hardening']['score']}" if report.get("hardening") else ""
    info(f"verified {ctx.label}: {sizes}{score}")


def hardening_of(ctx: Context) -> dict | None:
    """The hardening audit of the target's final .config, or None without a checks file."""
    from ktailor.kconfig.dotconfig import parse_dotconfig
    from ktailor.kconfig.hardening import CHECKS_FILE, audit_hardening, load_checks

    path = ctx.project.fragments_dir / CHECKS_FILE
    if not path.is_file():
        return None
    return audit_hardening(load_checks(path), parse_dotconfig(ctx.files.config),
                           arch=ctx.the_target.arch.name, version=ctx.the_kernel.version_tuple, target=ctx.the_target.name)


def must_stay_of(ctx: Context) -> dict | None:
    """The must-stay entries for this arch that the final .config leaves off although the kernel has them,
    or None without a must-stay file. Symbols come from the source tree (from .config once it is cleaned)."""
    from ktailor.kconfig.configdiff import MUST_STAY_FILE, load_must_stay, must_stay_missing
    from ktailor.kconfig.dotconfig import parse_dotconfig
    from ktailor.kconfig.kconfig_tree import tree_symbols

    path = ctx.project.fragments_dir / MUST_STAY_FILE
    if not path.is_file():
        return None
    arch = ctx.the_target.arch.name
    entries = [entry for entry in load_must_stay(path) if entry.arch in (None, arch)]
    config = parse_dotconfig(ctx.files.config)
    tree = ctx.source_tree
    symbols = tree_symbols(tree) if (tree / "Kconfig").is_file() else frozenset(config)
    return {"file": str(ctx.project.display(path)), "checked": len(entries),
            "missing": must_stay_missing(config, entries, arch, symbols)}


def verdict_state(ctx: Context) -> dict:
    """The entries of the shared tables a target's verdicts (report, verify) are judged by."""
    return {"must_stay": tables.must_stay_state(ctx.project.fragments_dir, ctx.the_target),
            "hardening": tables.hardening_state(ctx.project.fragments_dir, ctx.the_target, ctx.the_kernel.version_tuple)}


def has_evidence(task, values, report_json: str) -> bool:  # doit uptodate callable
    """A verify.json written before reports carried file hashes (an older ktailor) is out of date: the
    install gate would refuse it, so the stage reruns instead of telling the user to run it by hand."""
    return bool((read_optional(Path(report_json)) or {}).get("evidence"))


STAGE = Stage(
    "verify", "check each target's audit, image formats and size budget; writes verify.json",
    doc=lambda ctx: f"check {ctx.label}: audit passed, image formats, size budget",
    run=run,
    inputs=lambda ctx: [*ctx.files.images.values(), ctx.files.audit],
    outputs=lambda ctx: [ctx.files.verify],
    state=lambda ctx: {"budget": ctx.the_target.size_budget, "images": ctx.the_target.images} | verdict_state(ctx),
    check=lambda ctx: (has_evidence, [str(ctx.files.verify)]),
)
