"""One exception tree: *your input is wrong* versus *the environment is broken*.

Every error carries a message written for a human: what is wrong, where (file:line when there is
one), and what to do. The edges (doit actions, invoke tasks, the CLI) print it as one paragraph;
a traceback only appears with KTAILOR_DEBUG=1.
"""

from __future__ import annotations

from pathlib import Path


def line_of(text: str, needle: str) -> int | None:
    """The number of the first line holding `needle` outside a `#` comment: where an error points."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line.split("#", 1)[0]:
            return number
    return None


class KtailorError(Exception):
    """Base class: a message meant for the user."""

    prefix = "E"

    def __init__(self, message: str, *, path: Path | str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        super().__init__(message)

    def __str__(self) -> str:
        message = super().__str__()
        if self.path is None:
            return message
        where = f"{self.path}:{self.line}" if self.line else f"{self.path}"
        return f"{where}: {message}"


class InputError(KtailorError):
    """The user's data (versions.toml, targets.toml, fragments, options) is wrong."""


class EnvironmentProblem(KtailorError):
    """The machine is missing something or a tool failed (network, compiler, QEMU, disk)."""


class DownloadError(EnvironmentProblem):
    """The mirror could not deliver the file."""


class ChecksumMismatch(KtailorError):
    """A downloaded file is not the one versions.toml pins."""


class ConfigAuditFailed(KtailorError):
    """The kernel's kconfig did not give the options the fragments asked for."""


class BuildFailed(EnvironmentProblem):
    """make failed."""


class VerificationFailed(KtailorError):
    """A built artifact is not what it claims, or is over its size budget, or failed to boot."""


# Exit codes, the same for every command (invoke tasks, security-update; doit itself exits 1 on a failed
# task): what kind of failure it was, so a script or a systemd unit can tell them apart.
EXIT_ERROR = 1  # the machine is missing something (a tool, disk space, permissions); the message says what
EXIT_BAD_INPUT = 2  # versions.toml / targets.toml / fragments / options are wrong; nothing was changed
EXIT_CHECK_FAILED = 20  # a signature, checksum, audit, build, verify or boot check failed: NOT installed
EXIT_UNREACHABLE = 30  # kernel.org, releases.json or the mirror could not be reached


def exit_code_for(error: KtailorError) -> int:
    if isinstance(error, DownloadError):
        return EXIT_UNREACHABLE
    if isinstance(error, ChecksumMismatch | VerificationFailed | ConfigAuditFailed):
        return EXIT_CHECK_FAILED
    if isinstance(error, InputError):
        return EXIT_BAD_INPUT
    return EXIT_ERROR


def number_setting(env, variable: str, default: float, fix: str) -> float:
    """A non-negative number from an environment setting, `default` when unset; `fix` ends the error."""
    value = env.get(variable, "")
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if number < 0:
        raise InputError(f"{variable}={value!r} {fix}")
    return number
