"""Locks so that two runs (the nightly unit and a person) never work on the same files at once.

fcntl.flock on a lock file beside what it protects: the build dir (doit's state, the source trees
and every kbuild) for the whole of a doit run, each download-cache entry while it is fetched, and
the security-update run itself. The second run waits, saying for whom; with KTAILOR_NO_WAIT=1
(`invoke security-update --no-wait`) it fails at once with one paragraph instead. The kernel drops
a flock when its holder dies, so a killed run never leaves a stale lock behind. Lock files are never
deleted: a run waiting on one would be left holding a lock on a file nobody else opens.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from .errors import EnvironmentProblem
from .progress import warn

NO_WAIT_ENV = "KTAILOR_NO_WAIT"
BUILD_LOCK_ENV = "KTAILOR_BUILD_LOCK_HELD"  # set by security-update for its own doit children (they must not wait for it)

_held: dict[Path, tuple[IO[str], int]] = {}  # lock file -> (open file, nesting depth), this process's own


class LockBusy(EnvironmentProblem):
    """Another run holds the lock and we were asked not to wait."""


def no_wait(env: Mapping[str, str]) -> bool:
    return env.get(NO_WAIT_ENV, "") not in ("", "0", "no", "false")


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    text = handle.read().strip()
    return text or "another process"


def acquire(path: Path, what: str, *, wait: bool = True) -> None:
    """Take the lock at `path` (re-entrant within this process); waits, or raises LockBusy."""
    path = path.resolve()
    if path in _held:
        handle, depth = _held[path]
        _held[path] = (handle, depth + 1)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(handle)
        if not wait:
            handle.close()
            raise LockBusy(f"{what} is in use by {holder} (lock {path}); wait for it to finish, or run again "
                           f"without {NO_WAIT_ENV}=1 to wait.") from None
        warn(f"waiting for {holder} to finish with {what} (lock {path})")
        started = time.monotonic()
        fcntl.flock(handle, fcntl.LOCK_EX)
        warn(f"got {what} after {time.monotonic() - started:.0f}s")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} ({' '.join(sys.argv[:3])[:120]})\n")
    handle.flush()
    _held[path] = (handle, 1)


def release(path: Path) -> None:
    path = path.resolve()
    handle, depth = _held[path]
    if depth > 1:
        _held[path] = (handle, depth - 1)
        return
    del _held[path]
    handle.seek(0)
    handle.truncate()
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


@contextlib.contextmanager
def locked(path: Path, what: str, *, wait: bool = True) -> Iterator[None]:
    acquire(path, what, wait=wait)
    try:
        yield
    finally:
        release(path)
