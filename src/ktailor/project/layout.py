"""Where things live: the project's data files, the build tree, the download cache, the prefix.

Every location can be moved with an environment variable so farms and tests can relocate it:
KTAILOR_VERSIONS, KTAILOR_BUILD_DIR, KTAILOR_CACHE, KTAILOR_PREFIX (and KTAILOR_MIRROR in versions.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ktailor.kconfig.fragment_dirs import FragmentDirs
from ktailor.kconfig.fragments import list_files_of, resolve_list
from ktailor.project.targets import Catalog, Target, load_catalog
from ktailor.project.versions import Kernel, VersionsFile, load_versions

STAMP = ".ktailor-extracted"  # in an extracted tree: written last by the extract stage, so its presence means complete

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
        """The project's fragments/, overlaid by KTAILOR_FRAGMENTS=<dir> when set (fragment_dirs.py)."""
        return FragmentDirs.from_env(self.root / "fragments", self.env)  # type: ignore[return-value]

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

    def checksum_record(self, kernel: Kernel) -> Path:
        """Where the upgrade that pinned this tarball's sha256 took it from (the signed sha256sums.asc line)."""
        return self.tarball(kernel).with_name(f"{kernel.tarball_name}.checksum.json")

    def source_tree(self, kernel: Kernel) -> Path:
        """The tree a kernel is configured and built from: its extracted tarball, or the user's own tree."""
        return kernel.source if kernel.source is not None else self.source_tree_of(kernel.version)

    def source_stamp(self, kernel: Kernel) -> Path:
        """The file that changes when the kernel's source does: the extraction's stamp in an extracted tree;
        for the user's own tree (never written to), its recorded identity in the build dir (source_tree.py)."""
        if kernel.source is not None:
            return self.version_dir_of(kernel.version) / "source-identity.json"
        return self.source_tree_of(kernel.version) / STAMP

    def source_tree_of(self, version: str) -> Path:
        """By version string: also for a kernel versions.toml no longer lists (the one an upgrade replaced).

        Inside the version's dir, beside its targets, so the path from every kbuild dir to its tree is the same
        "../../linux" for every release: ccache (base dir = the build dir) then sees the same command line and
        the same preprocessor line markers for a file a point release did not change, and hits."""
        return self.version_dir_of(version) / "linux"

    @property
    def forecast_dir(self) -> Path:
        """build/forecast: security-update's scratch pre-flights of the next longterm move, one dir per series."""
        return self.build_dir / "forecast"

    def version_dir_of(self, version: str) -> Path:
        """build/<version>: the source tree and every target's dir of one release."""
        return self.build_dir / version

    # --- per-(kernel, target) documents ---------------------------------------------------------
    SOURCES = "sources.json"  # the files a build compiled (compiled.py); also copied into the install
    VEX = "vex.openvex.json"  # OpenVEX for the install (vex.py)
    MANIFEST = "manifest.json"  # in each install dir (install.py)
    BOOT_REPORT = "boot.json"  # in the boot stage's work dir (boot.py)

    def artifacts(self, kernel: Kernel, target: Target) -> Artifacts:
        return self.artifacts_of(kernel.version, target.name)

    def artifacts_of(self, version: str, target_name: str) -> Artifacts:
        """By version string: also for a kernel versions.toml no longer lists (the one an upgrade replaced)."""
        target = self.catalog.target(target_name)
        return Artifacts(version, target_name, self.version_dir_of(version) / target_name, self.prefix,
                         tuple(target.images))

    # --- fragments of a target ---------------------------------------------------------------
    def fragment_paths(self, target: Target) -> list[Path]:
        return resolve_list(self.fragments_dir, target.list_name)

    def list_paths(self, target: Target) -> list[Path]:
        return list_files_of(self.fragments_dir, target.list_name)

    def display(self, path: Path) -> Path:
        """A path as the user should see it: relative to the project when inside it."""
        return path.relative_to(self.root) if path.is_relative_to(self.root) else path


@dataclass(frozen=True)
class Artifacts:
    """Every file ktailor reads or writes for one (kernel version, target), each named once here.

    Task creators, actions, security-update, the pre-flight and the tests all go through these
    properties: renaming a report is a one-line change, and nobody re-derives a path.
    """

    version: str
    target: str
    dir: Path  # build/<version>/<target>: ktailor's own files for this target
    prefix: Path
    image_paths: tuple[str, ...]  # relative to kbuild, from targets.toml [arch.*] images

    # config stage
    @property
    def kbuild(self) -> Path:
        """The kernel's own out-of-tree build directory (make O=…)."""
        return self.dir / "kbuild"

    @property
    def config(self) -> Path:
        return self.kbuild / ".config"

    @property
    def rejected_config(self) -> Path:
        return self.kbuild / ".config.rejected"

    @property
    def fragment_config(self) -> Path:
        return self.dir / "fragment.config"

    @property
    def config_log(self) -> Path:
        return self.dir / "config.log"

    @property
    def audit(self) -> Path:
        return self.dir / "audit.json"

    @property
    def report_md(self) -> Path:
        return self.dir / "report.md"

    @property
    def report_json(self) -> Path:
        return self.dir / "report.json"

    # build stage
    @property
    def images(self) -> dict[str, Path]:
        """image file name (vmlinux, bzImage, Image) -> where the build puts it."""
        return {Path(relative).name: self.kbuild / relative for relative in self.image_paths}

    @property
    def system_map(self) -> Path:
        return self.kbuild / "System.map"

    @property
    def build_log(self) -> Path:
        return self.dir / "build.log"

    @property
    def build_json(self) -> Path:
        return self.dir / "build.json"

    @property
    def sources(self) -> Path:
        return self.dir / Project.SOURCES

    @property
    def ccache_stats(self) -> Path:
        """ccache's per-build stats log (CCACHE_STATSLOG): the hits and misses build.json reports."""
        return self.dir / "ccache-stats.log"

    @property
    def distcc_log(self) -> Path:
        """distcc's client log (DISTCC_LOG): which host compiled each object."""
        return self.dir / "distcc.log"

    # ledger stage (after build): what each option costs in vmlinux (ledger.py)
    @property
    def ledger_json(self) -> Path:
        return self.dir / "ledger.json"

    @property
    def ledger_md(self) -> Path:
        return self.dir / "ledger.md"

    # reproduce stage: the same inputs built again in a second, differently named (and deeper) build dir
    @property
    def rebuild_dir(self) -> Path:
        return self.dir / "reproduce"

    @property
    def rebuild_kbuild(self) -> Path:
        return self.rebuild_dir / "kbuild-again"

    @property
    def rebuild_log(self) -> Path:
        return self.rebuild_dir / "build.log"

    @property
    def reproduce(self) -> Path:
        return self.dir / "reproduce.json"

    # verify and boot stages
    @property
    def verify(self) -> Path:
        return self.dir / "verify.json"

    @property
    def boot_dir(self) -> Path:
        return self.dir / "boot"

    @property
    def boot(self) -> Path:
        return self.boot_dir / Project.BOOT_REPORT

    # accept stage
    @property
    def accept_dir(self) -> Path:
        return self.dir / "accept"

    @property
    def accept(self) -> Path:
        return self.accept_dir / "accept.json"

    # install stage
    @property
    def vmm_dir(self) -> Path:
        """The VMM configs this install carries (vmconfig.py), written here, then copied into the install."""
        return self.dir / "vmm"

    @property
    def vex(self) -> Path:
        return self.dir / Project.VEX

    @property
    def install(self) -> Path:
        """<prefix>/<version>/<target>: a symlink to the content-keyed directory of the installed build."""
        return self.prefix / self.version / self.target

    @property
    def manifest(self) -> Path:
        return self.install / Project.MANIFEST

    @property
    def installed_sources(self) -> Path:
        """The sources.json installed with the build (what the installed kernel compiled)."""
        return self.install / Project.SOURCES

    @property
    def current(self) -> Path:
        """<prefix>/<target>: the link VMMs follow; it points at the default kernel's install."""
        return self.prefix / self.target
