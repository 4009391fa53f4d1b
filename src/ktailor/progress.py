"""Progress display for long steps: tqdm bars on a terminal, sparse log lines otherwise."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm


def bar(**kwargs: Any) -> tqdm:
    """A tqdm bar on stderr; disabled when KTAILOR_QUIET is set (tests, cron)."""
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("mininterval", 0.5)
    if os.environ.get("KTAILOR_QUIET"):
        kwargs["disable"] = True
    return tqdm(**kwargs)


def info(message: str) -> None:
    print(f"I: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"W: {message}", file=sys.stderr, flush=True)
