"""Which source files a finished build compiled into the kernel: exact, from kbuild's own records.

Every object kbuild compiles leaves a `.<name>.o.cmd` file in the build dir (make O=…) with
`source_<obj> := <the .c/.S file>` and `deps_<obj> := …` (every header that compilation read).
The sources are what was compiled; the headers are what that code includes. Host programs kbuild
builds for itself (scripts/, tools/) are not part of the kernel and are left out. The result is
`sources.json` beside the build: the input to CVE applicability (a CVE whose fix touches none of
these files is not in this kernel).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

SOURCE_RE = re.compile(r"^source_\S+ := (\S+)$", re.MULTILINE)
DEPS_RE = re.compile(r"^deps_\S+ := \\\n((?:.*\\\n)*.*)$", re.MULTILINE)
HOST_DIRS = ("scripts/", "tools/")


def compiled_files(kbuild: Path, srctree: Path) -> tuple[set[str], set[str]]:
    """(sources, headers) as paths relative to the source tree. kbuild writes them absolute, or relative to
    the build dir when the compiler reported them so (ccache with a base dir rewrites paths that way)."""
    root = str(srctree.resolve()) + "/"
    base = str(kbuild.resolve())

    def in_tree(path: str) -> str | None:
        if path.startswith("$("):  # $(wildcard include/config/…): kconfig dependencies, not files
            return None
        absolute = path if path.startswith("/") else os.path.normpath(os.path.join(base, path))
        return os.path.normpath(absolute[len(root):]) if absolute.startswith(root) else None

    sources: set[str] = set()
    headers: set[str] = set()
    for cmd in kbuild.rglob(".*.o.cmd"):
        relative_dir = cmd.parent.relative_to(kbuild).as_posix() + "/"
        if relative_dir.startswith(HOST_DIRS):
            continue
        text = cmd.read_text(errors="replace")
        sources.update(found for source in SOURCE_RE.findall(text) if (found := in_tree(source)))
        for block in DEPS_RE.findall(text):
            headers.update(found for item in block.replace("\\\n", " ").split() if (found := in_tree(item)))
    return sources, headers - sources


def write_sources(kbuild: Path, srctree: Path, out: Path) -> dict:
    sources, headers = compiled_files(kbuild, srctree)
    data = {"sources": sorted(sources), "headers": sorted(headers)}
    temp = out.with_suffix(".json.tmp")
    temp.write_text(json.dumps(data, indent=1) + "\n")
    temp.replace(out)
    return data


@dataclass(frozen=True)
class Compiled:
    """What one kernel build compiled: its .c/.S sources and the headers they include."""

    sources: frozenset[str]
    headers: frozenset[str]

    def touched(self, files: frozenset[str]) -> frozenset[str]:
        """The files of a fix that are in this kernel. A fix's own headers count only when it touches no
        source file at all: `net/tls/tls_sw.c` + `include/net/tls.h` is not in a kernel without TLS just
        because something else includes tls.h."""
        code = {f for f in files if not f.endswith(".h")}
        if code:
            return frozenset(code & self.sources)
        return frozenset(files & self.headers)


def read_sources(path: Path) -> Compiled:
    """A build's sources.json (through evidence.read_report: a missing or broken one is one paragraph)."""
    from ktailor.core.records import read_report

    data = read_report(path, "build")
    return Compiled(frozenset(data.get("sources", [])), frozenset(data.get("headers", [])))
