"""The acceptance workloads: guest/acceptance.toml read and checked (the Debian root filesystem to build, the
VM's size, each workload's requirement, kconfig symbols and script), and the results the guest's runner
prints on the console."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktailor.core.errors import InputError, line_of
from ktailor.core.records import read_toml
from ktailor.guest.probes import Probe
from ktailor.guest.rootfs import RootfsSpec
from ktailor.project.targets import Target

ACCEPTANCE = "acceptance.toml"  # in the guest dir
WORKLOAD_RE = re.compile(r"KTAILOR-WORKLOAD (\S+) rc=(-?\d+) ms=(\d+)")
OUT_RE = re.compile(r"KTAILOR-OUT (\S+) ?(.*)")


@dataclass(frozen=True)
class Workload:
    name: str
    requirement: str
    proves: str
    types: frozenset[str]
    symbols: tuple[str, ...]
    script: str
    timeout_s: float = 120
    expect: str = ""
    line: int | None = None

    def applies_to(self, target: Target) -> bool:
        return target.type.name in self.types

    def as_probe(self) -> Probe:
        """The probe-shaped view explain_failure traces to fragment lines."""
        return Probe(self.name, self.requirement, self.symbols, self.types, frozenset(), False, self.line)


@dataclass(frozen=True)
class AcceptanceSpec:
    path: Path
    rootfs: RootfsSpec
    memory_mib: int
    timeout_s: float
    workloads: tuple[Workload, ...]

    def for_target(self, target: Target) -> list[Workload]:
        return [w for w in self.workloads if w.applies_to(target)]


def load_acceptance(path: Path) -> AcceptanceSpec:
    text, data = read_toml(path, "not found; the acceptance stage reads its root filesystem and workloads from it.")
    rootfs = data.get("rootfs") or {}
    missing = [key for key in ("suite", "variant", "packages") if not rootfs.get(key)]
    if missing:
        raise InputError(f"[rootfs] has no {', '.join(missing)}; give suite = \"bookworm\", variant = \"minbase\" and "
                         "packages = [...].", path=path)
    spec = RootfsSpec(str(rootfs["suite"]), str(rootfs["variant"]), tuple(rootfs["packages"]),
                      str(rootfs.get("image_size", "2G")), dict(rootfs.get("debian_arch") or {}))
    workloads: list[Workload] = []
    for index, row in enumerate(data.get("workload", []), start=1):
        line = line_of(text, f'name = "{row.get("name")}"')
        absent = [key for key in ("name", "requirement", "proves", "types", "symbols", "script") if not row.get(key)]
        if absent:
            raise InputError(f"[[workload]] #{index} has no {', '.join(absent)}; every workload needs name, requirement, "
                             "proves, types, symbols and script.", path=path, line=line)
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", row["name"]) or any(w.name == row["name"] for w in workloads):
            raise InputError(f"workload name {row['name']!r} must be unique and made of a-z, 0-9 and '-'.", path=path,
                             line=line)
        workloads.append(Workload(row["name"], row["requirement"], row["proves"], frozenset(row["types"]),
                                  tuple(row["symbols"]), row["script"], float(row.get("timeout_s", 120)),
                                  str(row.get("expect", "")), line))
    vm = data.get("vm") or {}
    return AcceptanceSpec(path, spec, int(vm.get("memory_mib", 512)), float(vm.get("timeout_s", 600)), tuple(workloads))


def parse_results(lines: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]], bool]:
    """(name -> {rc, ms}, name -> output lines, whether the runner finished) from the console."""
    results: dict[str, dict[str, Any]] = {}
    outputs: dict[str, list[str]] = {}
    done = False
    for line in lines:
        if match := WORKLOAD_RE.search(line):
            results[match[1]] = {"rc": int(match[2]), "ms": int(match[3])}
        elif match := OUT_RE.search(line):
            outputs.setdefault(match[1], []).append(match[2])
        elif "KTAILOR-ACCEPT-DONE" in line:
            done = True
    return results, outputs, done
