"""What a task depends on in the shared data tables, entry by entry.

probes.toml, must-stay.toml, hardening-checks.toml, expected-drops.toml and cmdline-undoes.toml are
read by every target's tasks. As whole-file dependencies, a comment would rerun every boot and a
probe of mini would rerun micro's. Each task instead holds, in its config_changed, the canonical form
of the entries that apply to it (no comments, no line numbers): editing an entry reruns exactly the
tasks it applies to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from ktailor.kconfig.configdiff import MUST_STAY_FILE, load_must_stay
from ktailor.kconfig.fragments import EXPECTED_DROPS, load_expected_drops
from ktailor.kconfig.hardening import CHECKS_FILE, load_checks
from ktailor.project.targets import Target

CMDLINE_UNDOES = "cmdline-undoes.toml"  # in the guest dir: command-line words that switch a hardening off
PROBES = "probes.toml"  # in the guest dir


def canonical(value: object) -> object:
    """A JSON-able form that is the same for the same meaning: sets sorted, no line numbers or paths."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name not in ("line", "path")}
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(v) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: repr(kv[0]))}
    if isinstance(value, Path):
        return str(value)
    return value


def _entries(items: Iterable[object]) -> list:
    return [canonical(item) for item in items]


def must_stay_state(fragments_dir: Path, target: Target) -> list:
    return _entries(e for e in load_must_stay(fragments_dir / MUST_STAY_FILE) if e.arch in (None, target.arch.name))


def hardening_state(fragments_dir: Path, target: Target, version: tuple[int, int, int]) -> dict | None:
    path = fragments_dir / CHECKS_FILE
    if not path.is_file():
        return None
    checks = load_checks(path)
    applying = [c for c in checks.checks if c.scope is None or c.scope.applies(target.arch.name, version)]
    waivers = {symbol: why for (name, symbol), why in checks.waivers.items() if name == target.name}
    return {"checks": _entries(applying), "waivers": canonical(waivers)}


def expected_drops_state(fragments_dir: Path, target: Target, version: tuple[int, int, int]) -> list:
    drops = load_expected_drops(fragments_dir / EXPECTED_DROPS)
    return _entries(d for d in drops if d.applies(target.arch.name, version))


def acceptance_state(guest_dir: Path, target: Target) -> dict:
    """The root filesystem spec, the VM settings and the workloads this target runs."""
    from ktailor.guest.workloads import ACCEPTANCE, load_acceptance

    spec = load_acceptance(guest_dir / ACCEPTANCE)
    return {"rootfs": canonical(spec.rootfs), "vm": [spec.memory_mib, spec.timeout_s],
            "workloads": _entries(spec.for_target(target))}


def guest_state(guest_dir: Path, target: Target) -> dict:
    """The probes this target runs, the transport symbols and hints, and the command-line words that fail a boot."""
    from ktailor.guest.probes import load_cmdline_undoes, load_probe_table

    table = load_probe_table(guest_dir / PROBES)
    undoes = guest_dir / CMDLINE_UNDOES
    return {"probes": _entries(table.for_target(target)), "transport": canonical(table.transport),
            "hints": _entries(table.hints), "undoes": canonical(load_cmdline_undoes(undoes)) if undoes.is_file() else None}
