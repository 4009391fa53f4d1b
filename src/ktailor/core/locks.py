"""Locks so that two runs (the nightly unit and a person) never work on the same files at once.

fcntl.flock on a lock file beside what it protects: the build dir (doit's state, the source trees
and every kbuild) for the whole of a doit, security-update, clean, upgrade or menuconfig run; each
download-cache entry while it is fetched; the install prefix while install swaps links and prune
removes what no link points to. The second run waits, saying for whom; with KTAILOR_NO_WAIT=1
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

from ktailor.core.errors import EnvironmentProblem
from ktailor.core.progress import warn

NO_WAIT_ENV = "KTAILOR_NO_WAIT"
BUILD_LOCK_ENV = "KTAILOR_BUILD_LOCK_HELD"  # in the environment holding_build_dir gives its doit children
BUILD_LOCK_NAME = ".lock"  # <build dir>/.lock
PREFIX_LOCK_NAME = ".ktailor.lock"  # <prefix>/.ktailor.lock

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


def is_lock_file(path: Path) -> bool:
    """A lock file by its name (`.lock`, `*.lock`): clean never removes one, see the module docstring."""
    return path.name.endswith(".lock") and not path.is_dir()


def build_lock_path(build_dir: Path) -> Path:
    """The build dir's lock file, resolved: BUILD_LOCK_ENV holds exactly this string."""
    return (build_dir / BUILD_LOCK_NAME).resolve()


@contextlib.contextmanager
def holding_build_dir(build_dir: Path, env: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """Hold `<build_dir>/.lock` for the with-block (waiting for the holder, or LockBusy at once with
    KTAILOR_NO_WAIT=1 in `env`) and yield the environment for the doit runs started meanwhile: `env` with
    BUILD_LOCK_ENV naming this lock, so that they go ahead (dag.lock_build_dir) instead of waiting for their
    own parent. The process's environment is left alone. When `env` says a parent process holds this very
    lock for us, nothing is taken: waiting for it would wait forever."""
    lock = build_lock_path(build_dir)
    children = {**env, BUILD_LOCK_ENV: str(lock)}
    if env.get(BUILD_LOCK_ENV) == str(lock) and lock not in _held:
        yield children
        return
    try:
        acquire(lock, f"the build dir {build_dir}", wait=not no_wait(env))
    except OSError as exc:
        raise EnvironmentProblem(f"cannot use the build dir {build_dir} ({exc.strerror or exc}: {exc.filename or lock}); "
                                 "check KTAILOR_BUILD_DIR and its permissions.") from None
    try:
        yield children
    finally:
        release(lock)


@contextlib.contextmanager
def prefix_lock(prefix: Path, env: Mapping[str, str]) -> Iterator[Path]:
    """Hold `<prefix>/.ktailor.lock` for the with-block, so that install's rename + link swap and prune's
    removals never interleave (prune would see a new store dir no link points to yet). Creates the prefix
    when missing; one that cannot be written is an EnvironmentProblem naming it and the fix."""
    lock = prefix / PREFIX_LOCK_NAME
    try:
        acquire(lock, f"the install prefix {prefix}", wait=not no_wait(env))
    except OSError as exc:
        raise EnvironmentProblem(f"cannot lock the install prefix {prefix} ({exc.strerror or exc}: "
                                 f"{exc.filename or lock}); run as a user who can write to it (or fix its permissions), "
                                 "or choose another prefix with KTAILOR_PREFIX=/some/dir. Nothing was installed or "
                                 "removed.") from None
    try:
        yield lock
    finally:
        release(lock)
