"""The install stage: copy a verified kernel into <prefix>/<version>/<arch>-<type>/, atomically.

The files go to a temp dir beside the destination, which is renamed into place; then the
<prefix>/<arch>-<type> "current" symlink is swapped with a rename. Earlier versions stay, so
running VMs keep the kernel they booted. A kernel that failed verify or boot is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .download import sha256_of
from .errors import EnvironmentProblem, VerificationFailed
from .progress import info, warn


def check_verified(verify_file: Path, boot_file: Path | None) -> dict:
    """The verify and boot results; refuse a kernel that failed or was never verified."""
    if not verify_file.is_file():
        raise VerificationFailed(f"{verify_file} does not exist: this kernel was never verified; run `doit` first.")
    verify = json.loads(verify_file.read_text())
    if verify.get("status") != "passed":
        raise VerificationFailed(f"refusing to install: verification failed ({'; '.join(verify.get('problems', []))}).")
    boot: dict = {"status": "not run"}
    if boot_file is not None and boot_file.is_file():
        boot = json.loads(boot_file.read_text())
        if boot.get("status") == "fail":
            raise VerificationFailed(f"refusing to install: boot verification failed ({boot.get('message', boot_file)}).")
        if boot.get("status") != "pass":
            warn(f"installing a kernel that was not boot-verified ({boot.get('reason', boot.get('status'))}).")
    return {"verify": verify, "boot": boot}


def install_target(*, name: str, version: str, prefix: Path, files: dict[str, Path], manifest: dict,
                   verify_file: Path, boot_file: Path | None) -> Path:
    """Install `files` (name in the install dir -> source path) plus manifest.json; return the dir."""
    results = check_verified(verify_file, boot_file)
    destination = prefix / version / name
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=destination.parent))
    except OSError as exc:
        raise EnvironmentProblem(f"cannot write to the install prefix {prefix} ({exc.strerror}); run as a user who "
                                 "can, or choose another prefix with KTAILOR_PREFIX=/some/dir.") from None
    try:
        checksums = {}
        for installed_name, source in files.items():
            shutil.copy2(source, temp / installed_name)
            checksums[installed_name] = sha256_of(temp / installed_name)
        manifest = manifest | {"version": version, "target": name, "sha256": checksums,
                               "verify": results["verify"], "boot": results["boot"],
                               "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (temp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(temp, 0o755)
        _replace_dir(temp, destination)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    _swap_symlink(prefix / name, Path(version) / name)
    info(f"installed {name} {version} into {destination} (current: {prefix / name})")
    return destination


def _replace_dir(new: Path, destination: Path) -> None:
    if not destination.exists():
        new.rename(destination)
        return
    old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
    destination.rename(old)
    try:
        new.rename(destination)
    except OSError:
        old.rename(destination)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _swap_symlink(link: Path, target: Path) -> None:
    temp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    temp.unlink(missing_ok=True)
    temp.symlink_to(target)
    os.replace(temp, link)
