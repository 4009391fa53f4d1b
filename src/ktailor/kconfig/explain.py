"""Why a requested option did not land: kconfiglib as the explainer, never the authority.

The kernel's own kconfig (`make allnoconfig KCONFIG_ALLCONFIG=…`) decides the final .config; the
config stage compares what was requested with what came out and asks `explain()` why each
difference happened: an unknown or other-arch symbol, an unmet `depends on`, an option without a
prompt, a `select` that forces it on, another member of a choice, or the toolchain.

kconfiglib 14.1 predates syntax newer kernels write (bare `modules`, 7.x's `transitional` and
`depends on X if Y`); `load_kconfig` parses with kconfig_syntax.KernelKconfig, which rewrites those
lines into their older equivalents before tokenizing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import kconfiglib
from kconfiglib import BOOL, TRISTATE, Symbol, expr_value

from ktailor.kconfig.expressions import (
    Expr,
    FixPlanner,
    is_probe,
    leaf_text,
    option_line,
    render,
    selectors,
    tri_str,
    tristate,
    unmet_operands,
    within_range,
)
from ktailor.kconfig.kconfig_syntax import successors_of
from ktailor.kconfig.kconfig_tree import (
    arch_symbols,
    by_version,
    did_you_mean,
    has_prompt,
    is_toolchain_decided,
    kernel_version,
    symbols_for_other_arches,
    tree_symbols,
    version_scope,
)

KINDS = ("unknown-symbol", "other-version", "other-arch", "renamed", "unmet-dependency", "excluded-by-target", "no-prompt",
         "selected", "choice", "toolchain", "other")


@dataclass(frozen=True)
class Explanation:
    kind: str  # one of KINDS
    detail: str  # one readable sentence
    fix: list[str] = field(default_factory=list)  # "CONFIG_MD=y" lines to add, or "remove CONFIG_X=y" hints
    dependency: str = ""  # the rendered expression, each operand with its value

    def __str__(self) -> str:
        if not self.fix:
            return self.detail
        adds = [f for f in self.fix if not f.startswith("remove ")]
        removes = [f for f in self.fix if f.startswith("remove ")]
        steps = ([f"add {_join(adds)}"] if adds else []) + ([_join(removes)] if removes else [])
        return f"{self.detail.rstrip('.')}; {' and '.join(steps)}."


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --- explaining ------------------------------------------------------------------------------


def explain(kconf: kconfiglib.Kconfig, symbol: str, requested: str, final: str, *,
            srctree: Path, kernel_arch: str, target_options: dict | None = None,
            providers: dict[str, list[str]] | None = None,
            other_trees: list[tuple[str, Path]] | None = None) -> Explanation:
    """Why CONFIG_<symbol> came out as `final` ("" = absent) when `requested` was asked for.

    `target_options` (symbol -> fragments.Option) are the target's own requests: a fix never undoes
    one of them, and a dependency the target deliberately turns off is said to be so. `providers`
    (symbol -> targets that turn it on) names where such an option belongs; `other_trees`
    ((version, source tree) of the other tracked kernels) turns an unknown symbol into a scope hint.
    """
    name = symbol.removeprefix("CONFIG_")
    sym = kconf.syms.get(name)
    if sym is None or not sym.nodes:
        return _explain_missing(kconf, name, requested, srctree, kernel_arch, other_trees or [])
    if name in getattr(kconf, "transitional", ()):
        return _explain_renamed(kconf, name, requested, srctree)
    if is_toolchain_decided(sym, srctree):
        return Explanation(
            "toolchain",
            f"{name} is decided by the toolchain: it has no prompt, and the kernel sets it by probing "
            "the compiler, assembler or linker.",
            [f"remove {option_line(name, requested)}"],
        )
    planner = FixPlanner(srctree, target_options, providers)
    if sym.orig_type not in (BOOL, TRISTATE):
        return _explain_value(sym, requested, final, planner)
    want, got = tristate(requested), tristate(final)
    if want > got:
        return _explain_too_low(sym, want, got, planner)
    if want < got:
        return _explain_too_high(sym, want, got, planner)
    return Explanation("other", f"{name} is {final or 'n'} as requested; nothing to explain.")


def _explain_renamed(kconf: kconfiglib.Kconfig, name: str, requested: str, srctree: Path) -> Explanation:
    """A `transitional` symbol: kept only so old .config files carry over to its new name."""
    successors = successors_of(kconf, name)
    value = requested or "y"
    if not successors:
        return Explanation(
            "renamed",
            f"{name} is transitional in Linux {kernel_version(srctree)}: it only carries old .config files "
            "over and is never written to .config; request what replaced it.",
            [f"remove {option_line(name, requested)}"],
        )
    return Explanation(
        "renamed",
        f"{name} is transitional in Linux {kernel_version(srctree)}: renamed to {', '.join(successors)}, "
        "and never written to .config itself; request the new name (scoped with `# @only version…`).",
        [f"CONFIG_{new}={value}" for new in successors] + [f"remove {option_line(name, requested)}"],
    )


def _explain_missing(kconf: kconfiglib.Kconfig, name: str, requested: str, srctree: Path,
                     kernel_arch: str, other_trees: list[tuple[str, Path]]) -> Explanation:
    remove = f"remove {option_line(name, requested)}"
    other = symbols_for_other_arches(srctree, kernel_arch).get(name)
    version = kernel_version(srctree)
    elsewhere = [v for v, tree in other_trees if v != version and name in tree_symbols(tree.resolve())]
    if elsewhere and not other:
        lacking = [version, *(v for v, tree in other_trees if v != version and v not in elsewhere)]
        scope = version_scope(lacking, elsewhere)
        hint = f"scope it `# @only {scope}`" if scope else "scope it with `# @only version…` for the versions that have it"
        return Explanation(
            "other-version",
            f"{name} is not in Linux {version}; it is in {', '.join(by_version(elsewhere))} → {hint}.",
            [remove],
        )
    if other:
        return Explanation(
            "other-arch",
            f"{name} exists only for {', '.join(other)} in Linux {version}, not for {kernel_arch}; "
            "scope the option with '# @only arch=…' or drop it.",
            [remove],
        )
    close = did_you_mean(name, (s.name for s in kconf.unique_defined_syms))
    hint = f"did you mean {' or '.join('CONFIG_' + c for c in close)}?" if close else "check the spelling."
    return Explanation(
        "unknown-symbol",
        f"{name} is not a symbol in Linux {version} ({kernel_arch}); {hint} "
        "If it was renamed or removed in this version, scope the option with '# @only version…'.",
        [remove],
    )


def _explain_too_low(sym: Symbol, want: int, got: int, planner: FixPlanner) -> Explanation:
    name = sym.name
    if want == 1 and (sym.orig_type is BOOL or not sym.kconfig.modules.tri_value):
        return _explain_impossible_m(sym, planner)
    if expr_value(sym.direct_dep) < want:
        return _explain_unmet(sym, sym.direct_dep, want, got, planner)
    if sym.choice is not None and sym.choice.selection not in (None, sym):
        return _explain_choice(sym)
    if not has_prompt(sym):
        return _explain_no_prompt(sym, want, planner)
    if sym.visibility < want:
        return _explain_hidden_prompt(sym, want, planner)
    return Explanation(
        "other",
        f"{name} can be set (its dependencies hold and its prompt is visible), yet kconfig made it "
        f"{tri_str(got)}; check that no later fragment sets it and that the value is valid.",
    )


def _explain_impossible_m(sym: Symbol, planner: FixPlanner) -> Explanation:
    if sym.orig_type is BOOL:
        return Explanation("other", f"{sym.name} is a bool option, so it cannot be m.", [f"CONFIG_{sym.name}=y"])
    modules = sym.kconfig.modules
    return Explanation("unmet-dependency", f"{sym.name}=m needs loadable module support, and MODULES is n.",
                       planner.lines(modules, 2), render(modules))


def _explain_too_high(sym: Symbol, want: int, got: int, planner: FixPlanner) -> Explanation:
    name = sym.name
    modules = sym.kconfig.modules
    if want == 1 and got == 2 and not modules.tri_value:
        return Explanation("unmet-dependency", f"{name}=m became y because MODULES is n, so tristates are built in.",
                           planner.lines(modules, 2), render(modules))
    forced = expr_value(sym.rev_dep)
    if forced > want:
        active = [s for s, value in selectors(sym.rev_dep) if value > want]
        return Explanation(
            "selected",
            f"{name} is forced to {tri_str(forced)} by `select` from {_listed(active)}.",
            [f"remove {option_line(s.name, s.str_value)}" for s in active if has_prompt(s)],
            render(sym.rev_dep),
        )
    if sym.choice is not None and sym.choice.selection is sym:
        return _explain_choice(sym)
    if not has_prompt(sym) or sym.visibility == 0:
        active = [render(cond) for value, cond in sym.defaults if expr_value(value) and expr_value(cond)]
        because = f" (its default applies because {active[0]})" if active and active[0] != "y" else ""
        return Explanation(
            "no-prompt",
            f"{name} cannot be turned off: it has no visible prompt, and its default makes it {tri_str(got)}{because}.",
            [f"remove {option_line(name, tri_str(want))}"],
        )
    return Explanation("other", f"{name} is visible and not selected, yet kconfig made it {tri_str(got)}.")


def _explain_value(sym: Symbol, requested: str, final: str, planner: FixPlanner) -> Explanation:
    name = sym.name
    if expr_value(sym.direct_dep) == 0:
        return _explain_unmet(sym, sym.direct_dep, 2, 0, planner)
    if not has_prompt(sym):
        return _explain_no_prompt(sym, 2, planner)
    if sym.visibility == 0:
        return _explain_hidden_prompt(sym, 2, planner)
    for low, high, cond in sym.ranges:
        if expr_value(cond) and not within_range(requested, low.str_value, high.str_value):
            return Explanation("other", f"{name}={requested} is outside its allowed range "
                                        f"{low.str_value}..{high.str_value}, so kconfig kept {final or 'the default'}.")
    return Explanation("other", f"{name} is settable, yet kconfig wrote {final or 'nothing'} instead of {requested}.")


def _explain_unmet(sym: Symbol, dep: Expr, want: int, got: int, planner: FixPlanner) -> Explanation:
    failing = unmet_operands(dep, want)
    rendered = render(dep)
    names = ", ".join(leaf_text(sc, wanted) for sc, wanted in failing)
    if expr_value(dep) == 1 and got == 1:
        detail = f"{sym.name} is capped at m: it depends on {rendered}, which is m because of {names}."
    else:
        detail = f"{sym.name} depends on {rendered}; unmet: {names}."
    if failing and all(is_probe(sc, planner.srctree) for sc, _ in failing):
        detail += " Those are decided by the compiler, assembler or linker, not by a fragment."
        return Explanation("toolchain", detail, [], rendered)
    excluded = planner.excluded(failing)
    if excluded:
        blocker, option = excluded[0]
        detail += (f" This target deliberately sets {option.text} ({option.where}"
                   + (f": {option.reason}" if option.reason else "") + f"), so {sym.name} cannot land in it")
        homes = planner.providers.get(blocker, [])
        detail += (f"; it belongs in {', '.join(homes)}, which turn {blocker} on." if homes else
                   f"; it belongs in a target that turns {blocker} on.")
        return Explanation("excluded-by-target", detail, [f"remove {option_line(sym.name, tri_str(want))}"], rendered)
    foreign = _foreign_operands(failing, planner.srctree)
    if foreign:  # an &&-ed operand that cannot hold on this arch: nothing else matters
        owners = "; ".join(f"{name} exists only for {', '.join(arches)}" for name, arches in foreign.items())
        detail += f" {owners}, so it cannot be met on this arch; scope the option with '# @only arch=…'."
        return Explanation("other-arch", detail, [], rendered)
    return Explanation("unmet-dependency", detail, planner.lines(dep, want), rendered)


def _foreign_operands(failing: list[tuple[Expr, int | None]], srctree: Path) -> dict[str, list[str]]:
    """Failing operands this kernel does not define for this arch, with the arch dirs that define them."""
    defined_elsewhere = arch_symbols(srctree.resolve())
    return {
        sc.name: sorted(defined_elsewhere[sc.name])
        for sc, _ in failing
        if isinstance(sc, Symbol) and not sc.nodes and sc.name in defined_elsewhere
    }


def _explain_no_prompt(sym: Symbol, want: int, planner: FixPlanner) -> Explanation:
    turned_on_by = [s for s, _ in selectors(sym.rev_dep) + selectors(sym.weak_rev_dep)]
    fix = planner.lines(sym, want)
    if turned_on_by:
        how = f"it is turned on by select/imply from {_listed(turned_on_by)}"
    else:
        how = f"nothing selects it and its default ({_default_text(sym)}) decides"
    return Explanation(
        "no-prompt",
        f"{sym.name} has no prompt, so a fragment cannot set it; {how}.",
        fix or [f"remove {option_line(sym.name, tri_str(want))}"],
        render(sym.rev_dep) if turned_on_by else _default_text(sym),
    )


def _explain_hidden_prompt(sym: Symbol, want: int, planner: FixPlanner) -> Explanation:
    cond = next(node.prompt[1] for node in sym.nodes if node.prompt)
    failing = unmet_operands(cond, want)
    turned_on_by = [s for s, _ in selectors(sym.rev_dep)]
    return Explanation(
        "no-prompt",
        f"{sym.name} can only be set when its prompt shows, which needs {render(cond)}; "
        f"unmet: {', '.join(leaf_text(sc, w) for sc, w in failing)}"
        + (f"; it is also selected by {_listed(turned_on_by)}." if turned_on_by else "."),
        planner.lines(cond, want),
        render(cond),
    )


def choice_title(choice: kconfiglib.Choice) -> str:
    """A choice's prompt, as menuconfig shows it."""
    return next((node.prompt[0] for node in choice.nodes if node.prompt), choice.name or "a choice")


def _explain_choice(sym: Symbol) -> Explanation:
    choice = sym.choice
    title = choice_title(choice)
    winner = choice.selection
    if winner is sym:
        others = [s for s in choice.syms if s is not sym and s.visibility]
        return Explanation(
            "choice",
            f"{sym.name} is the member chosen in choice '{title}'; one member must be y, so pick another "
            f"({', '.join(s.name for s in others) or 'none visible'}).",
            [f"CONFIG_{others[0].name}=y"] if others else [],
        )
    return Explanation(
        "choice",
        f"{sym.name} is a member of choice '{title}', and {winner.name if winner else 'another member'} won "
        "(the choice's default, or another fragment sets it).",
        [f"remove {option_line(winner.name, 'y')}"] if winner else [],
    )


def _default_text(sym: Symbol) -> str:
    defaults = [render(value) + ("" if cond is sym.kconfig.y else f" if {render(cond)}")
                for value, cond in sym.defaults if value is not sym.kconfig.n]
    return " / ".join(defaults) or "n"


def _listed(symbols: list[Symbol], limit: int = 8) -> str:
    shown = ", ".join(f"{s.name}(={s.str_value})" for s in symbols[:limit])
    return shown + (f" and {len(symbols) - limit} more" if len(symbols) > limit else "")
