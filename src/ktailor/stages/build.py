"""The build stage: make the target's images out of tree, quietly, with a progress bar.

The full make output goes to build.log in the target dir; on failure the last lines and the log
path are shown. The number of compile steps of the last successful build sizes the next bar.
"""

from __future__ import annotations

import os
import platform
import re
import selectors
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ktailor.core.errors import BuildFailed
from ktailor.core.processes import reaped
from ktailor.core.progress import bar, info
from ktailor.core.records import read_optional, write_json_atomically
from ktailor.farm import modules
from ktailor.farm.compile_farm import engine_record, redacted
from ktailor.farm.compile_farm import make_env as farm_env
from ktailor.farm.compiled import write_sources
from ktailor.farm.toolchain import ccache_counts, ccache_env, compiler_version, jobs_from_env, make_argv
from ktailor.project.layout import Artifacts
from ktailor.stages.base import Context, Stage
from ktailor.stages.extract import source_date

STEP_RE = re.compile(r"^\s{2}([A-Z][A-Z0-9_]*)\s+(\S+)")
COUNT_FILE = "build.steps"
MODULES_LOG = "modules_install.log"  # beside build.log


def output_lines(pipe: IO[bytes], poll_s: float = 0.5) -> Iterator[str]:
    """The lines a child writes to `pipe`, as they come, until it closes.

    Waits in select() with a timeout rather than in a blocking read: a Ctrl-C that the kernel hands to
    another thread of this process (tqdm's monitor) is then acted on within `poll_s`, not when make next
    prints a line — which, in a long link step, can be minutes away.
    """
    fd = pipe.fileno()
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            if not selector.select(timeout=poll_s):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                yield line.decode(errors="replace") + "\n"
    if pending:
        yield pending.decode(errors="replace")


def run_make(srctree: Path, kbuild: Path, variables: dict[str, str], goals: list[str], jobs: int, log: Path,
             label: str, env: dict[str, str] | None = None, estimate: int | None = None) -> float:
    """Run make, stream its output to `log`, show progress; return the wall time in seconds.

    The bar's total is the step count of the last full build logged beside `log`, else `estimate`.
    """
    argv = make_argv(srctree, kbuild, variables, goals, jobs)
    counter = log.with_name(COUNT_FILE)
    expected = _steps_in(counter) or estimate
    tail: deque[str] = deque(maxlen=25)
    steps = 0
    started = time.monotonic()
    info(f"build {label}: make -j{jobs} {' '.join(goals)} (log: {log})")
    with log.open("w") as handle, bar(total=expected, unit="step", desc=f"build {label}") as progress:
        handle.write("$ " + " ".join(argv) + "\n")
        with reaped(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    env=None if env is None else os.environ | env) as process:
            assert process.stdout is not None
            for line in output_lines(process.stdout):
                handle.write(line)
                tail.append(line.rstrip())
                if match := STEP_RE.match(line):
                    steps += 1
                    progress.update(1)
                    progress.set_postfix_str(match[2][-40:], refresh=False)
            returncode = process.wait()
    elapsed = time.monotonic() - started
    if returncode != 0:
        shown = "\n".join(tail)
        raise BuildFailed(f"make failed for {label} (exit {returncode}) after {elapsed:.0f}s; full log: {log}\n"
                          f"last lines:\n{shown}")
    if steps > 50:  # a no-op make says little about a full build
        counter.write_text(f"{steps}\n")
    return elapsed


def make_modules(srctree: Path, kbuild: Path, variables: dict[str, str], jobs: int, log: Path, label: str,
                 make_env: dict[str, str], env: dict[str, str]) -> float:
    """`make modules_install` into the staging dir (stripped, signed by kbuild), packed into modules.tar."""
    elapsed = run_make(srctree, kbuild, variables | modules.install_variables(kbuild), ["modules_install"], jobs, log,
                       f"{label} modules", make_env)
    modules.pack(kbuild, source_date(srctree, env) or 0)
    return elapsed


def _steps_in(counter: Path) -> int | None:
    text = counter.read_text().strip() if counter.is_file() else ""
    return int(text) if text.isdigit() else None


# make prints about this many steps (CC, AR, LD, GEN…) per `=y` line of .config in a first build; measured
# on 5.10.262: x86_64-micro 1,545 steps / 617 = 2.50, aarch64-micro 1,367 / 646 = 2.12.
STEPS_PER_BUILTIN = 2.3


def estimated_steps(files: Artifacts) -> int | None:
    """What a first build of this target will print: the same target's last build of another release
    (the step counts of neighbouring releases differ by a few percent), else a guess from the .config."""
    siblings = sorted(files.dir.parent.parent.glob(f"*/{files.target}/{COUNT_FILE}"), key=lambda p: p.stat().st_mtime)
    for counter in reversed(siblings):
        if counter.parent != files.dir and (steps := _steps_in(counter)):
            return steps
    if not files.config.is_file():
        return None
    builtins = sum(1 for line in files.config.read_text().splitlines() if line.endswith("=y"))
    return round(builtins * STEPS_PER_BUILTIN) or None


def stamped(variables: dict[str, str], srctree: Path, env: dict[str, str]) -> dict[str, str]:
    """The make variables with KBUILD_BUILD_TIMESTAMP from SOURCE_DATE_EPOCH or the source tree's date."""
    variables = dict(variables)
    if "KBUILD_BUILD_TIMESTAMP" not in variables and (stamp := source_date(srctree, env)) is not None:
        variables["KBUILD_BUILD_TIMESTAMP"] = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(stamp))
    return variables


def build_target(*, srctree: Path, files: Artifacts, variables: dict[str, str], goals: list[str], jobs: int,
                 label: str, compiler: str, env: dict[str, str], cache_dir: Path, build_dir: Path) -> dict:
    """make the images, record what was compiled (sources.json) and how (build.json); returns build.json."""
    files.build_json.unlink(missing_ok=True)
    variables = stamped(variables, srctree, env)
    for log in (files.ccache_stats, files.distcc_log):
        log.unlink(missing_ok=True)
    uses_ccache = "ccache" in variables.get("CC", "").split()
    cache = ccache_env(env, cache_dir, files.ccache_stats, build_dir) if uses_ccache else {}
    farm = farm_env(env, uses_ccache=uses_ccache, distcc_log=files.distcc_log)
    elapsed = run_make(srctree, files.kbuild, variables, goals, jobs, files.build_log, label, cache | farm,
                       estimate=estimated_steps(files))
    if "modules" in goals:
        elapsed += make_modules(srctree, files.kbuild, variables, jobs, files.dir / MODULES_LOG, label, cache | farm, env)
    compiled = write_sources(files.kbuild, srctree, files.sources)
    remote = {"remote": redacted(farm["CCACHE_REMOTE_STORAGE"])} if "CCACHE_REMOTE_STORAGE" in farm else {}
    record = {
        "seconds": round(elapsed, 1), "jobs": jobs, "make_vars": variables, "compiler": compiler,
        "ccache": (ccache_counts(files.ccache_stats) | {"dir": cache["CCACHE_DIR"]} | remote) if cache else None,
        "engine": engine_record(env, files.distcc_log),
        "host": platform.machine(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "compiled": {"sources": len(compiled["sources"]), "headers": len(compiled["headers"])},
    }
    write_json_atomically(files.build_json, record)
    info(f"built {label} in {elapsed:.0f}s ({len(compiled['sources'])} source files compiled)")
    return record


# --- the stage ---------------------------------------------------------------------------------
def run(ctx: Context) -> None:
    variables = ctx.checked_make_vars()
    build_target(srctree=ctx.source_tree, files=ctx.files, variables=variables, goals=ctx.the_target.make_goals,
                 jobs=jobs_from_env(ctx.project.env), label=ctx.label,
                 compiler=compiler_version(ctx.the_target, variables), env=build_env(ctx),
                 cache_dir=ctx.project.cache_dir, build_dir=ctx.project.build_dir)


def build_env(ctx: Context) -> dict[str, str]:
    """The environment of a build: a git source tree's builds are dated by its HEAD commit (an extracted
    tarball's by its newest file, extract.source_date), unless SOURCE_DATE_EPOCH says otherwise."""
    env = ctx.project.env
    if ctx.the_kernel.source is None or env.get("SOURCE_DATE_EPOCH"):
        return env
    stamp = (read_optional(ctx.source_stamp) or {}).get("commit_time")
    return env | {"SOURCE_DATE_EPOCH": str(stamp)} if isinstance(stamp, int) else env


STAGE = Stage(
    "build", "compile each target's images out of tree (make O=…)",
    doc=lambda ctx: f"make {' '.join(ctx.the_target.make_goals)} for {ctx.label.replace(' ', ' on ')}",
    run=run,
    inputs=lambda ctx: [ctx.files.config, ctx.source_stamp],
    outputs=lambda ctx: [*ctx.files.images.values(), ctx.files.system_map, ctx.files.sources],
    state=Context.toolchain_state,
)
