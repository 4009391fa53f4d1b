"""Evidence bound to files: what each check judged, by sha256, and the install gate that re-checks it.

The config audit records the sha256 of the .config it audited; verify.json and boot.json record
the sha256 of every image, of the .config and (verify) of the audit they judged. Install recomputes
every hash and refuses on any mismatch, so an image rebuilt after its checks, a .config edited by
hand, or an old "pass" left behind by a boot that crashed can never be installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ktailor.core.errors import VerificationFailed
from ktailor.core.records import read_optional, read_report, sha256_of

SKIP_BOOT_ENV = "KTAILOR_SKIP_BOOT"  # farms without QEMU: recorded as "skipped", which install refuses by default
ALLOW_UNBOOTED_ENV = "KTAILOR_ALLOW_UNBOOTED"  # =1: install kernels whose boot was skipped (never a failed one)
SKIP_ACCEPT_ENV = "KTAILOR_SKIP_ACCEPT"  # farms without the acceptance tools: "skipped", which install refuses by default
ALLOW_UNACCEPTED_ENV = "KTAILOR_ALLOW_UNACCEPTED"  # =1: install kernels whose acceptance was skipped (never a failed one)


def _yes(env: Mapping[str, str], variable: str) -> bool:
    return env.get(variable, "") not in ("", "0", "no", "false")


def allow_unbooted(env: Mapping[str, str]) -> bool:
    return _yes(env, ALLOW_UNBOOTED_ENV)


def allow_unaccepted(env: Mapping[str, str]) -> bool:
    return _yes(env, ALLOW_UNACCEPTED_ENV)


def accept_skip_asked(env: Mapping[str, str]) -> bool:
    """Acceptance is skipped on purpose: asked for, or the boot it follows is skipped."""
    return _yes(env, SKIP_ACCEPT_ENV) or bool(env.get(SKIP_BOOT_ENV))


def status_of(path: Path, missing: str = "not reached") -> str:
    """The `status` a stage's result records, or `missing` when there is no readable result."""
    data = read_optional(path)
    return missing if data is None else str(data.get("status", "unknown"))


def hash_or_missing(path: Path) -> str:
    return sha256_of(path) if path.is_file() else "missing"


def fingerprint(images: Mapping[str, Path], config: Path, audit: Path | None = None) -> dict:
    """The sha256 of each image, of the .config and (when given) of audit.json."""
    found: dict = {"images": {name: hash_or_missing(path) for name, path in images.items()},
                   "config": hash_or_missing(config)}
    if audit is not None:
        found["audit"] = hash_or_missing(audit)
    return found


def mismatches(recorded: Mapping | None, current: Mapping) -> list[str]:
    """What differs between the evidence a check recorded and the files as they are now."""
    if not recorded:
        return ["it recorded no file hashes (written by an older ktailor)"]
    problems = []
    for name, digest in current.get("images", {}).items():
        if recorded.get("images", {}).get(name) != digest:
            problems.append(f"{name} changed since it was checked")
    if recorded.get("config") != current.get("config"):
        problems.append(".config changed since it was checked")
    if "audit" in recorded and recorded.get("audit") != current.get("audit"):
        problems.append("audit.json changed since it was checked")
    return problems


def check_install(*, images: Mapping[str, Path], config: Path, audit: Path, verify: Path, boot: Path,
                  unbooted_ok: bool, rerun: str, accept: Path | None = None, unaccepted_ok: bool = False) -> dict:
    """The install gate: the audit passed on this .config, verify, boot and (given `accept`) acceptance
    passed on these exact files. Returns {"verify", "boot", "accept", "evidence"} for the manifest; raises
    VerificationFailed otherwise. A skipped acceptance passes with `unaccepted_ok`, or when it was skipped
    because the boot was and `unbooted_ok` allows that."""
    audit_report = read_report(audit, "config")
    if audit_report.get("status") != "passed":
        raise VerificationFailed(f"refusing to install: the config audit did not pass (see {audit}).")
    current = fingerprint(images, config, audit)
    if audit_report.get("config_sha256") != current["config"]:
        raise VerificationFailed(f"refusing to install: {config} is not the .config the audit passed (edited after "
                                 f"`doit config`, e.g. by menuconfig). Run `{rerun}` to regenerate, audit and check it.")
    verified = read_report(verify, "verify")
    if verified.get("status") != "passed":
        raise VerificationFailed(f"refusing to install: verification failed ({'; '.join(verified.get('problems', []))}).")
    if problems := mismatches(verified.get("evidence"), current):
        raise VerificationFailed(f"refusing to install: verify.json does not vouch for these files ({'; '.join(problems)}). "
                                 f"Run `{rerun}` to check the files as they are now.")
    booted = read_report(boot, "boot")
    status = booted.get("status")
    if status == "skipped":
        if not unbooted_ok:
            raise VerificationFailed(f"refusing to install: the kernel was not boot-verified ({booted.get('reason')}). "
                                     f"Fix that and run `{rerun}`, or set {ALLOW_UNBOOTED_ENV}=1 to install kernels "
                                     "whose boot test was skipped.")
    elif status != "pass":
        raise VerificationFailed(f"refusing to install: boot verification {status} "
                                 f"({booted.get('message', boot)}).")
    boot_current = {key: value for key, value in current.items() if key != "audit"}
    if problems := mismatches(booted.get("evidence"), boot_current):
        raise VerificationFailed(f"refusing to install: boot.json does not vouch for these files ({'; '.join(problems)}). "
                                 f"Run `{rerun}` to boot the files as they are now.")
    accepted = None if accept is None else _check_accept(accept, boot_current, booted, rerun.replace("boot:", "accept:"),
                                                         unbooted_ok=unbooted_ok, unaccepted_ok=unaccepted_ok)
    return {"verify": verified, "boot": booted, "accept": accepted, "evidence": current}


def _check_accept(accept: Path, current: dict, booted: dict, rerun: str, *, unbooted_ok: bool, unaccepted_ok: bool) -> dict:
    accepted = read_report(accept, "accept")
    status = accepted.get("status")
    if status == "skipped":
        if not (unaccepted_ok or (booted.get("status") == "skipped" and unbooted_ok)):
            raise VerificationFailed(f"refusing to install: the kernel was not accepted with real userspace "
                                     f"({accepted.get('reason')}). Fix that and run `{rerun}`, or set "
                                     f"{ALLOW_UNACCEPTED_ENV}=1 to install kernels whose acceptance was skipped.")
    elif status != "pass":
        raise VerificationFailed(f"refusing to install: acceptance {status} ({accepted.get('message', accept)}).")
    if problems := mismatches(accepted.get("evidence"), current):
        raise VerificationFailed(f"refusing to install: accept.json does not vouch for these files ({'; '.join(problems)}). "
                                 f"Run `{rerun}` to accept the files as they are now.")
    return accepted
