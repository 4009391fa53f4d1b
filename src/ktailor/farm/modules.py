"""Loadable modules of a build (types with `modules = true` in targets.toml): installed, signed, packed.

After the images, the build stage runs `make modules_install` into a staging dir inside the kbuild dir
(stripped; signed there by kbuild when MODULE_SIG_ALL is on) and packs `lib/modules/<release>/` into one
deterministic tar, `modules.tar` beside the images: owner 0, mode from the files, mtime from the build's
SOURCE_DATE_EPOCH stamp, sorted. It is checked, fingerprinted and installed like an image, so the modules a
guest loads are the ones verify, boot and acceptance judged.

Signing: with MODULE_SIG_KEY left at its default, kbuild makes a key pair per build dir
(`certs/signing_key.pem`, with `certs/x509.genkey`); the certificate goes into the kernel image, the private
key stays in the kbuild dir and is never installed. The reproduce stage gives its second build dir the same
two files (mtimes kept, so kbuild does not make a new pair), else the embedded certificate would differ.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

from ktailor.core.errors import BuildFailed
from ktailor.kconfig.dotconfig import parse_dotconfig
from ktailor.project.targets import MODULES_ARCHIVE as ARCHIVE  # relative to the kbuild dir, as the arch's images are

STAGING = "ktailor-modules"  # INSTALL_MOD_PATH, inside the kbuild dir
SIGNING_FILES = ("certs/x509.genkey", "certs/signing_key.pem")  # the generated pair's config, then the pair
SIGNATURE_MAGIC = b"~Module signature appended~\n"  # what sign-file appends (include/linux/module_signature.h)


def install_variables(kbuild: Path) -> dict[str, str]:
    """The make variables of `make modules_install` into the staging dir."""
    return {"INSTALL_MOD_PATH": str(kbuild / STAGING), "INSTALL_MOD_STRIP": "1"}


def pack(kbuild: Path, mtime: int) -> Path:
    """kbuild/ktailor-modules/lib/modules/<release>/ → kbuild/modules.tar (deterministic); the staging dir goes."""
    staging = kbuild / STAGING
    releases = sorted((staging / "lib" / "modules").glob("*")) if staging.is_dir() else []
    if len(releases) != 1:
        raise BuildFailed(f"`make modules_install` left {len(releases)} module trees in {staging}/lib/modules "
                          "(one was expected); see modules_install.log beside build.log.")
    out = kbuild / ARCHIVE
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
        for path in [releases[0], *_tree(releases[0])]:
            info = tarfile.TarInfo(str(path.relative_to(staging)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            else:
                data = path.read_bytes()
                info.size, info.mode = len(data), 0o644
                archive.addfile(info, io.BytesIO(data))
    partial.replace(out)
    shutil.rmtree(staging)
    return out


def _tree(top: Path) -> list[Path]:
    """Every directory and file under top, sorted; symlinks left out (modules_install's build/ and source/
    point back into this machine's dirs)."""
    found = []
    for directory, subdirs, names in os.walk(top):
        found += [Path(directory, name) for name in subdirs + names if not Path(directory, name).is_symlink()]
    return sorted(found)


def carry_signing_key(first: Path, second: Path) -> list[str]:
    """Give a second build dir the first one's module-signing key pair (reproduce); the files carried."""
    carried = []
    for relative in SIGNING_FILES:
        source = first / relative
        if source.is_file():
            (second / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, second / relative)
            carried.append(relative)
    return carried


def modules_in(archive: Path) -> dict[str, bool]:
    """Each .ko in the archive → whether it carries an appended signature."""
    found = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".ko"):
                handle = tar.extractfile(member)
                assert handle is not None
                found[member.name] = handle.read().endswith(SIGNATURE_MAGIC)
    return found


def check_archive(path: Path, kernel_arch: str) -> str | None:
    """verify's check of modules.tar: a readable tar holding modules, every one signed when the .config
    beside it enforces signatures (MODULE_SIG_FORCE: an unsigned module would be refused at load)."""
    try:
        modules = modules_in(path)
    except (tarfile.TarError, OSError) as exc:
        return f"is not a readable tar of modules ({exc})"
    if not modules:
        return "holds no module (.ko): the type builds modules, but no option of its fragments is =m"
    config = path.parent / ".config"
    enforced = config.is_file() and parse_dotconfig(config).get("MODULE_SIG_FORCE") == "y"
    unsigned = sorted(name for name, signed in modules.items() if not signed)
    if enforced and unsigned:
        return (f"holds {len(unsigned)} unsigned module(s) ({', '.join(unsigned[:3])}) while MODULE_SIG_FORCE is on: "
                "the kernel would refuse them (is MODULE_SIG_ALL on?)")
    return None
