"""The boot stage: boot a built kernel in QEMU (standing in for the VMM) and prove its capabilities.

The guest boots like a production guest: root filesystem on virtio-blk, or an initramfs
(guest/guest_files.py). Its /init is guest/init.c; it runs the probes guest/probes.toml assigns to the
target's type and prints one line per result, then reboots, which ends the VM (`reboot=t` plus QEMU's
`-no-reboot`). The QEMU command comes from guest/qemu.py, the VM runs under guest/vm.py; this module
judges what the guest printed.

Writes boot.json (status pass/fail/skipped, accel, per-probe results, failed probes mapped to their
requirement and fragment:line, time-to-init, memory, image sizes) and console.log in the workdir.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktailor.core.errors import VerificationFailed
from ktailor.core.records import read_optional
from ktailor.farm.toolchain import TOOL_PACKAGES
from ktailor.guest.guest_files import GUEST_DIR, compiler_for
from ktailor.guest.probes import (
    GuestReport,
    ProbeResult,
    explain_failure,
    find_hint,
    load_cmdline_undoes,
    parse_console,
    undone_by,
)
from ktailor.guest.qemu import ALSO_KEY, Plan, alternate_boots, plan_boot
from ktailor.guest.vm import Log, StderrLog, VmRun, run_vm
from ktailor.kconfig.dotconfig import parse_dotconfig
from ktailor.kconfig.fragments import Option
from ktailor.project import tables as guest_tables
from ktailor.project.layout import Project
from ktailor.project.tables import CMDLINE_UNDOES
from ktailor.project.targets import Target
from ktailor.security.evidence import SKIP_BOOT_ENV, fingerprint
from ktailor.stages.base import Context as StageContext
from ktailor.stages.base import Stage, removes

SKIP_ENV = SKIP_BOOT_ENV  # farms without QEMU: recorded as "skipped", never as a pass
LAST_LINES = 40


@dataclass
class BootResult:
    target: str
    status: str  # pass | fail | skipped
    reason: str
    report: dict[str, Any]  # what boot.json holds
    boot_json: Path


def _write(workdir: Path, report: dict[str, Any]) -> Path:
    path = workdir / Project.BOOT_REPORT
    temp = path.with_suffix(".json.tmp")
    temp.write_text(json.dumps(report, indent=2) + "\n")
    temp.replace(path)
    return path


def _skip(target: Target, workdir: Path, reason: str, log: Log, evidence: dict) -> BootResult:
    log.warning(f"{target.name} is NOT boot-verified: {reason}")
    report = {"target": target.name, "status": "skipped", "reason": reason, "evidence": evidence}
    return BootResult(target.name, "skipped", reason, report, _write(workdir, report))


def missing_tool(target: Target, mode: str) -> str | None:
    """Why the stage cannot run here (a tool is missing), or None."""
    needs = {target.arch.qemu: target.arch.qemu_package, compiler_for(target): TOOL_PACKAGES.get(compiler_for(target), "gcc")}
    if mode == "rootfs":
        needs["mke2fs"] = "e2fsprogs"
    for tool, package in needs.items():
        if not shutil.which(tool):
            return f"{tool} is not installed; install it to boot-test kernels (Debian/Ubuntu: apt-get install {package})"
    return None


def metrics_of(guest: GuestReport, run: VmRun, memory_mib: int | None = None) -> dict[str, Any]:
    """Boot time and memory. Memory three ways: `guest_used_kib` (MemTotal − MemAvailable at init: what the
    running kernel holds beyond its image), `boot_reserved_kib` (guest RAM − MemTotal: the image, memmap,
    firmware and early allocations the kernel took before counting), and `kernel_overhead_kib` (guest RAM −
    MemAvailable − init's RSS: everything the guest costs but its workload, the way Kuasar reports it)."""
    init_at = next((t for t, line in zip(run.stamps, run.lines, strict=True) if "KTAILOR-INIT " in line), None)
    ram_kib = memory_mib * 1024 if memory_mib else None
    memory = {}
    if ram_kib and guest.mem_total_kb is not None and guest.mem_total_kb > 0:
        memory["guest_ram_kib"] = ram_kib
        memory["boot_reserved_kib"] = ram_kib - guest.mem_total_kb
        if guest.mem_available_kb is not None and guest.init_rss_kb is not None:
            memory["kernel_overhead_kib"] = ram_kib - guest.mem_available_kb - guest.init_rss_kb
    return memory | {
        "time_to_init_ms": round(guest.boottime_ns / 1e6, 1) if guest.boottime_ns is not None else None,
        "uptime_at_init_s": guest.uptime_s,
        "printk_run_init_ms": round(guest.run_init_us / 1e3, 1) if guest.run_init_us is not None else None,
        "host_wall_to_init_ms": round(init_at * 1e3) if init_at is not None else None,
        "host_wall_to_exit_ms": round(run.wall_s * 1e3),
        "guest_used_kib": guest.mem_used_kb,
        "guest_mem_total_kib": guest.mem_total_kb,
        "kernel_memory_kib": guest.kernel_memory,
    }




def undone_hardening(target: Target, guest: GuestReport, guest_dir: Path) -> tuple[dict[str, str], str | None]:
    """The words of the command line the guest ran with that switch a hardening off, and the failure they make."""
    undoes_file = guest_dir / CMDLINE_UNDOES
    undone = undone_by(guest.cmdline or "", load_cmdline_undoes(undoes_file)) if undoes_file.is_file() else {}
    if not undone:
        return undone, None
    words = "; ".join(f"{word} switches off {what}" for word, what in undone.items())
    return undone, (f"{target.name}: the kernel command line it ran with undoes hardening it was built with: {words}. "
                    f"Remove the word from [target.{target.name}] cmdline in targets.toml (or from the VMM's boot "
                    f"arguments); {undoes_file} lists the words checked.")


def probe_entries(target: Target, plan: Plan, guest: GuestReport, requested: dict[str, Option],
                  kbuild: Path) -> tuple[list[dict[str, Any]], list]:
    """boot.json's per-probe entries, and each failed probe traced back to the fragment lines behind it."""
    final = parse_dotconfig(kbuild / ".config") if (kbuild / ".config").is_file() else {}
    entries, failures = [], []
    for probe in plan.table.for_target(target):
        if probe.name in plan.skipped:  # the host could not attach its device: recorded, never counted as passed
            entries.append({"name": probe.name, "status": "skip", "detail": plan.skipped[probe.name]})
            continue
        result = guest.probes.get(probe.name, ProbeResult(probe.name, "missing", "init printed no result"))
        entry: dict[str, Any] = {"name": probe.name, "status": result.status, "detail": result.detail}
        if result.status != "pass" and guest.done:
            failure = explain_failure(probe, result, requested, final, plan.table.transport.get(plan.settings.devices, ()))
            failures.append(failure)
            entry |= failure.as_json()
        entries.append(entry)
    return entries, failures


def boot_alternates(target: Target, kbuild: Path, workdir: Path, requested: dict[str, Option], log: Log, *,
                    mode: str, accel: str | None, guest_dir: Path) -> dict[str, dict[str, Any]]:
    """Boot each [target.X.boot.also.<name>] way into workdir/also-<name>/; raise on the first failure."""
    also = {}
    for name, alternate, why in alternate_boots(target):
        log.info(f"{target.name}: also booting it as {name} ({why}).")
        result = boot_target(alternate, kbuild, workdir / f"{ALSO_KEY}-{name}", requested, log, mode=mode,
                             accel=accel, guest_dir=guest_dir)
        also[name] = {"why": why, "status": result.status, "kernel": str(kbuild / alternate.boot["kernel"]),
                      "probes": sum(p["status"] == "pass" for p in result.report.get("probes", [])),
                      "boot_json": str(result.boot_json)}
    return also


def boot_target(target: Target, kbuild: Path, workdir: Path, requested: dict[str, Option], log: Log, *,
                mode: str = "rootfs", accel: str | None = None, guest_dir: Path = GUEST_DIR) -> BootResult:
    """Boot the kernel in kbuild, run the probes, write boot.json; raise VerificationFailed on failure."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / Project.BOOT_REPORT).unlink(missing_ok=True)  # a boot that raises must not leave the last "pass" standing
    # The files this verdict is about, hashed before QEMU starts: install checks them against the files it copies.
    evidence = fingerprint({Path(relative).name: kbuild / relative for relative in target.images}, kbuild / ".config")
    if os.environ.get(SKIP_ENV):
        return _skip(target, workdir, f"{SKIP_ENV} is set: boot verification was skipped on purpose", log, evidence)
    if reason := missing_tool(target, mode):
        return _skip(target, workdir, reason, log, evidence)
    # first: a failing alternate raises before any boot.json of this target says pass
    also = boot_alternates(target, kbuild, workdir, requested, log, mode=mode, accel=accel, guest_dir=guest_dir)
    console_log = workdir / "console.log"
    with contextlib.ExitStack() as stack:
        plan = plan_boot(target, kbuild, workdir, stack, mode=mode, accel=accel, guest_dir=guest_dir)
        if plan.accel == "tcg" and accel is None:
            log.info(f"{target.name}: {plan.accel_note}.")
        run = run_vm(plan.argv, plan.settings.timeout_s, console_log, target.name, len(plan.probe_names), plan.on_await)
    guest = parse_console(run.lines)

    sizes = {Path(relative).name: (kbuild / relative).stat().st_size
             for relative in target.images if (kbuild / relative).is_file()}
    sizes |= {f"guest {path.name}": path.stat().st_size for path in (plan.files.init, plan.files.rootfs, plan.files.initramfs)}
    report: dict[str, Any] = {
        "target": target.name, "status": "pass", "mode": mode, "accel": plan.accel, "accel_note": plan.accel_note,
        "kernel": str(kbuild / plan.settings.kernel), "qemu_command": plan.argv, "console_log": str(console_log),
        "metrics": metrics_of(guest, run, plan.settings.memory_mib), "sizes": sizes, "probes": [],
        "guest_warnings": guest.warnings,
        "guest": {"cmdline": guest.cmdline, "vulnerabilities": guest.vulnerabilities}, "evidence": evidence,
    }
    if also:
        report[ALSO_KEY] = also

    problem = None
    if not guest.done:
        if run.timed_out:
            why = f"timed out after {plan.settings.timeout_s:g}s"
        elif guest.boottime_ns is None:
            why = "the VM ended before /init ran" + (f" (QEMU exit status {run.returncode})" if run.returncode else "")
        else:
            why = "the VM ended before /init finished its probes"
        hint = find_hint(plan.table.hints, run.lines, timed_out=run.timed_out)
        report |= {"hint": hint, "last_lines": run.lines[-LAST_LINES:]}
        problem = f"{target.name} did not finish booting: {why}." + (f" Hint: {hint}." if hint else "")
    elif run.timed_out:
        problem = (f"{target.name} ran every probe but the VM did not exit within {plan.settings.timeout_s:g}s: "
                   "the guest's reboot did not end it (reboot=t with QEMU -no-reboot).")

    report["probes"], failures = probe_entries(target, plan, guest, requested, kbuild)
    if failures and not problem:
        problem = (f"{target.name}: {len(failures)} of {len(plan.probe_names)} boot probes failed: "
                   + "; ".join(f.sentence(target) for f in failures) + ".")
    report["guest"]["undone_hardening"], undone_problem = undone_hardening(target, guest, guest_dir)
    problem = problem or undone_problem

    if problem:
        message = f"{problem} Full console log: {console_log}; results: {workdir / Project.BOOT_REPORT}"
        report |= {"status": "fail", "message": message}
        _write(workdir, report)
        if "last_lines" in report:
            message += f"\nlast {LAST_LINES} console lines:\n" + "\n".join(report["last_lines"])
        raise VerificationFailed(message)
    metrics = report["metrics"]
    for name, reason in plan.skipped.items():
        log.warning(f"{target.name}: probe {name} skipped, not passed: {reason}.")
    skipped = f", {len(plan.skipped)} skipped" if plan.skipped else ""
    log.info(f"{target.name} booted under {plan.accel}: {len(plan.probe_names)} probes passed{skipped}; init at "
             f"{metrics['time_to_init_ms']} ms, VM done in {metrics['host_wall_to_exit_ms']} ms, "
             f"{guest.mem_used_kb} KiB used at init")
    return BootResult(target.name, "pass", "", report, _write(workdir, report))


# --- the stage ---------------------------------------------------------------------------------
def run(ctx: StageContext) -> None:
    from ktailor.stages.report import write_target_report

    files = ctx.files
    try:
        boot_target(ctx.the_target, files.kbuild, files.boot_dir, ctx.requested(), StderrLog(),
                    guest_dir=ctx.project.guest_dir)
    finally:
        if files.boot.is_file() and files.config.is_file():
            write_target_report(ctx, quiet=True)  # with the observed hardening


def boot_settled(task, values, boot_json: str) -> bool:  # doit uptodate callable
    """A skipped boot is never up to date unless the skip is still asked for: once QEMU is installed
    (or KTAILOR_SKIP_BOOT unset) the next run boots. A boot.json without file hashes reruns too."""
    report = read_optional(Path(boot_json)) or {}
    status = report.get("status")
    settled = status == "pass" or (status == "skipped" and bool(os.environ.get(SKIP_BOOT_ENV)))
    return settled and bool(report.get("evidence"))


STAGE = Stage(
    "boot", "boot each target in QEMU (its VMM's device model) and run the capability probes",
    doc=lambda ctx: f"boot {ctx.label} in QEMU and run the capability probes",
    run=run,
    # the probe table and cmdline-undoes are entries of the boot's state
    inputs=lambda ctx: [*ctx.files.images.values(), ctx.files.verify, ctx.project.guest_dir / "init.c"],
    outputs=lambda ctx: [ctx.files.boot],
    state=lambda ctx: {"boot": ctx.the_target.boot, "cmdline": ctx.the_target.cmdline,
                       "skip": bool(ctx.project.env.get(SKIP_BOOT_ENV)),
                       "guest": guest_tables.guest_state(ctx.project.guest_dir, ctx.the_target)},
    check=lambda ctx: (boot_settled, [str(ctx.files.boot)]),
    clean=lambda ctx: removes(ctx.files.boot_dir),
)
