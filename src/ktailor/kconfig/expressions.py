"""Kconfig expressions, typed: their unmet parts, their selectors, their value-annotated rendering, and the
FixPlanner that finds the option lines making one true.

An `Expr` is what kconfiglib builds: a Symbol, a Choice, or an (operator, operand, operand) tuple. A
`FixPlan` is the planner's answer: the option lines to add (dependencies first) and how many leaves of
the expression no fragment can change (compiler probes, constants, the target's own choices).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import kconfiglib
from kconfiglib import AND, BOOL, EQUAL, NOT, OR, REL_TO_STR, STR_TO_TRI, TRISTATE, Choice, Symbol, expr_value, split_expr

from ktailor.kconfig.kconfig_tree import has_prompt, is_toolchain_decided

Expr: TypeAlias = "Symbol | Choice | tuple[Any, ...]"  # kconfiglib's: a symbol, a choice or (operator, operand, operand)
FIX_DEPTH = 6  # how far the fix follows dependencies of dependencies


@dataclass(frozen=True)
class FixPlan:
    """Option lines that make an expression true, dependencies first, and how many of its leaves no
    fragment can change (0: the lines alone do it)."""

    lines: tuple[str, ...] = ()
    blocked: int = 0

    @property
    def cost(self) -> tuple[int, int]:
        return self.blocked, len(self.lines)

    @staticmethod
    def combine(*plans: FixPlan) -> FixPlan:
        return FixPlan(tuple(dict.fromkeys(line for plan in plans for line in plan.lines)),
                       sum(plan.blocked for plan in plans))


DONE = FixPlan()
BLOCKED = FixPlan((), 1)


def unmet_operands(expr: Expr, need: int) -> list[tuple[Expr, int | None]]:
    """The parts of `expr` that keep it below `need`: (symbol, value it needs), or (subexpression, None)
    for a false `||` or relation, which has no single operand to blame."""
    if expr_value(expr) >= need:
        return []
    if not isinstance(expr, tuple):
        return [(expr, need)]
    op = expr[0]
    if op is AND:
        return unmet_operands(expr[1], need) + unmet_operands(expr[2], need)
    if op is NOT:
        return [(expr[1], 2 - need)]
    if op is EQUAL and is_tristate_constant(expr[2]) and not expr[1].is_constant:
        return [(expr[1], STR_TO_TRI[expr[2].name])]
    return [(expr, None)]


def selectors(rev_dep: Expr) -> list[tuple[Symbol, int]]:
    """The symbols in a rev_dep/weak_rev_dep (OR of `selector && condition`) with each term's value."""
    found = []
    for term in split_expr(rev_dep, OR):
        selector = term[1] if isinstance(term, tuple) else term
        if isinstance(selector, Symbol) and not selector.is_constant:
            found.append((selector, expr_value(term)))
    return found


class FixPlanner:
    """The option lines that make an expression true: the cheapest side of each `||`, dependencies before
    their dependents, prompt-less symbols through a selector or their own default. One per explanation."""

    def __init__(self, srctree: Path, target_options: dict | None = None,
                 providers: dict[str, list[str]] | None = None) -> None:
        self.srctree = srctree
        self.fixed = target_options or {}  # the target's own requests: a plan never changes them
        self.providers = providers or {}
        self._memo: dict[tuple[str, int], FixPlan] = {}

    def excluded(self, failing: list[tuple[Expr, int | None]]) -> list[tuple[str, Any]]:
        """Failing operands the target itself requests at a value that keeps them failing."""
        found = []
        for sc, wanted in failing:
            option = self.fixed.get(getattr(sc, "name", ""))
            if option is not None and wanted is not None and tristate(option.value) != wanted \
                    and (wanted == 0) == (tristate(option.value) > 0):
                found.append((sc.name, option))
        return found

    def _against_target(self, sc: Symbol, low: int, high: int) -> bool:
        option = self.fixed.get(sc.name)
        return option is not None and not low <= tristate(option.value) <= high

    def lines(self, expr: Expr, need: int) -> list[str]:
        return list(self.expr(expr, need, 0).lines)

    def expr(self, expr: Expr, need: int, depth: int) -> FixPlan:
        if expr_value(expr) >= need:
            return DONE
        if not isinstance(expr, tuple):
            return self.symbol(expr, need, depth)
        op = expr[0]
        if op is AND:
            return FixPlan.combine(self.expr(expr[1], need, depth), self.expr(expr[2], need, depth))
        if op is OR:
            return min(self.expr(expr[1], need, depth), self.expr(expr[2], need, depth), key=lambda plan: plan.cost)
        if op is NOT:
            return self.at_most(expr[1], 2 - need)
        return self._relation(expr, depth)

    def _relation(self, expr: tuple[Any, Symbol, Symbol], depth: int) -> FixPlan:
        """`FOO=y` / `FOO=n` can be planned; other comparisons (`PAHOLE_VERSION>=121`) cannot."""
        op, left, right = expr
        if op is not EQUAL or not is_tristate_constant(right) or left.is_constant:
            return BLOCKED
        wanted = STR_TO_TRI[right.name]
        return self.symbol(left, wanted, depth) if left.tri_value < wanted else self.at_most(left, wanted)

    def symbol(self, sc: Expr, need: int, depth: int) -> FixPlan:
        """Make `sc` at least `need`."""
        if isinstance(sc, Symbol) and sc.tri_value >= need:
            return DONE
        if not isinstance(sc, Symbol) or sc.is_constant or is_toolchain_decided(sc, self.srctree) or depth > FIX_DEPTH:
            return BLOCKED
        if self._against_target(sc, need, 2):
            return BLOCKED  # the target turns it off on purpose
        key = (sc.name, need)
        if key not in self._memo:
            self._memo[key] = BLOCKED  # a dependency loop is no way to turn it on
            self._memo[key] = self._enable(sc, need, depth)
        return self._memo[key]

    def at_most(self, sc: Expr, limit: int) -> FixPlan:
        """Make `sc` at most `limit` (for `!FOO` and `FOO=n`)."""
        if not isinstance(sc, Symbol) or sc.tri_value <= limit:
            return DONE
        if sc.is_constant or is_toolchain_decided(sc, self.srctree) or self._against_target(sc, 0, limit):
            return BLOCKED
        return FixPlan((f"remove {option_line(sc.name, sc.str_value)}",))

    def _enable(self, sym: Symbol, need: int, depth: int) -> FixPlan:
        if has_prompt(sym):
            prompt_cond = next(node.prompt[1] for node in sym.nodes if node.prompt)
            value = "y" if need == 2 or sym.orig_type is BOOL else "m"
            return FixPlan.combine(self.expr(sym.direct_dep, need, depth + 1), self.expr(prompt_cond, need, depth + 1),
                                   FixPlan((f"CONFIG_{sym.name}={value}",)))
        routes = [self.symbol(s, 2, depth + 1) for s, _ in (selectors(sym.rev_dep) + selectors(sym.weak_rev_dep))]
        for value, cond in sym.defaults:
            if value is not sym.kconfig.n:
                routes.append(FixPlan.combine(self.expr(sym.direct_dep, need, depth + 1), self.expr(cond, need, depth + 1),
                                              self.expr(value, need, depth + 1)))
        return min(routes, key=lambda plan: plan.cost, default=BLOCKED)


def is_tristate_constant(sc: Expr) -> bool:
    return isinstance(sc, Symbol) and sc.is_constant and sc.name in ("n", "m", "y")


def is_probe(sc: Expr, srctree: Path) -> bool:
    """A leaf no fragment can change: a constant (from an expanded $(cc-option,…)) or a toolchain symbol."""
    if not isinstance(sc, Symbol):
        return False
    return sc.is_constant or is_toolchain_decided(sc, srctree)


def render(expr: Expr, parent: Expr = None) -> str:
    """`BLK_DEV_DM(=n) && MD(=n)`: the expression with each symbol's current value."""
    if not isinstance(expr, tuple):
        return operand_text(expr)
    op = expr[0]
    if op is NOT:
        return "!" + render(expr[1], NOT)
    if op in (AND, OR):
        text = f"{render(expr[1], op)} {'&&' if op is AND else '||'} {render(expr[2], op)}"
        return f"({text})" if parent not in (None, op) else text
    return f"{plain_text(expr[1])}{REL_TO_STR[op]}{plain_text(expr[2])}"


def operand_text(sc: Expr) -> str:
    if isinstance(sc, Choice):
        return f"<choice {sc.name or ''}>".replace(" >", ">")
    if sc.is_constant:
        return plain_text(sc)
    if not sc.nodes:  # undefined here (another arch's symbol): evaluates to n
        return f"{sc.name}(=n)"
    value = sc.str_value if sc.orig_type in (BOOL, TRISTATE) else f'"{sc.str_value}"'
    return f"{sc.name}(={value})"


def plain_text(sc: Expr) -> str:
    if sc.is_constant and sc.name not in ("n", "m", "y"):
        return f'"{sc.name}"'
    return sc.name


def leaf_text(sc: Expr, wanted: int | None) -> str:
    if wanted is None:
        return f"{render(sc)} is {tri_str(expr_value(sc))}"
    if isinstance(sc, Symbol) and sc.is_constant:
        return f"a constant {sc.name} (an expanded compiler probe such as $(cc-option,…), or `depends on n`)"
    return f"{operand_text(sc)} needs to be {tri_str(wanted)}"


def tristate(value: str) -> int:
    return {"y": 2, "m": 1}.get(value.strip(), 0)


def tri_str(value: int) -> str:
    return kconfiglib.TRI_TO_STR[value]


def option_line(name: str, value: str) -> str:
    if value in ("", "n"):
        return f"# CONFIG_{name} is not set"
    return f"CONFIG_{name}={value}"


def within_range(value: str, low: str, high: str) -> bool:
    try:
        number, lo, hi = (int(v, 0) for v in (value.strip('"'), low, high))
    except ValueError:
        return True
    return lo <= number <= hi


def render_expression(expr: Expr) -> str:
    """Public name for the value-annotated rendering (`BLK_DEV_DM(=n) && MD(=n)`)."""
    return render(expr)
