"""The verify stage: the audit passed, each image is what it claims, and fits its budget.

Checks by content, not by name: vmlinux is an ELF file for the right machine, bzImage carries the
x86 boot protocol header ("HdrS" at 0x202), an arm64 Image the "ARM\\x64" magic at 0x38.
Writes verify.json (read by install and by the boot stage).
"""

from __future__ import annotations

import struct
from pathlib import Path

from .errors import VerificationFailed
from .evidence import fingerprint
from .modules import check_archive
from .records import read_report, write_json_atomically

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
