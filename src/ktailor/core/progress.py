"""Progress display for long steps: tqdm bars on a terminal, sparse log lines otherwise.

A bar redraws itself with carriage returns, which in a cron mail, a journal or `doit > log 2>&1`
becomes one garbage line per half second. So a bar is drawn only when stderr is a terminal; anywhere
else the same calls print an `I:` line at most every KTAILOR_PROGRESS_SECONDS (default 60) with the
count, the rate and what is left, and one closing line for a step that took longer than that.
KTAILOR_QUIET silences both (the tests; the shipped cron job and systemd unit keep their logs short).
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from tqdm import tqdm

INTERVAL_ENV = "KTAILOR_PROGRESS_SECONDS"
DEFAULT_INTERVAL_S = 60.0


def bar(**kwargs: Any) -> tqdm | LogProgress:
    """A progress display on stderr for `total` units of `unit` (tqdm's keywords)."""
    stream = kwargs.setdefault("file", sys.stderr)
    if os.environ.get("KTAILOR_QUIET"):
        kwargs["disable"] = True
    elif not _is_terminal(stream):
        return LogProgress(interval_s=_interval(), **kwargs)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(**kwargs)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal
        return False


def _interval() -> float:
    try:
        return max(1.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


class LogProgress:
    """tqdm's interface (update, set_postfix_str, n, total, context manager) as sparse `I:` lines."""

    def __init__(self, *, total: float | None = None, initial: float = 0, unit: str = "it", unit_scale: bool = False,
                 desc: str = "", postfix: str | None = None, file: IO[str] | None = None, interval_s: float = 60.0,
                 clock=time.monotonic, **_tqdm_only: Any) -> None:
        self.total = total
        self.n = initial
        self.unit = unit
        self.unit_scale = unit_scale
        self.desc = desc
        self.postfix = postfix or ""
        self.file = file if file is not None else sys.stderr
        self.interval_s = interval_s
        self.clock = clock
        self.started = self.last_line = clock()
        self.initial = initial
        self.lines = 0

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(finished=kind is None)

    def update(self, n: float = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last_line >= self.interval_s:
            self.last_line = now
            self._line(self._status(now))

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def close(self, finished: bool = True) -> None:
        """One closing line, only for a step long enough to have logged along the way."""
        if self.lines and finished:
            elapsed = self.clock() - self.started
            self._line(f"{self._amount(self.n)} in {duration(elapsed)} ({self._rate(elapsed)})")

    def _status(self, now: float) -> str:
        elapsed = now - self.started
        if self.total:
            count = f"{self._amount(self.n, unit=self.unit_scale)}/{self._amount(self.total)}"
            count += f" ({min(100, 100 * self.n / self.total):.0f}%)"
        else:
            count = self._amount(self.n)
        parts = [count, self._rate(elapsed)]
        done = self.n - self.initial
        if self.total and done > 0 and self.n < self.total:
            parts.append(f"about {duration((self.total - self.n) * elapsed / done)} left")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def _rate(self, elapsed: float) -> str:
        per_s = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        return f"{self._amount(per_s, decimals=1)}/s"

    def _amount(self, value: float, unit: bool = True, decimals: int = 0) -> str:
        """`120 step`, `2.0 step` (a rate), `600.0 MB` (unit_scale); `unit=False` leaves the unit off."""
        prefix = ""
        if self.unit_scale:
            for prefix in ("", "k", "M", "G", "T"):
                if abs(value) < 1000 or prefix == "T":
                    break
                value /= 1000
            decimals = 1 if prefix else decimals
        number = f"{value:.{decimals}f}"
        return f"{number} {prefix}{self.unit}" if unit else f"{number} {prefix}".rstrip()

    def _line(self, text: str) -> None:
        self.lines += 1
        print(f"I: {self.desc}: {text}" if self.desc else f"I: {text}", file=self.file, flush=True)


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def info(message: str) -> None:
    print(f"I: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"W: {message}", file=sys.stderr, flush=True)
