"""Output that suits where it goes: bars on a terminal, sparse `I:` lines in logs, a summary table at the end."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

from ktailor.core import progress
from ktailor.core.progress import LogProgress
from ktailor.project.layout import Artifacts
from ktailor.run_summary import Summary, format_table
from ktailor.stages.build import COUNT_FILE, estimated_steps


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_one_line_per_interval_with_count_rate_and_time_left():
    out, clock = io.StringIO(), Clock()
    with LogProgress(total=1000, unit="step", desc="build x86_64-micro 5.10.262", file=out, interval_s=60,
                     clock=clock) as shown:
        for _ in range(1000):
            clock.now += 0.5  # 2 steps/s: 500 s in all
            shown.update(1)
            shown.set_postfix_str("drivers/virtio/virtio_mmio.o", refresh=False)
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert 8 <= len(lines) <= 9  # every 60 s of 500 s, and one closing line, not one per step
    assert lines[0] == ("I: build x86_64-micro 5.10.262: 120/1000 step (12%), 2.0 step/s, about 7m20s left, "
                        "drivers/virtio/virtio_mmio.o")
    assert lines[-1] == "I: build x86_64-micro 5.10.262: 1000 step in 8m20s (2.0 step/s)"


def test_bytes_are_scaled_and_a_short_step_logs_nothing():
    out, clock = io.StringIO(), Clock()
    with LogProgress(total=2_000_000_000, unit="B", unit_scale=True, desc="extract linux-6.1.tar.xz", file=out,
                     interval_s=5, clock=clock) as shown:
        clock.now = 6
        shown.update(600_000_000)
    assert out.getvalue().splitlines()[0] == \
        "I: extract linux-6.1.tar.xz: 600.0 MB/2.0 GB (30%), 100.0 MB/s, about 14s left"
    quiet = io.StringIO()
    with LogProgress(total=10, unit="probe", file=quiet, interval_s=60, clock=Clock()) as shown:
        shown.update(10)
    assert quiet.getvalue() == ""


def test_a_failed_step_has_no_closing_line():
    out, clock = io.StringIO(), Clock()
    with pytest.raises(RuntimeError), LogProgress(total=4, unit="probe", file=out, interval_s=1, clock=clock) as shown:
        clock.now = 2
        shown.update(1)
        raise RuntimeError("guest died")
    assert len(out.getvalue().splitlines()) == 1


def test_bar_draws_on_a_terminal_and_logs_lines_elsewhere(monkeypatch, tmp_path):
    monkeypatch.delenv("KTAILOR_QUIET", raising=False)
    with (tmp_path / "log").open("w") as log:
        assert isinstance(progress.bar(total=3, file=log), LogProgress)
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as terminal:
        shown = progress.bar(total=3, file=terminal)
        assert isinstance(shown, tqdm) and not shown.disable
        shown.close()
    os.close(leader)
    monkeypatch.setenv("KTAILOR_QUIET", "1")
    with (tmp_path / "log").open("w") as log:
        shown = progress.bar(total=3, file=log)
        assert isinstance(shown, tqdm) and shown.disable


def test_the_build_bar_is_sized_by_another_release_then_by_the_config(tmp_path):
    files = Artifacts("6.1.192", "x86_64-micro", tmp_path / "6.1.192" / "x86_64-micro", tmp_path / "prefix", ())
    assert estimated_steps(files) is None  # nothing to go by
    files.kbuild.mkdir(parents=True)
    files.config.write_text("CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=1\n" + "CONFIG_E=y\n" * 98)
    assert estimated_steps(files) == round(100 * 2.3)
    other = tmp_path / "5.10.262" / "x86_64-micro"
    other.mkdir(parents=True)
    (other / COUNT_FILE).write_text("1642\n")
    (tmp_path / "5.10.262" / "aarch64-micro").mkdir()
    (tmp_path / "5.10.262" / "aarch64-micro" / COUNT_FILE).write_text("2400\n")
    assert estimated_steps(files) == 1642  # the same target of another release, not another target


def test_summary_keeps_the_furthest_stage_and_the_first_failure():
    summary = Summary()
    summary.note("config:x86_64-micro", ok=True, seconds=3)
    summary.note("build:x86_64-micro", ok=True, seconds=200)
    summary.note("verify:x86_64-micro", ok=True, seconds=1)
    summary.note("build:aarch64-micro@6.1.2", ok=False, seconds=30)
    summary.note("verify:aarch64-micro@6.1.2", ok=False)
    summary.note("download:6.1.2", ok=True)  # per release, not a target
    rows = summary.rows(lambda name: None)
    assert rows == [["x86_64-micro", "verify", "-", "-", "-", "3m24s"],
                    ["aarch64-micro@6.1.2", "FAILED at build", "-", "-", "-", "30s"]]
    table = format_table(rows).splitlines()
    assert table[0].split() == ["target", "stage", "reached", "image", "probes", "acceptance", "time"]
    assert table[2].startswith("x86_64-micro         verify")


def test_a_whole_doit_run_logged_to_a_file_has_no_carriage_return_and_ends_with_the_summary(two_kernels):
    root = two_kernels.root
    (root / "dodo.py").write_text((Path(__file__).resolve().parents[1] / "dodo.py").read_text())
    env = {k: v for k, v in os.environ.items() if k != "KTAILOR_QUIET"} | {
        "KTAILOR_PROGRESS_SECONDS": "1", "FAKE_SLEEP": "1.5"}
    log = root.parent / "doit.log"
    with log.open("w") as handle:
        done = subprocess.run([sys.executable, "-m", "doit", "-f", str(root / "dodo.py"), "-d", str(root), "verify"],
                              cwd=root, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text
    assert "I: build x86_64-micro 6.1.1: 1/" in text  # the sparse line of a slow step, with its total
    table = text[text.index("target  "):].splitlines()
    assert len(table) == 2 + 4
    rows = {line.split()[0]: line.split() for line in table[2:]}
    assert set(rows) == {"x86_64-micro", "aarch64-micro", "x86_64-micro@6.1.2", "aarch64-micro@6.1.2"}
    assert all(row[1] == "verify" and row[2] in ("bzImage", "Image") and row[4] == "MB" for row in rows.values())
