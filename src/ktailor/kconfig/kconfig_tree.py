"""Reading a kernel's Kconfig: kconfiglib on the tree for one arch, with the variables kbuild would export,
and facts about the tree itself (which symbols exist, for which arches, which the toolchain decides).

The kernel's own kconfig stays the authority; this is what the explainer, the linter and the drift
report read it with. A tree kconfiglib cannot parse is ExplainUnavailable, never a silent guess.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import kconfiglib
from kconfiglib import Choice, Symbol

from ktailor.core.errors import EnvironmentProblem
from ktailor.kconfig.fragments import version_key
from ktailor.kconfig.kconfig_syntax import KernelKconfig
from ktailor.sources.source_tree import makefile_fields

# Symbols that describe the compiler, assembler, linker or Rust toolchain (when they have no prompt).
TOOLCHAIN_NAME_RE = re.compile(
    r"^(CC_HAS_|CC_CAN_|CC_IS_|CC_VERSION_TEXT$|GCC_VERSION$|CLANG_VERSION$|AS_|LD_|PAHOLE_|RUSTC_|"
    r"RUST_IS_AVAILABLE$|BINDGEN_|TOOLCHAIN_|GCC_ASM_|ARCH_SUPPORTS_.*_TOOLCHAIN)"
)
# A `default`/`def_bool`/`depends on` line that runs the toolchain: any $(…) but the arch/version variables.
PROBE_LINE_RE = re.compile(r"^\s*(def_bool|def_tristate|default|depends\s+on)\b.*\$\((?!(SRCARCH|ARCH|KERNELVERSION)\))")
ENTRY_RE = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$", re.MULTILINE)


class ExplainUnavailable(EnvironmentProblem):
    """kconfiglib could not parse this kernel's Kconfig, so differences are reported unexplained."""


def load_kconfig(srctree: Path, kernel_arch: str, cross_compile: str, config: Path | None) -> kconfiglib.Kconfig:
    """Parse the kernel's Kconfig for one arch and load a .config; raise ExplainUnavailable on failure."""
    srctree = srctree.resolve()
    config = config.resolve() if config is not None else None
    if not (srctree / "Kconfig").is_file():
        raise ExplainUnavailable(f"{srctree} has no top-level Kconfig; it is not an extracted kernel source tree.")
    env = {**os.environ, **kbuild_environment(srctree, kernel_arch, cross_compile)}
    # $(shell,…) probes such as cc-option create scratch files in the directory they run in.
    with tempfile.TemporaryDirectory(prefix="ktailor-kconfig-") as scratch:
        try:
            kconf = KernelKconfig(str(srctree / "Kconfig"), env=env, workdir=Path(scratch), warn_to_stderr=False)
            if config is not None:
                kconf.load_config(str(config))
        except (kconfiglib.KconfigError, OSError, UnicodeDecodeError) as exc:
            raise ExplainUnavailable(
                f"kconfiglib could not read the Kconfig of {srctree} for ARCH={kernel_arch} "
                f"(CC={cross_compile}gcc): {str(exc).strip()}"
            ) from None
    return kconf


def kbuild_environment(srctree: Path, kernel_arch: str, cross_compile: str) -> dict[str, str]:
    """The variables the top-level Makefile exports that Kconfig files read through $(…)."""
    cc = f"{cross_compile}gcc"
    return {
        "srctree": str(srctree),
        "ARCH": kernel_arch,
        "SRCARCH": source_arch(kernel_arch),
        "KERNELVERSION": kernel_version(srctree),
        "CROSS_COMPILE": cross_compile,
        "CC": cc,
        "LD": f"{cross_compile}ld",
        "AR": f"{cross_compile}ar",
        "NM": f"{cross_compile}nm",
        "OBJCOPY": f"{cross_compile}objcopy",
        "HOSTCC": "gcc",
        "HOSTCXX": "g++",
        "CLANG_FLAGS": "",
        "PAHOLE": "pahole",
        "RUSTC": "rustc",
        "BINDGEN": "bindgen",
        # The Makefile strips '#' so the text survives being a Kconfig string.
        "CC_VERSION_TEXT": _first_output_line([cc, "--version"]).replace("#", ""),
        "RUSTC_VERSION_TEXT": _first_output_line(["rustc", "--version"]).replace("#", ""),
    }


def source_arch(kernel_arch: str) -> str:
    """SRCARCH for an ARCH, as the top-level Makefile maps it."""
    return {"i386": "x86", "x86_64": "x86", "sparc32": "sparc", "sparc64": "sparc", "parisc64": "parisc",
            "sh64": "sh"}.get(kernel_arch, kernel_arch)


def kernel_version(srctree: Path) -> str:
    """`make kernelversion` without make: VERSION.PATCHLEVEL.SUBLEVEL+EXTRAVERSION from the Makefile."""
    try:
        fields = makefile_fields(srctree)
    except OSError:
        return ""
    numbers = [fields[k] for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL") if fields.get(k)]
    return ".".join(numbers) + fields.get("EXTRAVERSION", "")


def _first_output_line(argv: list[str]) -> str:
    if not shutil.which(argv[0]):
        return ""
    result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}, check=False)
    return (result.stdout.splitlines() or [""])[0]


# --- other architectures and names -----------------------------------------------------------


def symbols_for_other_arches(srctree: Path, kernel_arch: str) -> dict[str, list[str]]:
    """Symbols defined under arch/<other>/ (never under this arch's dir) -> the arches defining them."""
    own = source_arch(kernel_arch)
    found: dict[str, list[str]] = {}
    for symbol, arches in arch_symbols(srctree.resolve()).items():
        if own not in arches:
            found[symbol] = sorted(arches)
    return found


@functools.lru_cache(maxsize=8)
def arch_symbols(srctree: Path) -> dict[str, frozenset[str]]:
    """Every `config`/`menuconfig` in arch/*/**/Kconfig* -> the arch directories that define it."""
    by_symbol: dict[str, set[str]] = {}
    arch_root = srctree / "arch"
    arch_dirs = sorted(p for p in arch_root.iterdir() if p.is_dir()) if arch_root.is_dir() else []
    for arch_dir in arch_dirs:
        for kconfig in kconfig_files(arch_dir):
            for symbol in ENTRY_RE.findall(kconfig.read_text(errors="replace")):
                by_symbol.setdefault(symbol, set()).add(arch_dir.name)
    return {symbol: frozenset(arches) for symbol, arches in by_symbol.items()}


@functools.lru_cache(maxsize=8)
def tree_symbols(srctree: Path) -> frozenset[str]:
    """Every `config`/`menuconfig` defined anywhere in a source tree (any arch)."""
    found: set[str] = set()
    for kconfig in kconfig_files(srctree):
        found.update(ENTRY_RE.findall(kconfig.read_text(errors="replace")))
    return frozenset(found)


def kconfig_files(top: Path) -> Iterator[Path]:
    """The Kconfig* files under `top`, hidden directories left out: a user's tree is often a git
    checkout, and a `git gc --auto` that `git commit` leaves running in the background removes
    .git/objects/* directories under a walk (CI failed so on a real 5.10 checkout)."""
    for directory, subdirs, names in os.walk(top):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(directory, name)
            if name.startswith("Kconfig") and path.is_file():
                yield path


def by_version(versions: Iterable[str]) -> list[str]:
    return sorted(versions, key=version_key)


def version_scope(lacking: list[str], having: list[str]) -> str:
    """The `@only` condition that separates versions without a symbol from versions with it:
    `version>=5.11` when every version that has it is newer (the first series after the newest one
    without it; `version>=6.1.188` within one series), `version<6.2` when every one that has it is
    older; "" when they interleave."""
    low, high = [version_key(v) for v in lacking], [version_key(v) for v in having]
    if min(high) > max(low):
        return f"version>={next_after(max(low), min(high))}"
    if max(high) < min(low):
        return f"version<{next_after(max(high), min(low))}"
    return ""


def next_after(old: tuple[int, int, int], new: tuple[int, int, int]) -> str:
    if old[:2] == new[:2]:
        return f"{old[0]}.{old[1]}.{old[2] + 1}"
    return f"{old[0]}.{old[1] + 1}"


def did_you_mean(name: str, candidates: Iterable[str]) -> list[str]:
    """Up to three candidate names close to `name` (CONFIG_ prefixes ignored), best first."""
    name = name.removeprefix("CONFIG_")
    return difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.75)


def is_toolchain_decided(sym: Symbol, srctree: Path) -> bool:
    """No prompt, and either a toolchain name (CC_HAS_*, AS_*, …) or a default probed with $(…)."""
    if has_prompt(sym):
        return False
    return bool(TOOLCHAIN_NAME_RE.match(sym.name)) or _defaults_probe_toolchain(sym, srctree)


def _defaults_probe_toolchain(sym: Symbol, srctree: Path) -> bool:
    for node in sym.nodes:
        try:
            lines = (srctree / node.filename).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines[node.linenr:]:  # node.linenr is the 1-based `config` line
            if line.strip() and not line[0].isspace():
                break
            if PROBE_LINE_RE.match(line):
                return True
    return False


def has_prompt(sym: Symbol | Choice) -> bool:
    return any(node.prompt for node in sym.nodes)
