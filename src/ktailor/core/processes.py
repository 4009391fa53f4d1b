"""Child processes that never outlive ktailor: make, QEMU, tar and xz die with the step that started them.

Each long-running child starts in its own session (so a Ctrl-C meant for ktailor reaches ktailor, and
the whole tree of make's compilers can be signalled at once); when the step ends for any reason —
an exception, KeyboardInterrupt, a timeout — the group is sent SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any


def start(argv: list[str], **kwargs: Any) -> subprocess.Popen:
    return subprocess.Popen(argv, start_new_session=True, **kwargs)


def stop(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    """End the process and everything it started (its process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # the leader is gone (not yet reaped by anyone else, so its group id is still its own): stragglers of
    # its group (a compiler make had started) get the final signal too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def reaped(argv: list[str], **kwargs: Any) -> Iterator[subprocess.Popen]:
    """Start `argv`; whatever happens in the block, no process of its group is left running after it."""
    process = start(argv, **kwargs)
    try:
        yield process
    finally:
        if process.poll() is None:
            stop(process)
