"""The one-screen table a `doit` run over several targets ends with: how far each target got and what
its evidence says (image size, probes, acceptance) and the time this run spent on it.

doit's console reporter, extended: it keeps doit's own lines and failure reports, notes each
per-target task's outcome and duration as the run goes, and reads the figures from the artifacts
(Artifacts names them) once the run completes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from doit.reporter import ConsoleReporter

from ktailor.core.progress import duration
from ktailor.core.records import read_optional
from ktailor.project.layout import Artifacts

STAGE_ORDER = ("config", "report", "build", "ledger", "verify", "boot", "accept", "reproduce", "install")


@dataclass
class TargetRun:
    """What one run did to one (kernel, target)."""

    reached: str = ""  # the furthest stage that succeeded or was already up to date
    failed: str = ""  # the first stage that failed in this run
    seconds: float = 0.0

    def note(self, stage: str, ok: bool) -> None:
        if not ok:
            if not self.failed or STAGE_ORDER.index(stage) < STAGE_ORDER.index(self.failed):
                self.failed = stage
        elif not self.reached or STAGE_ORDER.index(stage) > STAGE_ORDER.index(self.reached):
            self.reached = stage


@dataclass
class Summary:
    """Outcomes by task name (`build:x86_64-micro@6.1.192`), turned into table rows."""

    runs: dict[str, TargetRun] = field(default_factory=dict)

    def note(self, task_name: str, ok: bool, seconds: float = 0.0) -> None:
        stage, _, target = task_name.partition(":")
        if stage not in STAGE_ORDER or not target:
            return
        run = self.runs.setdefault(target, TargetRun())
        run.note(stage, ok)
        run.seconds += seconds

    def rows(self, artifacts_of: Callable[[str], Artifacts | None]) -> list[list[str]]:
        rows = []
        for name, run in self.runs.items():
            files = artifacts_of(name)
            stage = f"FAILED at {run.failed}" if run.failed else (run.reached or "-")
            rows.append([name, stage, *(_evidence(files) if files else ["-", "-", "-"]), duration(run.seconds)])
        return rows


def _evidence(files: Artifacts) -> list[str]:
    # the compressed image a VMM boots or a bootloader loads (bzImage, Image), not the ELF vmlinux
    shipped = [(name, path) for name, path in files.images.items() if name != "vmlinux" and path.is_file()]
    size = f"{shipped[-1][0]} {shipped[-1][1].stat().st_size / 1e6:.2f} MB" if shipped else "-"
    return [size, _counted(files.boot, "probes"), _counted(files.accept, "workloads")]


def _counted(report_path: Path, key: str) -> str:
    """`passed/total` of a stage's entries, or its status when it has none (skipped, not reached)."""
    report = read_optional(report_path)
    if report is None:
        return "-"
    entries = report.get(key) or []
    if report.get("status") == "skipped" or not entries:
        return str(report.get("status", "-"))
    passed = sum(1 for entry in entries if isinstance(entry, dict) and entry.get("status") == "pass")
    text = f"{passed}/{len(entries)}"
    return text if report.get("status") == "pass" else f"{text} {report.get('status')}"


def format_table(rows: list[list[str]]) -> str:
    header = ["target", "stage reached", "image", "probes", "acceptance", "time"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * width for width in widths), *lines[1:]]) + "\n"


def summary_reporter(artifacts_of: Callable[[str], Artifacts | None], minimum_targets: int = 2) -> type:
    """A doit reporter class (doit instantiates it) that ends a multi-target run with the summary table.
    `artifacts_of` maps a task's target part (`x86_64-micro@6.1.192`) to its Artifacts."""

    class SummaryReporter(ConsoleReporter):
        desc = "console output, then a summary table of the targets the run touched"

        def __init__(self, outstream, options):
            super().__init__(outstream, options)
            self.summary = Summary()
            self.started: dict[str, float] = {}

        def execute_task(self, task):
            super().execute_task(task)
            self.started[task.name] = time.monotonic()

        def _elapsed(self, task) -> float:
            started = self.started.pop(task.name, None)
            return time.monotonic() - started if started is not None else 0.0

        def add_success(self, task):
            super().add_success(task)
            if task.actions:  # not the `stage:target@<default version>` aliases
                self.summary.note(task.name, ok=True, seconds=self._elapsed(task))

        def add_failure(self, task, fail):
            super().add_failure(task, fail)
            if task.actions:
                self.summary.note(task.name, ok=False, seconds=self._elapsed(task))

        def skip_uptodate(self, task):
            super().skip_uptodate(task)
            if task.actions:
                self.summary.note(task.name, ok=True)

        def complete_run(self):
            super().complete_run()
            if len(self.summary.runs) >= minimum_targets:
                self.write("\n" + format_table(self.summary.rows(artifacts_of)))

    return SummaryReporter
