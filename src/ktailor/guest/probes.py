"""The guest probes: the table in guest/probes.toml, and the parser of what guest/init.c prints.

Pure functions only; boot.py runs the VM. A failed probe is traced back to the requirement group and
the fragment lines that were supposed to provide it, so the error says what to fix and where.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ktailor.core.errors import InputError, line_of
from ktailor.core.records import read_toml
from ktailor.guest.guest_devices import DEVICES
from ktailor.kconfig.fragments import Option
from ktailor.project.targets import Target

QEMU_PREFIX = "[qemu] "  # marks QEMU's own stderr among the console lines
HINT_CONDITIONS = ("no-output", "timeout")

PROBE_RE = re.compile(r"KTAILOR-PROBE name=(?P<name>\S+) status=(?P<status>pass|fail|skip) detail=(?P<detail>.*)$")
INIT_RE = re.compile(r"KTAILOR-INIT boottime_ns=(?P<ns>\d+) pid=(?P<pid>\d+)")
UPTIME_RE = re.compile(r"KTAILOR-UPTIME seconds=(?P<seconds>[\d.]+)")
MEM_RE = re.compile(r"KTAILOR-MEM total_kb=(?P<total>-?\d+) available_kb=(?P<available>-?\d+) used_kb=(?P<used>-?\d+)"
                    r"(?: init_rss_kb=(?P<rss>-?\d+))?")
KMSG_RE = re.compile(r"KTAILOR-KMSG us=(?P<us>\d+) text=(?P<text>.*)$")
CMDLINE_RE = re.compile(r"KTAILOR-CMDLINE text=(?P<text>.*)$")
VULN_RE = re.compile(r"KTAILOR-VULN name=(?P<name>\S+) state=(?P<state>.*)$")
DONE_RE = re.compile(r"KTAILOR-DONE probes=(?P<probes>\d+) failed=(?P<failed>\d+)")
WARN_RE = re.compile(r"KTAILOR-WARN (?P<text>.*)$")
MEMORY_LINE_RE = re.compile(r"Memory: (?P<available>\d+)K/(?P<total>\d+)K available \((?P<parts>[^)]*)\)")
MEMORY_PART_RE = re.compile(r"^(?P<kb>\d+)K (?P<name>[\w -]+)$")
RUN_INIT_RE = re.compile(r"Run (?P<path>\S+) as init process")


@dataclass(frozen=True)
class Probe:
    name: str
    requirement: str
    symbols: tuple[str, ...]
    types: frozenset[str]
    arches: frozenset[str]  # empty: every arch
    transport: bool
    line: int | None  # in probes.toml, for messages
    device: str = ""  # the host-side device it needs (guest_devices.py), "" for none

    def applies_to(self, target: Target) -> bool:
        return target.type.name in self.types and (not self.arches or target.arch.name in self.arches)


@dataclass(frozen=True)
class Hint:
    text: str
    match: str = ""  # console text that triggers it
    when: str = ""  # or a condition without text: no-output, timeout


@dataclass(frozen=True)
class ProbeTable:
    path: Path
    probes: tuple[Probe, ...]
    transport: dict[str, tuple[str, ...]]
    hints: tuple[Hint, ...]

    def for_target(self, target: Target) -> list[Probe]:
        return [p for p in self.probes if p.applies_to(target)]


def load_probe_table(path: Path) -> ProbeTable:
    text, data = read_toml(path, "probe table not found; the boot stage needs it to know what to check.")

    probes = []
    for index, row in enumerate(data.get("probe", []), start=1):
        line = line_of(text, f'name = "{row.get("name")}"')
        missing = [key for key in ("name", "requirement", "symbols", "types") if not row.get(key)]
        if missing:
            raise InputError(f"[[probe]] #{index} has no {', '.join(missing)}; every probe needs name, "
                             "requirement, symbols and types.", path=path, line=line)
        if row.get("device") and row["device"] not in DEVICES:
            raise InputError(f"probe {row['name']!r} needs device {row['device']!r}, which the boot stage cannot attach; "
                             f"use one of {', '.join(sorted(DEVICES))} (src/ktailor/guest_devices.py).",
                             path=path, line=line_of(text, f'device = "{row["device"]}"'))
        if any(p.name == row["name"] for p in probes):
            raise InputError(f"probe {row['name']!r} is declared twice; keep one.", path=path, line=line)
        probes.append(Probe(
            name=row["name"], requirement=row["requirement"], symbols=tuple(row["symbols"]),
            types=frozenset(row["types"]), arches=frozenset(row.get("arches", ())),
            transport=bool(row.get("transport", False)), line=line, device=row.get("device", ""),
        ))
    hints = []
    for index, row in enumerate(data.get("hint", []), start=1):
        if not row.get("hint") or bool(row.get("match")) == bool(row.get("when")):
            raise InputError(f"[[hint]] #{index} needs hint = \"…\" and exactly one of match = \"console text\" "
                             f"or when = one of {', '.join(HINT_CONDITIONS)}.", path=path)
        if row.get("when") and row["when"] not in HINT_CONDITIONS:
            raise InputError(f"[[hint]] #{index}: when = {row['when']!r} is not one of {', '.join(HINT_CONDITIONS)}.",
                             path=path, line=line_of(text, f'when = "{row["when"]}"'))
        hints.append(Hint(text=row["hint"], match=row.get("match", ""), when=row.get("when", "")))
    transport = {kind: tuple(symbols) for kind, symbols in data.get("transport", {}).items()}
    return ProbeTable(path=path, probes=tuple(probes), transport=transport, hints=tuple(hints))


@dataclass(frozen=True)
class ProbeResult:
    name: str
    status: str
    detail: str


@dataclass
class GuestReport:
    """Everything init reported on the console; fields stay None when the guest never got there."""

    boottime_ns: int | None = None
    pid: int | None = None
    uptime_s: float | None = None
    mem_total_kb: int | None = None
    mem_available_kb: int | None = None
    mem_used_kb: int | None = None
    init_rss_kb: int | None = None  # init's own VmRSS when it read /proc/meminfo
    kernel_memory: dict[str, int] | None = None
    run_init_us: int | None = None
    cmdline: str | None = None  # /proc/cmdline: what the kernel actually ran with
    vulnerabilities: dict[str, str] = field(default_factory=dict)  # /sys/devices/system/cpu/vulnerabilities/*
    probes: dict[str, ProbeResult] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    done: bool = False


def parse_memory_line(line: str) -> dict[str, int] | None:
    """The kernel's 'Memory: 239780K/261752K available (8192K kernel code, …)' line, in KiB."""
    match = MEMORY_LINE_RE.search(line)
    if not match:
        return None
    result = {"available": int(match["available"]), "total": int(match["total"])}
    for part in match["parts"].split(","):
        if piece := MEMORY_PART_RE.match(part.strip()):
            result[piece["name"].strip()] = int(piece["kb"])
    return result


def parse_console(lines: list[str]) -> GuestReport:
    """Read init's KTAILOR-* lines (anywhere in a line: kernel output may precede them)."""
    report = GuestReport()
    for raw in lines:
        line = raw.rstrip("\r\n")
        if match := PROBE_RE.search(line):
            report.probes[match["name"]] = ProbeResult(match["name"], match["status"], match["detail"].strip())
        elif match := INIT_RE.search(line):
            report.boottime_ns, report.pid = int(match["ns"]), int(match["pid"])
        elif match := UPTIME_RE.search(line):
            report.uptime_s = float(match["seconds"])
        elif match := MEM_RE.search(line):
            report.mem_total_kb, report.mem_available_kb = int(match["total"]), int(match["available"])
            report.mem_used_kb = int(match["used"])
            report.init_rss_kb = int(match["rss"]) if match["rss"] and int(match["rss"]) >= 0 else None
        elif match := KMSG_RE.search(line):
            if memory := parse_memory_line(match["text"]):
                report.kernel_memory = memory
            elif RUN_INIT_RE.search(match["text"]):
                report.run_init_us = int(match["us"])
        elif match := CMDLINE_RE.search(line):
            report.cmdline = match["text"].strip()
        elif match := VULN_RE.search(line):
            report.vulnerabilities[match["name"]] = match["state"].strip()
        elif match := DONE_RE.search(line):
            report.done = True
        elif match := WARN_RE.search(line):
            report.warnings.append(match["text"])
        elif report.kernel_memory is None and (memory := parse_memory_line(line)):
            report.kernel_memory = memory  # printed on the console itself when booted without `quiet`
    return report


def load_cmdline_undoes(path: Path) -> dict[str, str]:
    """guest/cmdline-undoes.toml: command-line word -> the hardening it switches off."""
    _, data = read_toml(path, "not found; the boot stage checks the kernel command line against it.")
    undoes = data.get("undoes", {})
    if not isinstance(undoes, dict) or not all(isinstance(v, str) and v for v in undoes.values()):
        raise InputError(f"{path}: [undoes] must map each command-line word to the hardening it switches off, "
                         'e.g. "nokaslr" = "kernel address randomisation".')
    return undoes


def undone_by(cmdline: str, undoes: dict[str, str]) -> dict[str, str]:
    """The words of a command line that switch a hardening off (a word `a=b` or a bare `word`)."""
    return {word: undoes[word] for word in cmdline.split() if word in undoes}


def find_hint(hints: tuple[Hint, ...] | list[Hint], lines: list[str], *, timed_out: bool) -> str | None:
    """The first hint whose text appears in the console; else the no-output / timeout hint."""
    for hint in hints:
        if hint.match and any(hint.match in line for line in lines):
            return hint.text
    guest_said_something = any(line.strip() and not line.startswith(QEMU_PREFIX) for line in lines)
    condition = "no-output" if not guest_said_something else "timeout" if timed_out else ""
    return next((h.text for h in hints if condition and h.when == condition), None)


@dataclass(frozen=True)
class Provider:
    symbol: str
    where: str | None  # fragment:line requesting it, None when no fragment does
    requested: str | None
    final: str | None  # value in the built .config: "n" or None when not set
    reason: str = ""


@dataclass(frozen=True)
class ProbeFailure:
    probe: Probe
    result: ProbeResult
    providers: tuple[Provider, ...]

    def sentence(self, target: Target, kind: str = "probe") -> str:
        requested = [p for p in self.providers if p.where]
        lost = [p for p in requested if p.final is None or p.final == "n"]
        unrequested = [p.symbol for p in self.providers if not p.where]
        parts = [f"{kind} {self.probe.name} failed ({self.result.detail or self.result.status}); "
                 f"requirement {self.probe.requirement!r}"]
        if requested:
            parts.append(" is provided by " + ", ".join(f"CONFIG_{p.symbol}={p.requested} at {p.where}" for p in requested))
        if lost:
            parts.append(" but " + ", ".join(f"CONFIG_{p.symbol}" for p in lost) + " is not set in the built .config")
        if unrequested:
            parts.append(f"; no fragment of {target.list_name} requests " + ", ".join(f"CONFIG_{s}" for s in unrequested))
        return "".join(parts)

    def as_json(self) -> dict[str, object]:
        return {
            "requirement": self.probe.requirement,
            "provided_by": [
                {"symbol": p.symbol, "where": p.where, "requested": p.requested, "final": p.final, "reason": p.reason}
                for p in self.providers
            ],
        }


def explain_failure(probe: Probe, result: ProbeResult, requested: dict[str, Option], final: dict[str, str],
                    transport: tuple[str, ...] = ()) -> ProbeFailure:
    """Map a failed probe to its requirement group and the fragment lines meant to provide it."""
    symbols = probe.symbols + (tuple(s for s in transport if s not in probe.symbols) if probe.transport else ())
    providers = []
    for symbol in symbols:
        option = requested.get(symbol)
        providers.append(Provider(
            symbol=symbol,
            where=option.where if option else None,
            requested=option.value if option else None,
            final=final.get(symbol),
            reason=option.reason if option else "",
        ))
    return ProbeFailure(probe, result, tuple(providers))
