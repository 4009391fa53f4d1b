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

from .errors import EnvironmentProblem, InputError
from .targets import Target

MAKE_VARS_ENV = "KTAILOR_MAKE_VARS"
# Variables ktailor owns: a user setting them would build a different target than the one named.
RESERVED_MAKE_VARS = {"ARCH", "SRCARCH", "O", "CROSS_COMPILE", "KCONFIG_ALLCONFIG", "KCONFIG_CONFIG"}
TOOL_PACKAGES = {"aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu", "x86_64-linux-gnu-gcc": "gcc-x86-64-linux-gnu",
                 "gcc": "gcc", "make": "make", "flex": "flex", "bison": "bison", "bc": "bc"}


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


def make_vars(target: Target, env: dict[str, str] | None = None) -> dict[str, str]:
    """Layered: arch (ARCH, CROSS_COMPILE) then the user's."""
    layered = {"ARCH": target.arch.kernel_arch, "CROSS_COMPILE": target.arch.compiler_prefix()}
    layered.update(user_make_vars(env))
    return layered


def make_argv(srctree: Path, kbuild: Path, variables: dict[str, str], goals: list[str], jobs: int | None = None) -> list[str]:
    argv = ["make", "-C", str(srctree), f"O={kbuild}"]
    if jobs:
        argv.append(f"-j{jobs}")
    argv += [f"{k}={v}" for k, v in variables.items()]
    return argv + goals


def jobs_from_env(env: dict[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get("JOBS", "")
    if not raw:
        return os.cpu_count() or 1
    if not raw.isdigit() or int(raw) < 1:
        raise InputError(f"JOBS={raw!r} is not a positive whole number; set e.g. JOBS=4.")
    return int(raw)


def compiler_name(target: Target, variables: dict[str, str]) -> str:
    return variables.get("CC") or f"{variables.get('CROSS_COMPILE', '')}gcc"


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


def require_tools(target: Target, variables: dict[str, str]) -> None:
    needed = ["make", "flex", "bison", "bc", compiler_name(target, variables).split()[0]]
    missing = [tool for tool in needed if not shutil.which(tool)]
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
