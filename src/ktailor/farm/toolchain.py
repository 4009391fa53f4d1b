"""The compiler and make variables a target builds with, and cheap fingerprints of them.

Fingerprints decide staleness on every `doit` call, so they use stat(), never a subprocess:
the resolved compiler path with its size and mtime changes when the toolchain is upgraded.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from ktailor.core.errors import EnvironmentProblem, InputError
from ktailor.farm.compile_farm import distcc_hosts, slots
from ktailor.project.targets import Target

MAKE_VARS_ENV = "KTAILOR_MAKE_VARS"
CCACHE_ENV = "KTAILOR_CCACHE"  # 0: compile without ccache even when it is installed
CCACHE_DIR_ENV = "KTAILOR_CCACHE_DIR"  # default <cache dir>/ccache
WRAPPERS = ("ccache", "distcc")  # words in CC before the compiler itself
# Variables ktailor owns: a user setting them would build a different target than the one named.
RESERVED_MAKE_VARS = {"ARCH", "SRCARCH", "O", "CROSS_COMPILE", "KCONFIG_ALLCONFIG", "KCONFIG_CONFIG"}
TOOL_PACKAGES = {"aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu", "x86_64-linux-gnu-gcc": "gcc-x86-64-linux-gnu",
                 "gcc": "gcc", "make": "make", "flex": "flex", "bison": "bison", "bc": "bc", "ccache": "ccache",
                 "distcc": "distcc", "depmod": "kmod", "openssl": "openssl"}


def user_make_vars(env: dict[str, str] | None = None) -> dict[str, str]:
    """Extra make variables from KTAILOR_MAKE_VARS ("KCFLAGS=-pipe LLVM=1")."""
    env = os.environ if env is None else env
    result = {}
    for word in shlex.split(env.get(MAKE_VARS_ENV, "")):
        name, sep, value = word.partition("=")
        if not sep or not name.isidentifier():
            raise InputError(f"${MAKE_VARS_ENV} item {word!r} is not NAME=value; write e.g. KCFLAGS=-pipe.")
        if name in RESERVED_MAKE_VARS:
            raise InputError(f"${MAKE_VARS_ENV} sets {name}, which ktailor sets per target; remove it "
                             "(choose the target instead, or edit its arch in targets.toml).")
        result[name] = value
    return result


def ccache_enabled(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get(CCACHE_ENV, "1") not in ("0", "no", "false") and shutil.which("ccache") is not None


def make_vars(target: Target, env: dict[str, str] | None = None, *, srctree: Path | None = None,
              kbuild: Path | None = None) -> dict[str, str]:
    """Layered: arch (ARCH, CROSS_COMPILE), the compile cache (CC=ccache <compiler>, when ccache is
    installed and KTAILOR_CCACHE is not 0), reproducibility (who and where built it), then the user's.
    Given the source tree and the kbuild dir, also the path map that keeps a ccache build's images
    independent of where the build dir is (see source_path_map)."""
    prefix = target.arch.compiler_prefix()
    layered = {"ARCH": target.arch.kernel_arch, "CROSS_COMPILE": prefix}
    if ccache_enabled(env):
        layered["CC"] = f"ccache {prefix}gcc"  # distcc, when asked for, runs behind it (CCACHE_PREFIX)
    elif distcc_hosts(os.environ if env is None else env):
        layered["CC"] = f"distcc {prefix}gcc"
        # distcc renames gcc to <triplet>-gcc, and `$(CC) --version` then puts that name into the image
        # (CONFIG_CC_VERSION_TEXT, LINUX_COMPILER): the image would differ from a local build's
        layered["DISTCC_NO_REWRITE_CROSS"] = "1"
    # The kernel stamps these into the image (init/version.c, /proc/version): fixed, so that two builds of
    # the same inputs on two machines give the same bytes (Documentation/kbuild/reproducible-builds.rst).
    # KBUILD_BUILD_TIMESTAMP is set per build from the source tree (build.py).
    layered |= {"KBUILD_BUILD_USER": "ktailor", "KBUILD_BUILD_HOST": "ktailor", "KBUILD_BUILD_VERSION": "1"}
    layered.update(user_make_vars(env))
    if srctree is not None and kbuild is not None and "ccache" in layered.get("CC", "").split():
        layered["KCFLAGS"] = f"{layered.get('KCFLAGS', '')} {source_path_map(srctree, kbuild)}".strip()
    return layered


def source_path_map(srctree: Path, kbuild: Path) -> str:
    """With the build dir as ccache's base dir, gcc is handed the source tree as a path relative to the kbuild
    dir (../../linux), which the kernel's own -fmacro-prefix-map=<absolute srctree>/= does not
    strip: __FILE__ in every WARN/BUG string would then carry the build dir's depth into the image (found by
    `doit reproduce`: .text differed, 5.10.262 x86_64-micro). Mapping the relative form to nothing too gives
    the same "kernel/fork.c" either way."""
    return f"-ffile-prefix-map={os.path.relpath(srctree, kbuild)}/="


def ccache_env(env: dict[str, str], cache_dir: Path, stats_log: Path, base_dir: Path) -> dict[str, str]:
    """The environment make runs in: ccache's directory under ktailor's cache (KTAILOR_CCACHE_DIR moves it),
    a per-build stats log, so build.json can say how many compiles the cache answered, and the build dir as
    ccache's base dir: absolute paths under it (the source tree, linux-<version>) are hashed relative to the
    kbuild dir (../../linux, the same for every release), so the next point release's unchanged files and
    another build dir still hit. Depend mode (CCACHE_DEPEND): the key comes from the source and the headers kbuild's
    own -MMD names, not from a preprocessor pass per miss — filling an empty cache cost 1.24x a build without
    ccache in preprocessor mode and 0.97x in depend mode (6.1.187, x86_64-micro; bench/cache.py, README)."""
    directory = Path(env[CCACHE_DIR_ENV]).expanduser() if env.get(CCACHE_DIR_ENV) else cache_dir / "ccache"
    return {"CCACHE_DIR": str(directory), "CCACHE_STATSLOG": str(stats_log), "CCACHE_BASEDIR": str(base_dir),
            "CCACHE_DEPEND": "1"}


def ccache_counts(stats_log: Path) -> dict[str, int]:
    """hits / misses from a ccache stats log (one counter name per line, `# <file>` before each compile)."""
    counts = {"hits": 0, "misses": 0, "remote_hits": 0, "uncacheable": 0}
    if not stats_log.is_file():
        return counts
    for line in stats_log.read_text(errors="replace").splitlines():
        word = line.strip()
        if word in ("direct_cache_hit", "preprocessed_cache_hit"):
            counts["hits"] += 1
        elif word == "cache_miss":
            counts["misses"] += 1
        elif word == "remote_storage_hit":
            counts["remote_hits"] += 1
        elif word and not word.startswith("#") and "storage" not in word and not word.endswith("_miss"):
            counts["uncacheable"] += 1
    return counts


def make_argv(srctree: Path, kbuild: Path, variables: dict[str, str], goals: list[str], jobs: int | None = None) -> list[str]:
    argv = ["make", "-C", str(srctree), f"O={kbuild}"]
    if jobs:
        argv.append(f"-j{jobs}")
    argv += [f"{k}={v}" for k, v in variables.items()]
    return argv + goals


def jobs_from_env(env: dict[str, str] | None = None) -> int:
    """JOBS, else the CPU count — or, with distcc hosts, their slots when those are more."""
    env = os.environ if env is None else env
    raw = env.get("JOBS", "")
    if not raw:
        return max(os.cpu_count() or 1, slots(distcc_hosts(env)))
    if not raw.isdigit() or int(raw) < 1:
        raise InputError(f"JOBS={raw!r} is not a positive whole number; set e.g. JOBS=4.")
    return int(raw)


def compiler_name(target: Target, variables: dict[str, str]) -> str:
    """The compiler itself (CC without its ccache/distcc wrappers)."""
    words = [w for w in (variables.get("CC") or "").split() if w not in WRAPPERS]
    return words[0] if words else f"{variables.get('CROSS_COMPILE', '')}gcc"


def compiler_fingerprint(target: Target, env: dict[str, str] | None = None) -> str:
    """Resolved compiler path + size + mtime: changes when the toolchain changes, costs one stat."""
    variables = make_vars(target, env)
    name = compiler_name(target, variables).split()[0]
    found = shutil.which(name)
    if not found:
        return f"{name}:missing"
    real = Path(found).resolve()
    stat = real.stat()
    return f"{real}:{stat.st_size}:{stat.st_mtime_ns}"


def require_tools(target: Target, variables: dict[str, str], env: dict[str, str] | None = None) -> None:
    wrappers = [w for w in (variables.get("CC") or "").split() if w in WRAPPERS]
    if distcc_hosts(os.environ if env is None else env) and "distcc" not in wrappers:
        wrappers.append("distcc")  # behind ccache, through CCACHE_PREFIX
    needed = ["make", "flex", "bison", "bc", *wrappers, compiler_name(target, variables).split()[0]]
    if target.type.modules:  # modules_install runs depmod; kbuild makes the signing key with openssl
        needed += ["depmod", "openssl"]
    missing = [tool for tool in needed if not (shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin"))]
    if missing:
        packages = " ".join(sorted({TOOL_PACKAGES.get(t, t) for t in missing}))
        raise EnvironmentProblem(f"{', '.join(missing)} not found on PATH, needed to build {target.name}; "
                                 f"install them (Debian/Ubuntu: apt-get install {packages}).")


def compiler_version(target: Target, variables: dict[str, str]) -> str:
    name = compiler_name(target, variables).split()[0]
    try:
        out = subprocess.run([name, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return f"{name}: unknown"
    return out.splitlines()[0] if out else name
