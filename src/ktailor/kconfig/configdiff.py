"""Whole-config drift: what changed between two versions' final .config that nobody asked for.

The audit checks requested options only. A kernel's defaults change between versions too (5.10's
allnoconfig turned EXPERT on and with it FUTEX, EPOLL, SHMEM … off), and such a loss is invisible
to an audit of requests. This module compares the complete final .config of one target on two
kernel versions, keeps the unrequested on/off changes, groups them by the kconfig menu they sit in,
and checks them against `fragments/must-stay.toml`: userspace ABI and security features that must
never be lost unnoticed. Symbols that exist in only one of the two trees are listed apart (renamed
or removed), never as losses.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ktailor.core.errors import InputError, line_of
from ktailor.kconfig.dotconfig import final_value, parse_dotconfig
from ktailor.kconfig.fragments import toml_entries

TRISTATES = ("y", "m", "n")
MUST_STAY_FILE = "must-stay.toml"  # in the fragments dir


@dataclass(frozen=True)
class MustStay:
    symbol: str
    arch: str | None
    why: str
    line: int | None
    also: tuple[str, ...] = ()  # other names of the same feature (renames): any one of them being on is enough
    absent_ok: str = ""  # why a kernel without the symbol is fine (it became unconditional)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.symbol, *self.also)


@dataclass(frozen=True)
class Change:
    symbol: str
    old: str
    new: str
    menu: str
    kind: str  # "lost" (y/m → n), "gained" (n → y/m), "changed" (y ↔ m), "removed" (gone from the new tree),
    #            "added" (new in the new tree)
    must_stay: str = ""  # the must-stay.toml why, when the symbol is in that set
    because: str = ""  # why it changed, from both trees' Kconfig (drift_reason), for lost/gained/changed

    @property
    def error(self) -> bool:
        return bool(self.must_stay) and self.kind == "lost"


def load_must_stay(path: Path) -> list[MustStay]:
    text, keep = toml_entries(path, "keep")
    entries = []
    for index, entry in enumerate(keep, start=1):
        option = str(entry.get("option", ""))
        symbol = option.removeprefix("CONFIG_")
        line = line_of(text, f'"{option}"') if option else None
        if not option.startswith("CONFIG_") or not symbol.replace("_", "").isalnum() or not entry.get("why"):
            raise InputError(f'[[keep]] #{index} needs option = "CONFIG_FOO" and a why = "…" sentence.', path=path, line=line)
        also = tuple(str(name).removeprefix("CONFIG_") for name in entry.get("also", []))
        entries.append(MustStay(symbol, entry.get("arch"), str(entry["why"]), line, also, str(entry.get("absent_ok", ""))))
    return entries


def compare_configs(old: dict[str, str], new: dict[str, str], requested: set[str], *, arch: str,
                    old_symbols: frozenset[str], new_symbols: frozenset[str], must_stay: list[MustStay],
                    menus: dict[str, str] | None = None) -> list[Change]:
    """Every unrequested bool/tristate symbol whose final value differs between the two configs."""
    keep = {name: m.why for m in must_stay if m.arch in (None, arch) for name in m.names}
    # a must-stay symbol that is gone needs a look, unless the entry says why (unconditional) or names its rename
    settled = {name for m in must_stay if m.absent_ok or m.also for name in m.names}
    menus = menus or {}
    changes = []
    for symbol in sorted(set(old) | set(new)):
        if symbol in requested:
            continue
        before, after = final_value(old, symbol), final_value(new, symbol)
        if before == after or before not in TRISTATES or after not in TRISTATES:
            continue
        if symbol not in new_symbols:
            kind = "removed"
        elif symbol not in old_symbols:
            kind = "added"
        elif after == "n":
            kind = "lost"
        elif before == "n":
            kind = "gained"
        else:
            kind = "changed"
        why = "" if kind == "removed" and symbol in settled else keep.get(symbol, "")
        changes.append(Change(symbol, before, after, menus.get(symbol, "(no menu)"), kind, why))
    return changes


def must_stay_missing(new: dict[str, str], must_stay: list[MustStay], arch: str,
                      new_symbols: frozenset[str]) -> list[MustStay]:
    """Must-stay symbols this kernel has but the config leaves off (whether requested or not)."""
    return [m for m in must_stay if m.arch in (None, arch) and any(n in new_symbols for n in m.names)
            and all(final_value(new, n) == "n" for n in m.names)]


def menus_of(kconf, symbols: set[str]) -> dict[str, str]:
    """symbol -> the title of the menu it sits in (kconfiglib), for grouping."""
    import kconfiglib

    found = {}
    for name in symbols:
        sym = kconf.syms.get(name)
        if sym is None or not sym.nodes:
            continue
        node = sym.nodes[0].parent
        while node is not None and not (node.item is kconfiglib.MENU and node.prompt):
            node = node.parent
        found[name] = node.prompt[0] if node is not None and node is not kconf.top_node else "(top level)"
    return found


def render_changes(old_version: str, new_version: str, changes: list[Change], missing: list[MustStay] = ()) -> str:
    """Unrequested changes grouped by menu, must-stay losses first, for the terminal and report.md."""
    if not changes and not missing:
        return f"  no unrequested option changed between {old_version} and {new_version}."
    lines = []
    for entry in missing:
        lines.append(f"  E: CONFIG_{entry.symbol} is off on {new_version} but must stay on "
                     f"(fragments/must-stay.toml:{entry.line}): {entry.why} Request it in a fragment.")
    for change in (c for c in changes if c.error and c.symbol not in {m.symbol for m in missing}):
        lines.append(f"  E: CONFIG_{change.symbol} was {change.old} on {old_version} and is n on {new_version}; "
                     f"it must stay on: {change.must_stay} Request it in a fragment.")
    counts = {kind: sum(c.kind == kind for c in changes) for kind in ("lost", "gained", "changed", "removed", "added")}
    lines.insert(0, f"  unrequested changes {old_version} → {new_version}: {counts['lost']} turned off, "
                    f"{counts['gained']} turned on, {counts['changed']} y↔m; besides, {counts['removed']} symbols "
                    f"exist only in {old_version} and {counts['added']} only in {new_version} (all in the JSON)")
    by_menu: dict[str, list[Change]] = {}
    for change in changes:
        if change.kind in ("lost", "gained", "changed"):
            by_menu.setdefault(change.menu, []).append(change)
    for menu in sorted(by_menu):
        lines.append(f"  {menu}: " + ", ".join(f"{c.symbol} {c.old}→{c.new}" for c in by_menu[menu]))
    lines += _reasons(by_menu)
    gone = [c.symbol for c in changes if c.kind == "removed" and c.must_stay]
    if gone:
        lines.append(f"  W: must-stay option(s) no longer in {new_version}: {', '.join(gone)}; check what replaced "
                     "them (renamed, or built in unconditionally) and update fragments/must-stay.toml.")
    return "\n".join(lines)


def _reasons(by_menu: dict[str, list[Change]]) -> list[str]:
    """The changes' reasons, one line per reason: symbols whose reasons read alike once their own names are
    taken out (INLINE_READ_UNLOCK and INLINE_SPIN_UNLOCK, each depending on !PREEMPTION) share a line."""
    grouped: dict[str, list[Change]] = {}
    for change in (c for menu in sorted(by_menu) for c in by_menu[menu] if c.because):
        grouped.setdefault(re.sub(rf"\b(\w*){change.symbol}\b", r"\1<symbol>", change.because), []).append(change)
    if not grouped:
        return []
    lines = ["  why (from the Kconfig of both trees):"]
    for reason, members in grouped.items():
        names = ", ".join(f"{c.symbol} {c.old}→{c.new}" for c in members)
        lines.append(f"    {names}: {reason if len(members) > 1 else members[0].because}")
    return lines


def drift(*, old_config: Path, new_config: Path, requested: set[str], arch: str, old_tree: Path, new_tree: Path,
          kernel_arch: str, cross_compile: str, must_stay: list[MustStay],
          versions: tuple[str, str] = ("the old kernel", "the new kernel")) -> tuple[list[Change], list[MustStay]]:
    """Compare two final .config files of one target (the trees give which symbols exist, the menus, and why
    each unrequested symbol changed). `versions`: the two kernels' names, for the reasons."""
    from ktailor.kconfig.kconfig_tree import ExplainUnavailable, load_kconfig, tree_symbols

    old, new = parse_dotconfig(old_config), parse_dotconfig(new_config)

    def symbols(tree: Path, values: dict[str, str]) -> frozenset[str]:
        # a removed source tree (`invoke clean --sources`): what its .config lists is all that is known
        return tree_symbols(tree.resolve()) if (tree / "Kconfig").is_file() else frozenset(values)

    old_symbols, new_symbols = symbols(old_tree, old), symbols(new_tree, new)
    changed = {s for s in set(old) | set(new) if final_value(old, s) != final_value(new, s)}
    menus: dict[str, str] = {}
    kconfs = {}
    for which, tree, config in (("old", old_tree, old_config), ("new", new_tree, new_config)):  # new menus win
        try:
            kconfs[which] = load_kconfig(tree, kernel_arch, cross_compile, config)
        except ExplainUnavailable:
            continue
        menus |= menus_of(kconfs[which], changed)
    changes = compare_configs(old, new, requested, arch=arch, old_symbols=old_symbols, new_symbols=new_symbols,
                              must_stay=must_stay, menus=menus)
    if "new" in kconfs:
        changes = [replace(c, because=drift_reason(kconfs.get("old"), kconfs["new"], c, new_tree=new_tree,
                                                   kernel_arch=kernel_arch, versions=versions))
                   if c.kind in ("lost", "gained", "changed") else c for c in changes]
    return changes, must_stay_missing(new, must_stay, arch, new_symbols)


def drift_reason(old_kconf, new_kconf, change: Change, *, new_tree: Path, kernel_arch: str,
                 versions: tuple[str, str]) -> str:
    """Why an unrequested symbol has another value on the new kernel: what its Kconfig entry changed (a
    prompt added or removed, other dependencies, a select gone, a choice's default), else the new tree's
    own explanation of its value."""
    from kconfiglib import expr_value

    from ktailor.kconfig.explain import choice_title, explain
    from ktailor.kconfig.expressions import render_expression
    from ktailor.kconfig.kconfig_tree import has_prompt

    old_name, new_name = versions
    new_sym = new_kconf.syms.get(change.symbol)
    old_sym = old_kconf.syms.get(change.symbol) if old_kconf is not None else None
    if new_sym is None or not new_sym.nodes:  # the tree still has it, for other architectures only
        return f"{new_name} no longer defines it for this architecture (other architectures keep it)"
    if old_sym is None or not old_sym.nodes:
        old_sym = None
    said = []
    if old_sym is not None:
        had, has = has_prompt(old_sym) and old_sym.visibility, has_prompt(new_sym) and new_sym.visibility
        if not had and has and change.kind == "lost":
            hidden = f"hidden in {old_name}" if has_prompt(old_sym) else f"none in {old_name}"
            return (f"its prompt shows in {new_name} ({hidden}, where its default decided): "
                    "allnoconfig answers a visible prompt n unless a fragment requests it")
        if had and not has and change.kind == "gained":
            return f"its prompt is gone or hidden in {new_name}: its default decides now"
        before, after = render_expression(old_sym.direct_dep), render_expression(new_sym.direct_dep)
        if _names_in(before) != _names_in(after):
            said.append(f"its dependency changed from `{before}` to `{after}`")
    if new_sym.choice is not None:
        now = new_sym.choice.selection.name if new_sym.choice.selection else "nothing"
        then = old_sym.choice.selection.name if old_sym is not None and old_sym.choice and \
            old_sym.choice.selection else "another member"
        said.append(f"no fragment picks a member of choice '{choice_title(new_sym.choice)}': it takes {now} in "
                    f"{new_name} ({then} in {old_name})")
        return "; ".join(said)
    if old_sym is not None and change.kind == "lost" and expr_value(old_sym.rev_dep) \
            and not expr_value(new_sym.rev_dep):
        active = _active_selectors(old_sym)
        gone = [s for s in active if (new_kconf.syms.get(s.name) or s).tri_value]
        said.append(f"in {old_name} it was selected by {', '.join(f'{s.name}(={s.str_value})' for s in active)}"
                    + (f"; {', '.join(s.name for s in gone)} no longer select{'s' if len(gone) == 1 else ''} it in "
                       f"{new_name}" if gone else f", which {new_name} turns off"))
        if has_prompt(new_sym):
            said.append("no fragment requests it, so allnoconfig answers its prompt n")
        return "; ".join(said)
    if change.kind == "lost" and has_prompt(new_sym) and new_sym.visibility and not expr_value(new_sym.rev_dep):
        said.append("it has a visible prompt that no fragment requests, so allnoconfig answers it n")
    else:
        said.append(explain(new_kconf, change.symbol, change.old, change.new, srctree=new_tree,
                            kernel_arch=kernel_arch).detail.rstrip("."))
    return "; ".join(said)


def _active_selectors(sym) -> list:
    from ktailor.kconfig.expressions import selectors

    return [s for s, value in selectors(sym.rev_dep) if value]


def _names_in(rendered: str) -> frozenset[str]:
    return frozenset(re.findall(r"[A-Z][A-Z0-9_]+", rendered))


def to_json(changes: list[Change], missing: list[MustStay]) -> dict:
    return {"changes": [asdict(c) | {"error": c.error} for c in changes],
            "must_stay_missing": [asdict(m) for m in missing],
            "errors": error_count(changes, missing)}


def error_count(changes: list[Change], missing: list[MustStay]) -> int:
    return len({c.symbol for c in changes if c.error} | {m.symbol for m in missing})


def target_drift(project, target, old_version: str, kernel) -> tuple[list[Change], list[MustStay]] | None:
    """Drift of one target from `old_version` to `kernel` in this project's build tree (layout.Project),
    or None when either version has no final .config for it."""
    from ktailor.farm.toolchain import make_vars
    from ktailor.kconfig.fragments import load_fragments, requested_options

    old_config = project.artifacts_of(old_version, target.name).kbuild / ".config"
    new_config = project.artifacts(kernel, target).kbuild / ".config"
    if not old_config.is_file() or not new_config.is_file():
        return None
    requested = requested_options(load_fragments(project.fragment_paths(target), project.root), target.arch.name,
                                  kernel.version_tuple)
    return drift(old_config=old_config, new_config=new_config, requested=set(requested), arch=target.arch.name,
                 old_tree=project.source_tree_of(old_version), new_tree=project.source_tree(kernel),
                 kernel_arch=target.arch.kernel_arch, cross_compile=make_vars(target, project.env)["CROSS_COMPILE"],
                 must_stay=load_must_stay(project.fragments_dir / MUST_STAY_FILE), versions=(old_version, kernel.version))
