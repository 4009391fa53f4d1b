"""Running a VM: QEMU with the console on a pipe, every line timestamped and saved, killed at the timeout;
`KTAILOR-AWAIT` lines from init trigger host actions. Also the log the stages report through."""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ktailor.core.processes import reaped
from ktailor.core.progress import bar, info, warn
from ktailor.guest.probes import QEMU_PREFIX


class Log(Protocol):
    """What the stage reports through; logging.Logger fits, and so does StderrLog."""

    def info(self, message: str) -> None: ...
    def warning(self, message: str) -> None: ...


class StderrLog:
    """The house `I:` / `W:` lines on stderr."""

    def info(self, message: str) -> None:
        info(message)

    def warning(self, message: str) -> None:
        warn(message)


@dataclass
class VmRun:
    lines: list[str] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)  # seconds after QEMU started, per line
    returncode: int | None = None
    timed_out: bool = False
    wall_s: float = 0.0


def run_vm(argv: list[str], timeout_s: float, console_log: Path, label: str, probe_count: int,
           on_await: dict[str, Any] | None = None) -> VmRun:
    """Run QEMU with the console on a pipe, every line timestamped and saved; kill it at the timeout.
    A `KTAILOR-AWAIT name=<key>` line from init runs on_await[key] (e.g. pressing Ctrl-Alt-Del over QMP)."""
    run = VmRun()
    on_await = on_await or {}
    lock = threading.Lock()
    started = time.monotonic()
    with console_log.open("w") as log:
        log.write("$ " + shlex.join(argv) + "\n")
        with reaped(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:

            def pump(stream: Any, prefix: str) -> None:
                for raw in iter(stream.readline, b""):
                    line = prefix + raw.decode("utf-8", "replace").rstrip("\r\n")
                    with lock:
                        run.stamps.append(time.monotonic() - started)
                        run.lines.append(line)
                        log.write(line + "\n")
                        log.flush()
                    if (key := line.partition("KTAILOR-AWAIT name=")[2].strip()) and key in on_await:
                        threading.Thread(target=act, args=(key,), daemon=True).start()

            def act(key: str) -> None:
                try:
                    on_await[key]()
                    note = f"[ktailor] host did {key} as init asked"
                except OSError as exc:
                    note = f"[ktailor] host could not do {key}: {exc}"
                with lock:
                    run.stamps.append(time.monotonic() - started)
                    run.lines.append(note)
                    log.write(note + "\n")

            readers = [threading.Thread(target=pump, args=(process.stdout, ""), daemon=True),
                       threading.Thread(target=pump, args=(process.stderr, QEMU_PREFIX), daemon=True)]
            for reader in readers:
                reader.start()
            with bar(total=probe_count, unit="probe", desc=f"boot {label}", postfix="kernel booting") as progress:
                while process.poll() is None:
                    if time.monotonic() - started > timeout_s:
                        run.timed_out = True
                        process.kill()
                        break
                    time.sleep(0.1)
                    with lock:
                        done = sum("KTAILOR-PROBE " in line for line in run.lines)
                    if done > progress.n:
                        progress.set_postfix_str("probing", refresh=False)
                        progress.update(done - progress.n)
                run.returncode = process.wait()
            run.wall_s = time.monotonic() - started
            for reader in readers:
                reader.join(timeout=5)
            if run.timed_out:
                log.write(f"[ktailor] killed QEMU after {timeout_s:g}s\n")
    return run
