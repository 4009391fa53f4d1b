"""Where things live: the project's data files, the build tree, the download cache, the prefix.

Every location can be moved with an environment variable so farms and tests can relocate it:
KTAILOR_VERSIONS, KTAILOR_BUILD_DIR, KTAILOR_CACHE, KTAILOR_PREFIX (and KTAILOR_MIRROR in versions.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .fragments import list_files_of, resolve_list
from .targets import Catalog, Target, load_catalog
from .versions import Kernel, VersionsFile, load_versions

DEFAULT_PREFIX = "/usr/share/ktailor"


@dataclass(frozen=True)
class Project:
    root: Path
    env: dict[str, str]

    @classmethod
    def from_env(cls, root: Path | str) -> Project:
        return cls(Path(root).resolve(), dict(os.environ))

    def _path(self, variable: str, default: Path) -> Path:
        value = self.env.get(variable)
        return Path(value).expanduser().resolve() if value else default

    # --- data files -------------------------------------------------------------------------
    @property
    def fragments_dir(self) -> Path:
        return self.root / "fragments"

    @property
    def patches_root(self) -> Path:
        return self.root / "patches"

    @property
    def guest_dir(self) -> Path:
        return self.root / "guest"

    @property
    def versions_path(self) -> Path:
        return self._path("KTAILOR_VERSIONS", self.root / "versions.toml")

    @cached_property
    def catalog(self) -> Catalog:
        return load_catalog(self.root / "targets.toml")

    @cached_property
    def versions(self) -> VersionsFile:
        return load_versions(self.versions_path, self.catalog, self.fragments_dir, self.env)

    # --- outputs ----------------------------------------------------------------------------
    @property
    def build_dir(self) -> Path:
        return self._path("KTAILOR_BUILD_DIR", self.root / "build")

    @property
    def cache_dir(self) -> Path:
        default = Path(self.env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ktailor"
        return self._path("KTAILOR_CACHE", default)

    @property
    def prefix(self) -> Path:
        return self._path("KTAILOR_PREFIX", Path(DEFAULT_PREFIX))

    def tarball(self, kernel: Kernel) -> Path:
        return self.cache_dir / "downloads" / kernel.tarball_name

    def source_tree(self, kernel: Kernel) -> Path:
        return self.source_tree_of(kernel.version)

    def source_tree_of(self, version: str) -> Path:
        """By version string: also for a kernel versions.toml no longer lists (the one an upgrade replaced)."""
        return self.build_dir / "src" / f"linux-{version}"

    def target_dir(self, kernel: Kernel, target: Target) -> Path:
        """ktailor's files for one target (logs, audit.json, verify.json, boot.json)."""
        return self.target_dir_of(kernel.version, target.name)

    def target_dir_of(self, version: str, target_name: str) -> Path:
        return self.build_dir / version / target_name

    def kbuild(self, kernel: Kernel, target: Target) -> Path:
        """The kernel's own out-of-tree build directory (make O=…)."""
        return self.kbuild_of(kernel.version, target.name)

    def kbuild_of(self, version: str, target_name: str) -> Path:
        return self.target_dir_of(version, target_name) / "kbuild"

    def install_dir(self, kernel: Kernel, target: Target) -> Path:
        return self.prefix / kernel.version / target.name

    # --- per-(kernel, target) documents ---------------------------------------------------------
    SOURCES = "sources.json"  # the files a build compiled (compiled.py); also copied into the install
    VEX = "vex.openvex.json"  # OpenVEX for the install (vex.py)

    def sources_file(self, kernel: Kernel, target: Target) -> Path:
        return self.target_dir(kernel, target) / self.SOURCES

    def vex_file(self, kernel: Kernel, target: Target) -> Path:
        return self.target_dir(kernel, target) / self.VEX

    # --- fragments of a target ---------------------------------------------------------------
    def fragment_paths(self, target: Target) -> list[Path]:
        return resolve_list(self.fragments_dir, target.list_name)

    def list_paths(self, target: Target) -> list[Path]:
        return list_files_of(self.fragments_dir, target.list_name)

    def display(self, path: Path) -> Path:
        """A path as the user should see it: relative to the project when inside it."""
        return path.relative_to(self.root) if path.is_relative_to(self.root) else path
