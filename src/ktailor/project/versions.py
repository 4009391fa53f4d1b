"""versions.toml: which kernels to build, their pinned sha256, and where to download them — or, for
`source = "<path>"` entries, the user's own tree to build from (source_tree.py)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ktailor.core.errors import InputError, line_of
from ktailor.core.records import read_toml
from ktailor.project.targets import Catalog
from ktailor.sources.source_tree import makefile_version

DEFAULT_MIRROR = "https://cdn.kernel.org/pub/linux/kernel"
MIRROR_ENV = "KTAILOR_MIRROR"
VERSION_RE = re.compile(r"^(?P<major>[1-9]\d*)\.(?P<minor>\d+)(?:\.(?P<patch>\d+))?$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Kernel:
    version: str
    sha256: str
    targets: tuple[str, ...]
    mirror: str
    is_default: bool
    source: Path | None = None  # the user's own tree: nothing downloaded or extracted (source_tree.py)
    extraversion: str = ""  # its Makefile's EXTRAVERSION (a source tree's), e.g. "-rc3" or "-vendor"

    @property
    def series(self) -> str:
        """major.minor, e.g. '6.1' (the longterm series and the patches/ folder name)."""
        return ".".join(self.version.split(".")[:2])

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        return parse_version(self.version)

    @property
    def tarball_name(self) -> str:
        return f"linux-{self.version}.tar.xz"

    @property
    def url(self) -> str:
        return tarball_url(self.mirror, self.version)


def parse_version(version: str) -> tuple[int, int, int]:
    match = VERSION_RE.match(version)
    if not match:
        raise ValueError(version)
    return int(match["major"]), int(match["minor"]), int(match["patch"] or 0)


def tarball_url(mirror: str, version: str) -> str:
    major = version.split(".", maxsplit=1)[0]
    return f"{mirror.rstrip('/')}/v{major}.x/linux-{version}.tar.xz"


def check_mirror(url: str, path: Path, line: int | None, source: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https") and parsed.netloc:
        return url
    if parsed.scheme == "file" and parsed.path:
        return url
    raise InputError(
        f"mirror {url!r} ({source}) is not a usable URL; give an http://, https:// or file:// URL "
        f"of a directory laid out like kernel.org (…/v6.x/linux-6.1.1.tar.xz), e.g. {DEFAULT_MIRROR}.",
        path=path,
        line=line,
    )


@dataclass(frozen=True)
class VersionsFile:
    path: Path
    kernels: tuple[Kernel, ...]

    @property
    def default(self) -> Kernel:
        return next(k for k in self.kernels if k.is_default)

    def get_or_default(self, version: str | None) -> Kernel:
        """The kernel of `version`, or the default kernel when no version is given (the commands' --version)."""
        return self.get(version) if version else self.default

    def get(self, version: str) -> Kernel:
        for kernel in self.kernels:
            if kernel.version == version:
                return kernel
        known = ", ".join(k.version for k in self.kernels)
        raise InputError(f"kernel {version} is not listed (listed: {known}); add a [[kernel]] entry for it.", path=self.path)


def _nth_line(text: str, version: str, n: int) -> int | None:
    """The line of the n-th `version = "<version>"` (a duplicate entry points at its own line)."""
    found = [number for number, line in enumerate(text.splitlines(), start=1)
             if f'"{version}"' in line.split("#", 1)[0] and "version" in line]
    if len(found) >= n:
        return found[n - 1]
    return line_of(text, f'"{version}"')


def _checked_targets(targets: object, version: str, catalog: Catalog, fragments_dir: Path, path: Path, text: str,
                     line: int | None) -> list[str]:
    """A kernel entry's `targets`: a non-empty list of known targets whose fragment lists exist."""
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise InputError(f"kernel {version}: targets = {targets!r} is not a list of target names; write it like "
                         'targets = ["x86_64-micro", "aarch64-micro"] (or leave it out for the default targets).',
                         path=path, line=line_of(text, "targets") or line)
    if not targets:
        raise InputError(f"kernel {version}: targets = [] builds nothing; name at least one target, or remove the "
                         "key to build the default targets (targets.toml).", path=path,
                         line=line_of(text, "targets") or line)
    for target in targets:
        if target not in catalog.targets:
            raise InputError(
                f"unknown target {target!r} for kernel {version}; known targets (targets.toml): "
                f"{', '.join(sorted(catalog.targets))}. Fix the name or add the target to targets.toml.",
                path=path,
                line=line_of(text, f'"{target}"') or line,
            )
        list_file = fragments_dir / catalog.targets[target].list_name
        if not list_file.is_file():
            raise InputError(
                f"kernel {version} asks for target {target}, but its fragment list {list_file} does not exist; "
                f"create it (one fragment per line) or drop {target} from the targets.",
                path=path,
                line=line_of(text, f'"{target}"') or line,
            )
    return targets


def _source_entry(entry: dict, index: int, path: Path, text: str) -> tuple[Path, str, str]:
    """(tree, version, EXTRAVERSION) of a `source = "<path>"` entry; its version is the tree's Makefile's."""
    raw = entry["source"]
    line = line_of(text, str(raw))
    if not isinstance(raw, str) or not raw.strip():
        raise InputError(f"kernel entry #{index}: source = {raw!r} is not a path; write it like source = \"/src/linux\".",
                         path=path, line=line)
    if "sha256" in entry:
        raise InputError(f"kernel entry #{index} names both a source tree and a sha256; a tree is built as it is and "
                         "has no tarball to check: remove the sha256 (or the source, to build the release tarball).",
                         path=path, line=line)
    tree = (path.parent / Path(raw).expanduser()).resolve()
    if not tree.is_dir():
        raise InputError(f"kernel entry #{index}: source {raw!r} is not a directory ({tree}); point it at a Linux source "
                         "tree (a plain tree or a git work tree).", path=path, line=line)
    try:
        version, extraversion = makefile_version(tree)
    except InputError as exc:
        raise InputError(f"kernel entry #{index}: source {raw!r}: {exc.args[0]}", path=path, line=line) from None
    if "version" in entry and entry["version"] != version:
        raise InputError(f"kernel entry #{index}: version = {entry['version']!r} but the tree's Makefile says {version}; "
                         "remove the version key (a tree's version is its Makefile's).", path=path, line=line)
    return tree, version, extraversion


def load_versions(path: Path, catalog: Catalog, fragments_dir: Path, env: dict[str, str] | None = None) -> VersionsFile:
    env = os.environ if env is None else env
    text, data = read_toml(path, "versions file not found; create it with a [[kernel]] entry (see README).")

    if env.get(MIRROR_ENV):
        mirror = check_mirror(env[MIRROR_ENV], path, None, f"from ${MIRROR_ENV}")
    else:
        raw_mirror = data.get("mirror", DEFAULT_MIRROR)
        mirror = check_mirror(str(raw_mirror), path, line_of(text, "mirror ="), "the `mirror` key")

    entries = data.get("kernel", [])
    if not isinstance(entries, list) or not entries:
        raise InputError("no kernels listed; add a [[kernel]] table with version and sha256.", path=path)

    kernels: list[Kernel] = []
    seen: dict[str, int | None] = {}
    default_version = data.get("default")
    if default_version is not None and not isinstance(default_version, str):
        raise InputError(f"default = {default_version!r} is not a version string; write it like default = \"6.1.192\".",
                         path=path, line=line_of(text, "default ="))
    for index, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise InputError(f"kernel entry #{index} is {entry!r}, not a table; list each kernel as a [[kernel]] table "
                             'with version = "…" and sha256 = "…" (see README).', path=path,
                             line=line_of(text, "kernel =") or line_of(text, "kernel="))
        source, extraversion = None, ""
        if "source" in entry:
            source, version, extraversion = _source_entry(entry, index, path, text)
            line = line_of(text, str(entry["source"]))
        else:
            version = entry.get("version")
            line = _nth_line(text, version, list(seen).count(version) + 1) if isinstance(version, str) else None
        if not isinstance(version, str) or not VERSION_RE.match(version):
            raise InputError(
                f"kernel entry #{index} has version {version!r}, which is not a kernel.org release number; "
                'write it like "6.1.192" or "6.12".',
                path=path,
                line=line,
            )
        if version in seen:
            raise InputError(
                f"kernel {version} is listed twice (first at line {seen[version]}); remove one of the entries.",
                path=path,
                line=line,
            )
        seen[version] = line
        sha256 = entry.get("sha256", "" if source else None)
        if source is None and (not isinstance(sha256, str) or not SHA256_RE.match(sha256)):
            raise InputError(
                f"kernel {version}: sha256 {sha256!r} is not 64 lowercase hex digits; copy it from "
                f"the sha256sums.asc next to the tarball on kernel.org (or `invoke upgrade --version {version}`).",
                path=path,
                line=line_of(text, str(sha256)) if sha256 else line,
            )
        targets = _checked_targets(entry.get("targets", catalog.default_targets()), version, catalog, fragments_dir,
                                   path, text, line)
        kernels.append(
            Kernel(
                version=version,
                sha256=sha256,
                targets=tuple(targets),
                mirror=mirror,
                is_default=(version == default_version) if default_version else index == 1,
                source=source,
                extraversion=extraversion,
            )
        )
    if default_version is not None and default_version not in seen:
        raise InputError(
            f"default = {default_version!r} names no listed kernel; set it to one of {', '.join(seen)}.",
            path=path,
            line=line_of(text, "default ="),
        )
    return VersionsFile(path=path, kernels=tuple(kernels))
