"""invoke tasks: the commands a kernel maintainer types every week. Each parses its options and
calls one ktailor function; the logic lives in src/ktailor/."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path

from invoke import Context, Exit, task

from ktailor.core.errors import KtailorError, exit_code_for
from ktailor.project.layout import Project

ROOT = Path(__file__).resolve().parent


def edge(function: Callable) -> Callable:
    """Turn a ktailor error into one paragraph and the exit code of its kind (errors.exit_code_for: 2 bad
    input, 1 the machine, 20 a failed check, 30 unreachable), the same codes security-update uses."""

    @wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except KtailorError as exc:
            raise Exit(f"E: {exc}", code=exit_code_for(exc)) from None

    return wrapper


def _project() -> Project:
    return Project.from_env(ROOT)


def _kernel_and_target(project: Project, target: str, version: str | None):
    kernel = project.versions.get_or_default(version)
    return kernel, project.catalog.target(target)


@task(help={
    "target": "only this target's build dir (e.g. x86_64-micro); default: every target",
    "version": "only this kernel version; default: every kernel in versions.toml",
    "sources": "also remove the extracted source trees",
    "downloads": "also empty the download cache (tarballs are fetched again next time)",
    "all": "everything above plus doit's state; installed kernels are never touched",
    "dry_run": "only print what would be removed",
})
@edge
def clean(c: Context, target: str = "", version: str = "", sources: bool = False, downloads: bool = False,
          all: bool = False, dry_run: bool = False) -> None:
    """Remove build dirs (and, when asked, sources and downloads). Never touches installed kernels.
    Waits for a running doit (KTAILOR_NO_WAIT=1: fails at once instead)."""
    from ktailor.commands.clean import clean_outputs

    removed = clean_outputs(_project(), target=target or None, version=version or None, sources=sources,
                            downloads=downloads, everything=all, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for path in removed:
        print(f"{verb} {path}")
    if not removed:
        print("nothing to clean")


@task(help={"dry_run": "only print what would be removed"})
@edge
def prune(c: Context, dry_run: bool = False) -> None:
    """Remove installed kernel directories that no link in the prefix points to any more (old rebuilds).
    Waits for a running install (KTAILOR_NO_WAIT=1: fails at once instead)."""
    from ktailor.core.locks import prefix_lock
    from ktailor.stages.install import prune as run_prune

    project = _project()
    if dry_run or not project.prefix.is_dir():  # changes nothing: no lock to wait for, no prefix to create
        plan = run_prune(project.prefix, dry_run=dry_run)
    else:
        with prefix_lock(project.prefix, project.env):
            plan = run_prune(project.prefix)
    verb = "would remove" if dry_run else "removed"
    print(f"{verb} {len(plan.remove)} unlinked install dir(s) from {project.prefix}; {plan.kept} in use kept")


@task(help={
    "target": "the target whose config to edit, e.g. x86_64-micro",
    "version": "kernel version (default: the default kernel of versions.toml)",
    "save_as": "save your changes as this new fragment, e.g. fragments/local-tweaks.conf",
    "add_to_list": "also add the saved fragment to the target's list, so the next `doit` builds with it",
})
@edge
def menuconfig(c: Context, target: str, version: str = "", save_as: str = "", add_to_list: bool = False) -> None:
    """Run the kernel's menuconfig on a target's config and turn your edits into a fragment.
    Holds the build dir for the session: a doit or security-update run waits until you are done."""
    from ktailor.commands.menuconfig import edit_target_config

    project = _project()
    kernel, row = _kernel_and_target(project, target, version or None)
    text, saved = edit_target_config(project, kernel, row, save_as=Path(save_as) if save_as else None,
                                     add_to_list=add_to_list)
    if not text:
        print("no changes")
        return
    print(text)
    print(f"saved to {saved}" + (f" and added to {row.list_name}" if add_to_list and save_as else ""), file=sys.stderr)
    if not save_as:
        print("Not saved as a fragment: the next `doit` regenerates the config from the fragments. "
              "Copy the file above into fragments/ (and its list) to keep these changes.", file=sys.stderr)


@task(help={
    "option": "the option to explain, e.g. CONFIG_DM_CRYPT",
    "target": "the target, e.g. x86_64-micro",
    "version": "kernel version (default: the default kernel of versions.toml)",
})
@edge
def explain(c: Context, option: str, target: str, version: str = "") -> None:
    """Why an option has its value in a target: fragment and reason, dependencies, selects."""
    from ktailor.commands.why import explain_option

    print(explain_option(_project(), option, target, version or None))


@task(help={
    "version": "point release to move to, e.g. 5.10.245 (replaces the entry of its series)",
    "latest": "instead of --version: newest point release of the tracked series (releases.json, else the mirror listing)",
    "replace": "entry to replace, by its current version (default: same series, else the default kernel)",
    "dry_run": "print the change to versions.toml; write, download and build nothing",
    "allow_downgrade": "allow a version lower than the tracked one",
    "allow_series_change": "allow another major.minor series than the entry it replaces",
    "insecure_skip_signature": "use the mirror's checksum file WITHOUT checking its signature (mirrors you control only)",
    "keyring": "keyring with the kernel.org autosigner key (default $KTAILOR_KEYRING or "
               "~/.config/ktailor/kernel.org-autosigner.gpg, fetched over WKD and pinned by fingerprint if missing)",
})
@edge
def upgrade(c: Context, version: str = "", latest: bool = False, replace: str = "", dry_run: bool = False,
            allow_downgrade: bool = False, allow_series_change: bool = False, insecure_skip_signature: bool = False,
            keyring: str = "") -> None:
    """Move a kernel in versions.toml to another point release: signed checksum, rewrite, pre-flight audit.
    Holds the build dir (a running doit makes it wait; KTAILOR_NO_WAIT=1: fail at once), except a dry run."""
    from ktailor.commands.upgrade import upgrade as run_upgrade
    from ktailor.core.locks import holding_build_dir
    from ktailor.sources.signature import pinned_fingerprint

    if not version and not latest:
        raise Exit("E: say which release: --version X.Y.Z, or --latest for the newest of the tracked series.", code=2)
    project = _project()
    with contextlib.nullcontext(project.env) if dry_run else holding_build_dir(project.build_dir, project.env) as env:
        result = run_upgrade(ROOT, version or None, env=env, latest=latest, replace=replace or None, dry_run=dry_run,
                             allow_downgrade=allow_downgrade, allow_series_change=allow_series_change,
                             insecure_skip_signature=insecure_skip_signature, keyring=Path(keyring) if keyring else None,
                             expected_fingerprint=pinned_fingerprint())
    if not result.ok:
        raise Exit(code=1)


VULNS_HELP = ("the kernel CNA's vulns repository: a local clone or a git URL (default $KTAILOR_VULNS or "
              "https://git.kernel.org/pub/scm/linux/security/vulns.git, cloned shallow into the cache)")


@task(help={
    "apply": "upgrade, build, verify, boot, and install only if every check passed",
    "releases_url": "releases.json URL (default $KTAILOR_RELEASES_URL or https://www.kernel.org/releases.json)",
    "json_out": "where to write the JSON summary (default build/security-update.json)",
    "keyring": "as for upgrade",
    "insecure_skip_signature": "as for upgrade",
    "vulns": VULNS_HELP,
    "fail_on": "exit 50 when an installed kernel has an applicable CVE this bad and no working upgrade: "
               "applicable-critical, applicable-high, applicable-medium or applicable-low",
    "forecast": "also run the pre-flight of moving each series to the next longterm one (always done for an "
                "end-of-life series): config and audit only, on a scratch copy of versions.toml",
    "no_wait": "fail at once (exit 1) when another run holds the build dir or a download, instead of waiting for it",
})
def security_update(c: Context, apply: bool = False, releases_url: str = "", json_out: str = "", keyring: str = "",
                    insecure_skip_signature: bool = False, vulns: str = "", fail_on: str = "",
                    forecast: bool = False, no_wait: bool = False) -> None:
    """Check tracked kernels against kernel.org; with --apply, patch and install them.

    Exit codes: 0 up to date, 10 updated (or update available), 20 a check failed (nothing installed),
    30 mirror/releases.json unreachable, 40 a series is end-of-life, 50 (--fail-on) an applicable CVE
    without a working upgrade, 2 bad input, 1 other error.
    """
    from ktailor.commands.security_update import security_update as run
    from ktailor.core.locks import NO_WAIT_ENV
    from ktailor.sources.signature import pinned_fingerprint

    env = {**os.environ, NO_WAIT_ENV: "1"} if no_wait else dict(os.environ)  # for this run and the doit runs it starts
    try:
        fingerprint = pinned_fingerprint()
    except KtailorError as exc:
        raise Exit(f"E: {exc}", code=exit_code_for(exc)) from None
    code = run(ROOT, apply=apply, releases_url=releases_url or None, json_out=Path(json_out) if json_out else None,
               keyring=Path(keyring) if keyring else None, insecure_skip_signature=insecure_skip_signature,
               vulns=vulns or None, fail_on=fail_on, forecast=forecast, expected_fingerprint=fingerprint, env=env)
    if code:
        raise Exit(code=code)


@task(help={
    "target": "the target whose kernel to judge, e.g. x86_64-micro",
    "version": "kernel version (default: the default kernel of versions.toml)",
    "json": "print JSON (every applicable CVE) instead of the summary",
    "vulns": VULNS_HELP,
    "fail_on": "exit 50 when an applicable CVE of this severity or worse affects it: critical, high, medium, low",
})
@edge
def cves(c: Context, target: str, version: str = "", json: bool = False, vulns: str = "", fail_on: str = "") -> None:
    """CVEs that affect a kernel's version, split by whether their fix touches code compiled into it."""
    from ktailor.security.cvereport import cves_command

    text, over = cves_command(_project(), target=target, version=version or None, vulns=vulns or None, as_json=json,
                              fail_on=fail_on.upper())
    print(text)
    if over:
        raise Exit(code=50)


@task(help={
    "target": "the built target, e.g. x86_64-micro",
    "version": "kernel version (default: the default kernel of versions.toml)",
    "option": "one option's cost and largest objects, e.g. CONFIG_EXT4_FS",
    "top": "how many of the costliest options to list (default 20)",
})
@edge
def cost(c: Context, target: str, version: str = "", option: str = "", top: int = 20) -> None:
    """What each option costs in a built kernel's vmlinux (the ledger `doit ledger:<target>` writes)."""
    from ktailor.stages.ledger import cost_text

    project = _project()
    kernel, row = _kernel_and_target(project, target, version or None)
    files = project.artifacts(kernel, row)
    print(cost_text(files.ledger_json, f"{row.name} {kernel.version}", option or None, top), end="")


@task(help={
    "target": "the installed target, e.g. x86_64-micro",
    "vmm": "firecracker, cloud-hypervisor (mini targets), qemu or kata",
    "version": "kernel version (default: the default kernel of versions.toml)",
    "rootfs": "the guest's root filesystem image (default: a placeholder, or $ROOTFS in the scripts)",
    "vcpus": "vCPUs (default: what the boot test uses)",
    "mem_mib": "guest memory in MiB (default: what the boot test uses)",
    "tap": "a host tap device for the guest's network interface",
    "vsock_cid": "give the guest a vsock device with this CID (3 or more)",
    "vsock_socket": "the host's Unix socket for that vsock device",
})
@edge
def vm_config(c: Context, target: str, vmm: str, version: str = "", rootfs: str = "", vcpus: int = 0,
              mem_mib: int = 0, tap: str = "", vsock_cid: int = -1, vsock_socket: str = "") -> None:
    """Print a ready-to-run VMM config for an installed kernel, with your paths (every install carries one)."""
    from ktailor.guest.vmconfig import VmShape, vm_config_command

    shape = VmShape(rootfs=rootfs or None, vcpus=vcpus or None, mem_mib=mem_mib or None, tap=tap or None,
                    vsock_cid=None if vsock_cid < 0 else vsock_cid, vsock_socket=vsock_socket or None)
    print(vm_config_command(_project(), target=target, vmm=vmm, version=version or None, shape=shape), end="")


@task(help={
    "target": "the target to boot, e.g. x86_64-micro",
    "version": "kernel version (default: the default kernel of versions.toml)",
    "initramfs": "boot from the initramfs instead of the ext4 root disk",
})
@edge
def boot(c: Context, target: str, version: str = "", initramfs: bool = False) -> None:
    """Boot a built kernel in QEMU with the console attached (Ctrl-A X quits), for debugging."""
    from ktailor.core.errors import EnvironmentProblem
    from ktailor.guest.qemu import qemu_command
    from ktailor.stages.boot import missing_tool

    project = _project()
    kernel, row = _kernel_and_target(project, target, version or None)
    mode = "initramfs" if initramfs else "rootfs"
    missing = missing_tool(row, mode)  # QEMU first; else the shell's "command not found" would be the only word
    if missing:
        raise EnvironmentProblem(f"{missing}, or run scripts/setup (it installs QEMU and the build tools).")
    with qemu_command(row, project.artifacts(kernel, row).kbuild, project.artifacts(kernel, row).dir / "boot-interactive",
                      interactive=True, mode=mode) as argv:
        print(shlex.join(argv), file=sys.stderr)
        result = c.run(shlex.join(argv), pty=True, warn=True)
    if result is not None and result.failed:
        raise Exit(f"E: {argv[0]} exited with status {result.exited}.", code=result.exited or 1)
