"""Run the doit graph from the invoke tasks (upgrade pre-flight, security-update, menuconfig).

doit runs in a child process so each run re-reads versions.toml and the fragments, exactly as a
user's `doit` would; its output streams through to the terminal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def task_name(stage: str, target: str, version: str | None = None, default_version: str | None = None) -> str:
    """`build:x86_64-micro` for the default kernel, `build:x86_64-micro@6.1.5` for the others."""
    if version is None or version == default_version:
        return f"{stage}:{target}"
    return f"{stage}:{target}@{version}"


def run_doit(root: Path, *args: str, env: dict[str, str] | None = None, capture: bool = False) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "doit", "-f", str(root / "dodo.py"), "-d", str(root), *args]
    return subprocess.run(argv, cwd=root, env=dict(os.environ if env is None else env),
                          capture_output=capture, text=True)
