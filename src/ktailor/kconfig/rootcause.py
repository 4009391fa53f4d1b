"""Root causes: when several requested options did not land for one reason, find that reason.

Each difference the audit found is explained on its own by explain.py ("EXT4_FS depends on BLOCK(=n)").
This module follows every chain further, through the symbols no fragment requests, until it reaches
the decision that started it: a symbol `allnoconfig` turns on by itself (`option allnoconfig_y`), a
`select`, a prompt that is only visible under a condition (`bool "…" if EXPERT`, which makes
allnoconfig answer n where the default would have said y), an option the target deliberately turns
off, or plainly a symbol no fragment asks for. Differences that end at the same root form a group,
and the group gets one fix: the line that changes the root.

On Linux 5.10 that is how 27 drops become one line: BLOCK, MULTIUSER, SHMEM, … are n because their
prompts show `if EXPERT`; EXPERT is y because EMBEDDED selects it; EMBEDDED is y because allnoconfig
sets it (`option allnoconfig_y`); fix: `# CONFIG_EMBEDDED is not set`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import kconfiglib
from kconfiglib import AND, BOOL, TRISTATE, Symbol, expr_items, expr_value

from ktailor.kconfig.expressions import FixPlanner, render_expression, selectors, tristate, unmet_operands
from ktailor.kconfig.expressions import tri_str as _tri
from ktailor.kconfig.fragments import Option
from ktailor.kconfig.kconfig_tree import is_toolchain_decided

MAX_DEPTH = 12  # chains longer than this are reported where they stop


@dataclass(frozen=True)
class Step:
    """One link of a chain: `symbol` has `value` because …"""

    symbol: str
    value: str
    because: str


@dataclass(frozen=True)
class Root:
    symbol: str
    value: str
    why: str  # what decided the root's value
    fix: tuple[str, ...] = ()  # fragment lines that change it; empty when no fragment can
    conflict: str = ""  # set when the fix would undo a deliberate choice of this target (fragment:line)


@dataclass
class Cause:
    """A root and the differences (requested options that did not land) it explains."""

    root: Root
    members: list[str]  # the differences' symbols
    via: list[str]  # the unrequested symbols the members depend on directly (BLOCK, SHMEM, …)
    via_values: list[str]  # their values
    chain: list[Step]  # from the first `via` symbol down to the root (one representative chain)
    total: int = 0  # how many differences the audit found in all
    landed_with_fix: int | None = None  # checked by re-running kconfig with the fix and the target's fragments
    still_missing: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"root": asdict(self.root), "members": self.members, "via": self.via,
                "chain": [asdict(s) for s in self.chain], "total": self.total,
                "landed_with_fix": self.landed_with_fix, "still_missing": self.still_missing,
                "summary": self.sentence()}

    def sentence(self) -> str:
        root = self.root
        head = (f"{len(self.members)} of these {self.total} options did not land" if self.total > 1 else
                f"CONFIG_{self.members[0]} did not land")
        via = [s for s in self.via if s != root.symbol]
        if via:
            by_value: dict[str, list[str]] = {}
            for symbol, value in zip(self.via, self.via_values, strict=True):
                if symbol != root.symbol:
                    by_value.setdefault(value, []).append(symbol)
            head += " because " + " and ".join(f"{_names(names)} {'are' if len(names) > 1 else 'is'} {value}"
                                               for value, names in by_value.items())
            head += "".join(f"; {step.symbol}={step.value} because {step.because}" for step in self.chain)
            head += f"; {root.symbol}={root.value} because {root.why}"
        else:
            head += f" because {root.symbol}={root.value}: {root.why}"
        if root.conflict:
            return head + f". This target sets that on purpose ({root.conflict}), so these options do not belong in it."
        if not root.fix:
            return head + ". No fragment line can change that."
        fix = " ".join(f"`{line}`" for line in root.fix)
        checked = ""
        if self.landed_with_fix is not None:
            checked = (f" (checked: with it, {self.landed_with_fix} of {self.total} land" if self.total > 1 else
                       f" (checked: with it, it {'lands' if self.landed_with_fix else 'still does not land'}")
            checked += f"; still missing: {', '.join(self.still_missing[:6])})" if self.still_missing else ")"
        return head + f". Fix: {fix}{checked}."


def find_causes(kconf: kconfiglib.Kconfig, differences: list, requested: dict[str, Option], srctree) -> list[Cause]:
    """Group the differences (audit.Difference) by the root each chain ends at, biggest group first."""
    tracer = _Tracer(kconf, requested, FixPlanner(srctree, requested), srctree)
    groups: dict[str, Cause] = {}
    for difference in differences:
        sym = kconf.syms.get(difference.symbol)
        if sym is None or not sym.nodes:
            continue
        for chain, root in tracer.blockers(sym, tristate(difference.requested), tristate(difference.final), 0):
            if root.symbol == difference.symbol:
                continue
            cause = groups.setdefault(root.symbol, Cause(root, [], [], [], [], total=len(differences)))
            if difference.symbol not in cause.members:
                cause.members.append(difference.symbol)
            first = next((s for s in chain if s.symbol not in requested), None)
            if first is not None and first.symbol not in cause.via:
                cause.via.append(first.symbol)
                cause.via_values.append(first.value)
            unrequested = _from(chain, first.symbol) if first is not None else []
            if len(unrequested) > len(cause.chain):
                cause.chain = unrequested
    causes = [c for c in groups.values() if len(c.members) > 1 or c.via]
    return sorted(causes, key=lambda c: -len(c.members))


def _names(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _from(chain: list[Step], symbol: str) -> list[Step]:
    for index, step in enumerate(chain):
        if step.symbol == symbol:
            return chain[index:]
    return []


class _Tracer:
    def __init__(self, kconf: kconfiglib.Kconfig, requested: dict[str, Option], planner: FixPlanner, srctree) -> None:
        self.kconf = kconf
        self.requested = requested
        self.planner = planner
        self.srctree = srctree

    def blockers(self, sym: Symbol, want: int, got: int, depth: int) -> list[tuple[list[Step], Root]]:
        """The chains that keep `sym` from `want` (it is `got`)."""
        if want > got:
            if expr_value(sym.direct_dep) < want:
                expr = sym.direct_dep
            else:
                prompt = _prompt_condition(sym)
                if prompt is None or expr_value(prompt) >= want:
                    return []
                expr = prompt
            return [path for leaf, need in unmet_operands(expr, want) if need is not None
                    for path in self.trace(leaf, need, depth + 1)]
        if want < got:
            return [path for selector, value in selectors(sym.rev_dep) if value > want
                    for path in self.trace(selector, want, depth + 1)]
        return []

    def trace(self, sc: Any, need: int, depth: int) -> list[tuple[list[Step], Root]]:
        """Why `sc` is not `need` (for bool/tristate symbols): chains of steps ending at a root."""
        if not isinstance(sc, Symbol) or sc.is_constant or not sc.nodes or sc.orig_type not in (BOOL, TRISTATE):
            name = getattr(sc, "name", str(sc))
            return [([], Root(name, "n", "it is not defined for this architecture and kernel"))]
        value = sc.str_value
        if is_toolchain_decided(sc, self.srctree):
            return [([], Root(sc.name, value, "the toolchain decides it (compiler/assembler/linker probe)"))]
        option = self.requested.get(sc.name)
        if option is not None:
            wanted = tristate(option.value)
            if (wanted < need) if need > 0 else (wanted > need):
                return [([], Root(sc.name, value, "this target requests it", (),
                                  f"{option.where} sets {option.text}" + (f": {option.reason}" if option.reason else "")))]
            # requested as needed, but it did not land itself: follow its own chain
            step = Step(sc.name, value, f"it is requested ({option.where}) but did not land either")
            return [([step, *chain], root) for chain, root in self.blockers(sc, wanted, sc.tri_value, depth)] \
                or [([], Root(sc.name, value, "it did not land (see its own row)"))]
        if depth > MAX_DEPTH:
            return [([], Root(sc.name, value, "the chain goes deeper than ktailor follows", ()))]
        if sc.tri_value < need:
            return self._too_low(sc, need, depth)
        return self._too_high(sc, need, depth)

    def _too_low(self, sym: Symbol, need: int, depth: int) -> list[tuple[list[Step], Root]]:
        value = sym.str_value
        if expr_value(sym.direct_dep) < need:
            step = Step(sym.name, value, f"it depends on {render_expression(sym.direct_dep)}")
            return self._through(step, sym.direct_dep, need, depth)
        prompt = _prompt_condition(sym)
        if prompt is not None and expr_value(prompt) < need:
            step = Step(sym.name, value, f"its prompt only shows if {render_expression(prompt)}")
            return self._through(step, prompt, need, depth)
        default = _active_default(sym)
        if prompt is not None and prompt is not self.kconf.y and default >= need:
            # A visible prompt under a condition: allnoconfig answers it n; without the condition the
            # prompt would be hidden and the default would apply.
            step = Step(sym.name, value, f"its prompt shows only if {render_expression(prompt)}, so allnoconfig "
                                         f"answers it n instead of its default {_tri(default)}")
            paths = [([step, *chain], root) for item in _true_operands(prompt)
                     for chain, root in self.trace(item, 0, depth + 1)]
            # `if EXPERT && MMU`: hiding the prompt through EXPERT is a fix, through MMU is not
            changeable = [path for path in paths if path[1].fix or path[1].conflict]
            if changeable or paths:
                return changeable or paths
        if prompt is None:
            fix = tuple(self.planner.lines(sym, need))
            why = "it has no prompt and nothing this target requests selects it"
            return [([], Root(sym.name, value, why, tuple(line for line in fix if line.startswith(("CONFIG_", "# CONFIG_")))))]
        return [([], Root(sym.name, value, "no fragment of this target requests it, so allnoconfig leaves it n",
                          (f"CONFIG_{sym.name}={'y' if need == 2 or sym.orig_type is BOOL else 'm'}",)))]

    def _too_high(self, sym: Symbol, need: int, depth: int) -> list[tuple[list[Step], Root]]:
        value = sym.str_value
        if sym.is_allnoconfig_y:
            return [([], Root(sym.name, value, "allnoconfig sets it on this kernel (`option allnoconfig_y` in its "
                                                "Kconfig entry)", (f"# CONFIG_{sym.name} is not set",)))]
        active = [s for s, v in selectors(sym.rev_dep) if v > need]
        if active:
            names = ", ".join(f"{s.name}(={s.str_value})" for s in active)
            step = Step(sym.name, value, f"it is selected by {names}")
            return [([step, *chain], root) for s in active for chain, root in self.trace(s, need, depth + 1)]
        if _prompt_condition(sym) is not None and sym.visibility:
            return [([], Root(sym.name, value, f"its default makes it {value}", (f"# CONFIG_{sym.name} is not set",)))]
        return [([], Root(sym.name, value, "it has no visible prompt and its default makes it " + value))]

    def _through(self, step: Step, expr: Any, need: int, depth: int) -> list[tuple[list[Step], Root]]:
        paths = []
        for leaf, wanted in unmet_operands(expr, need):
            if wanted is None:
                paths.append(([step], Root(step.symbol, step.value, f"{render_expression(leaf)} does not hold")))
                continue
            for chain, root in self.trace(leaf, wanted, depth + 1):
                paths.append(([step, *chain], root))
        return paths


def _prompt_condition(sym: Symbol) -> Any:
    return next((node.prompt[1] for node in sym.nodes if node.prompt), None)


def _active_default(sym: Symbol) -> int:
    for value, cond in sym.defaults:
        if expr_value(cond):
            return min(expr_value(value), expr_value(sym.direct_dep))
    return 0


def _true_operands(expr: Any) -> list[Symbol]:
    """The symbols that make a prompt condition true; for `A && B` making either false hides the prompt."""
    if isinstance(expr, tuple) and expr[0] is AND:
        return _true_operands(expr[1]) + _true_operands(expr[2])
    return [s for s in expr_items(expr) if isinstance(s, Symbol) and not s.is_constant and s.tri_value]
