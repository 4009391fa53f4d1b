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

import difflib
import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kconfiglib
from kconfiglib import (
    AND,
    BOOL,
    EQUAL,
    NOT,
    OR,
    REL_TO_STR,
    STR_TO_TRI,
    TRISTATE,
    Choice,
    Symbol,
    expr_value,
    split_expr,
)

from ktailor.core.errors import EnvironmentProblem
from ktailor.kconfig.fragments import version_key
from ktailor.kconfig.kconfig_syntax import KernelKconfig, successors_of
from ktailor.sources.source_tree import makefile_fields

KINDS = ("unknown-symbol", "other-version", "other-arch", "renamed", "unmet-dependency", "excluded-by-target", "no-prompt",
         "selected", "choice", "toolchain", "other")

# Symbols that describe the compiler, assembler, linker or Rust toolchain (when they have no prompt).
TOOLCHAIN_NAME_RE = re.compile(
    r"^(CC_HAS_|CC_CAN_|CC_IS_|CC_VERSION_TEXT$|GCC_VERSION$|CLANG_VERSION$|AS_|LD_|PAHOLE_|RUSTC_|"
    r"RUST_IS_AVAILABLE$|BINDGEN_|TOOLCHAIN_|GCC_ASM_|ARCH_SUPPORTS_.*_TOOLCHAIN)"
)
# A `default`/`def_bool`/`depends on` line that runs the toolchain: any $(…) but the arch/version variables.
PROBE_LINE_RE = re.compile(r"^\s*(def_bool|def_tristate|default|depends\s+on)\b.*\$\((?!(SRCARCH|ARCH|KERNELVERSION)\))")
ENTRY_RE = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$", re.MULTILINE)
FIX_DEPTH = 6  # how far the fix follows dependencies of dependencies
Expr = Any  # a kconfiglib expression: a Symbol, a Choice, or an (operator, operand, operand) tuple (untyped)


class ExplainUnavailable(EnvironmentProblem):
    """kconfiglib could not parse this kernel's Kconfig, so differences are reported unexplained."""


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


# --- loading ---------------------------------------------------------------------------------


def load_kconfig(srctree: Path, kernel_arch: str, cross_compile: str, config: Path | None) -> kconfiglib.Kconfig:
    """Parse the kernel's Kconfig for one arch and load a .config; raise ExplainUnavailable on failure."""
    srctree = srctree.resolve()
    config = config.resolve() if config is not None else None
    if not (srctree / "Kconfig").is_file():
        raise ExplainUnavailable(f"{srctree} has no top-level Kconfig; it is not an extracted kernel source tree.")
    env = {**os.environ, **kbuild_environment(srctree, kernel_arch, cross_compile)}
    # $(shell,…) probes such as cc-option create scratch files in the directory they run in.
    with tempfile.TemporaryDirectory(prefix="ktailor-kconfig-") as scratch:
        try:
            kconf = KernelKconfig(str(srctree / "Kconfig"), env=env, workdir=Path(scratch), warn_to_stderr=False)
            if config is not None:
                kconf.load_config(str(config))
        except (kconfiglib.KconfigError, OSError, UnicodeDecodeError) as exc:
            raise ExplainUnavailable(
                f"kconfiglib could not read the Kconfig of {srctree} for ARCH={kernel_arch} "
                f"(CC={cross_compile}gcc): {str(exc).strip()}"
            ) from None
    return kconf


def kbuild_environment(srctree: Path, kernel_arch: str, cross_compile: str) -> dict[str, str]:
    """The variables the top-level Makefile exports that Kconfig files read through $(…)."""
    cc = f"{cross_compile}gcc"
    return {
        "srctree": str(srctree),
        "ARCH": kernel_arch,
        "SRCARCH": source_arch(kernel_arch),
        "KERNELVERSION": kernel_version(srctree),
        "CROSS_COMPILE": cross_compile,
        "CC": cc,
        "LD": f"{cross_compile}ld",
        "AR": f"{cross_compile}ar",
        "NM": f"{cross_compile}nm",
        "OBJCOPY": f"{cross_compile}objcopy",
        "HOSTCC": "gcc",
        "HOSTCXX": "g++",
        "CLANG_FLAGS": "",
        "PAHOLE": "pahole",
        "RUSTC": "rustc",
        "BINDGEN": "bindgen",
        # The Makefile strips '#' so the text survives being a Kconfig string.
        "CC_VERSION_TEXT": _first_output_line([cc, "--version"]).replace("#", ""),
        "RUSTC_VERSION_TEXT": _first_output_line(["rustc", "--version"]).replace("#", ""),
    }


def source_arch(kernel_arch: str) -> str:
    """SRCARCH for an ARCH, as the top-level Makefile maps it."""
    return {"i386": "x86", "x86_64": "x86", "sparc32": "sparc", "sparc64": "sparc", "parisc64": "parisc",
            "sh64": "sh"}.get(kernel_arch, kernel_arch)


def kernel_version(srctree: Path) -> str:
    """`make kernelversion` without make: VERSION.PATCHLEVEL.SUBLEVEL+EXTRAVERSION from the Makefile."""
    try:
        fields = makefile_fields(srctree)
    except OSError:
        return ""
    numbers = [fields[k] for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL") if fields.get(k)]
    return ".".join(numbers) + fields.get("EXTRAVERSION", "")


def _first_output_line(argv: list[str]) -> str:
    if not shutil.which(argv[0]):
        return ""
    result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}, check=False)
    return (result.stdout.splitlines() or [""])[0]


# --- other architectures and names -----------------------------------------------------------


def symbols_for_other_arches(srctree: Path, kernel_arch: str) -> dict[str, list[str]]:
    """Symbols defined under arch/<other>/ (never under this arch's dir) -> the arches defining them."""
    own = source_arch(kernel_arch)
    found: dict[str, list[str]] = {}
    for symbol, arches in _arch_symbols(srctree.resolve()).items():
        if own not in arches:
            found[symbol] = sorted(arches)
    return found


@functools.lru_cache(maxsize=8)
def _arch_symbols(srctree: Path) -> dict[str, frozenset[str]]:
    """Every `config`/`menuconfig` in arch/*/**/Kconfig* -> the arch directories that define it."""
    by_symbol: dict[str, set[str]] = {}
    arch_root = srctree / "arch"
    arch_dirs = sorted(p for p in arch_root.iterdir() if p.is_dir()) if arch_root.is_dir() else []
    for arch_dir in arch_dirs:
        for kconfig in kconfig_files(arch_dir):
            for symbol in ENTRY_RE.findall(kconfig.read_text(errors="replace")):
                by_symbol.setdefault(symbol, set()).add(arch_dir.name)
    return {symbol: frozenset(arches) for symbol, arches in by_symbol.items()}


@functools.lru_cache(maxsize=8)
def tree_symbols(srctree: Path) -> frozenset[str]:
    """Every `config`/`menuconfig` defined anywhere in a source tree (any arch)."""
    found: set[str] = set()
    for kconfig in kconfig_files(srctree):
        found.update(ENTRY_RE.findall(kconfig.read_text(errors="replace")))
    return frozenset(found)


def kconfig_files(top: Path) -> Iterator[Path]:
    """The Kconfig* files under `top`, hidden directories left out: a user's tree is often a git
    checkout, and a `git gc --auto` that `git commit` leaves running in the background removes
    .git/objects/* directories under a walk (CI failed so on a real 5.10 checkout)."""
    for directory, subdirs, names in os.walk(top):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(directory, name)
            if name.startswith("Kconfig") and path.is_file():
                yield path


def _by_version(versions: Iterable[str]) -> list[str]:
    return sorted(versions, key=version_key)


def version_scope(lacking: list[str], having: list[str]) -> str:
    """The `@only` condition that separates versions without a symbol from versions with it:
    `version>=5.11` when every version that has it is newer (the first series after the newest one
    without it; `version>=6.1.188` within one series), `version<6.2` when every one that has it is
    older; "" when they interleave."""
    low, high = [version_key(v) for v in lacking], [version_key(v) for v in having]
    if min(high) > max(low):
        return f"version>={_next_after(max(low), min(high))}"
    if max(high) < min(low):
        return f"version<{_next_after(max(high), min(low))}"
    return ""


def _next_after(old: tuple[int, int, int], new: tuple[int, int, int]) -> str:
    if old[:2] == new[:2]:
        return f"{old[0]}.{old[1]}.{old[2] + 1}"
    return f"{old[0]}.{old[1] + 1}"


def did_you_mean(name: str, candidates: Iterable[str]) -> list[str]:
    """Up to three candidate names close to `name` (CONFIG_ prefixes ignored), best first."""
    name = name.removeprefix("CONFIG_")
    return difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.75)


def is_toolchain_decided(sym: Symbol, srctree: Path) -> bool:
    """No prompt, and either a toolchain name (CC_HAS_*, AS_*, …) or a default probed with $(…)."""
    if has_prompt(sym):
        return False
    return bool(TOOLCHAIN_NAME_RE.match(sym.name)) or _defaults_probe_toolchain(sym, srctree)


def _defaults_probe_toolchain(sym: Symbol, srctree: Path) -> bool:
    for node in sym.nodes:
        try:
            lines = (srctree / node.filename).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines[node.linenr:]:  # node.linenr is the 1-based `config` line
            if line.strip() and not line[0].isspace():
                break
            if PROBE_LINE_RE.match(line):
                return True
    return False


def has_prompt(sym: Symbol | Choice) -> bool:
    return any(node.prompt for node in sym.nodes)


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
            [f"remove {_line(name, requested)}"],
        )
    planner = FixPlanner(srctree, target_options, providers)
    if sym.orig_type not in (BOOL, TRISTATE):
        return _explain_value(sym, requested, final, planner)
    want, got = _tristate(requested), _tristate(final)
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
            [f"remove {_line(name, requested)}"],
        )
    return Explanation(
        "renamed",
        f"{name} is transitional in Linux {kernel_version(srctree)}: renamed to {', '.join(successors)}, "
        "and never written to .config itself; request the new name (scoped with `# @only version…`).",
        [f"CONFIG_{new}={value}" for new in successors] + [f"remove {_line(name, requested)}"],
    )


def _explain_missing(kconf: kconfiglib.Kconfig, name: str, requested: str, srctree: Path,
                     kernel_arch: str, other_trees: list[tuple[str, Path]]) -> Explanation:
    remove = f"remove {_line(name, requested)}"
    other = symbols_for_other_arches(srctree, kernel_arch).get(name)
    version = kernel_version(srctree)
    elsewhere = [v for v, tree in other_trees if v != version and name in tree_symbols(tree.resolve())]
    if elsewhere and not other:
        lacking = [version, *(v for v, tree in other_trees if v != version and v not in elsewhere)]
        scope = version_scope(lacking, elsewhere)
        hint = f"scope it `# @only {scope}`" if scope else "scope it with `# @only version…` for the versions that have it"
        return Explanation(
            "other-version",
            f"{name} is not in Linux {version}; it is in {', '.join(_by_version(elsewhere))} → {hint}.",
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
        f"{_tri_str(got)}; check that no later fragment sets it and that the value is valid.",
    )


def _explain_impossible_m(sym: Symbol, planner: FixPlanner) -> Explanation:
    if sym.orig_type is BOOL:
        return Explanation("other", f"{sym.name} is a bool option, so it cannot be m.", [f"CONFIG_{sym.name}=y"])
    modules = sym.kconfig.modules
    return Explanation("unmet-dependency", f"{sym.name}=m needs loadable module support, and MODULES is n.",
                       planner.lines(modules, 2), _render(modules))


def _explain_too_high(sym: Symbol, want: int, got: int, planner: FixPlanner) -> Explanation:
    name = sym.name
    modules = sym.kconfig.modules
    if want == 1 and got == 2 and not modules.tri_value:
        return Explanation("unmet-dependency", f"{name}=m became y because MODULES is n, so tristates are built in.",
                           planner.lines(modules, 2), _render(modules))
    forced = expr_value(sym.rev_dep)
    if forced > want:
        active = [s for s, value in selectors(sym.rev_dep) if value > want]
        return Explanation(
            "selected",
            f"{name} is forced to {_tri_str(forced)} by `select` from {_listed(active)}.",
            [f"remove {_line(s.name, s.str_value)}" for s in active if has_prompt(s)],
            _render(sym.rev_dep),
        )
    if sym.choice is not None and sym.choice.selection is sym:
        return _explain_choice(sym)
    if not has_prompt(sym) or sym.visibility == 0:
        active = [_render(cond) for value, cond in sym.defaults if expr_value(value) and expr_value(cond)]
        because = f" (its default applies because {active[0]})" if active and active[0] != "y" else ""
        return Explanation(
            "no-prompt",
            f"{name} cannot be turned off: it has no visible prompt, and its default makes it {_tri_str(got)}{because}.",
            [f"remove {_line(name, _tri_str(want))}"],
        )
    return Explanation("other", f"{name} is visible and not selected, yet kconfig made it {_tri_str(got)}.")


def _explain_value(sym: Symbol, requested: str, final: str, planner: FixPlanner) -> Explanation:
    name = sym.name
    if expr_value(sym.direct_dep) == 0:
        return _explain_unmet(sym, sym.direct_dep, 2, 0, planner)
    if not has_prompt(sym):
        return _explain_no_prompt(sym, 2, planner)
    if sym.visibility == 0:
        return _explain_hidden_prompt(sym, 2, planner)
    for low, high, cond in sym.ranges:
        if expr_value(cond) and not _within(requested, low.str_value, high.str_value):
            return Explanation("other", f"{name}={requested} is outside its allowed range "
                                        f"{low.str_value}..{high.str_value}, so kconfig kept {final or 'the default'}.")
    return Explanation("other", f"{name} is settable, yet kconfig wrote {final or 'nothing'} instead of {requested}.")


def _explain_unmet(sym: Symbol, dep: Expr, want: int, got: int, planner: FixPlanner) -> Explanation:
    failing = unmet_operands(dep, want)
    rendered = _render(dep)
    names = ", ".join(_leaf_str(sc, wanted) for sc, wanted in failing)
    if expr_value(dep) == 1 and got == 1:
        detail = f"{sym.name} is capped at m: it depends on {rendered}, which is m because of {names}."
    else:
        detail = f"{sym.name} depends on {rendered}; unmet: {names}."
    if failing and all(_is_probe(sc, planner.srctree) for sc, _ in failing):
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
        return Explanation("excluded-by-target", detail, [f"remove {_line(sym.name, _tri_str(want))}"], rendered)
    foreign = _foreign_operands(failing, planner.srctree)
    if foreign:  # an &&-ed operand that cannot hold on this arch: nothing else matters
        owners = "; ".join(f"{name} exists only for {', '.join(arches)}" for name, arches in foreign.items())
        detail += f" {owners}, so it cannot be met on this arch; scope the option with '# @only arch=…'."
        return Explanation("other-arch", detail, [], rendered)
    return Explanation("unmet-dependency", detail, planner.lines(dep, want), rendered)


def _foreign_operands(failing: list[tuple[Expr, int | None]], srctree: Path) -> dict[str, list[str]]:
    """Failing operands this kernel does not define for this arch, with the arch dirs that define them."""
    defined_elsewhere = _arch_symbols(srctree.resolve())
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
        fix or [f"remove {_line(sym.name, _tri_str(want))}"],
        _render(sym.rev_dep) if turned_on_by else _default_text(sym),
    )


def _explain_hidden_prompt(sym: Symbol, want: int, planner: FixPlanner) -> Explanation:
    cond = next(node.prompt[1] for node in sym.nodes if node.prompt)
    failing = unmet_operands(cond, want)
    turned_on_by = [s for s, _ in selectors(sym.rev_dep)]
    return Explanation(
        "no-prompt",
        f"{sym.name} can only be set when its prompt shows, which needs {_render(cond)}; "
        f"unmet: {', '.join(_leaf_str(sc, w) for sc, w in failing)}"
        + (f"; it is also selected by {_listed(turned_on_by)}." if turned_on_by else "."),
        planner.lines(cond, want),
        _render(cond),
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
        [f"remove {_line(winner.name, 'y')}"] if winner else [],
    )


def _default_text(sym: Symbol) -> str:
    defaults = [_render(value) + ("" if cond is sym.kconfig.y else f" if {_render(cond)}")
                for value, cond in sym.defaults if value is not sym.kconfig.n]
    return " / ".join(defaults) or "n"


def _listed(symbols: list[Symbol], limit: int = 8) -> str:
    shown = ", ".join(f"{s.name}(={s.str_value})" for s in symbols[:limit])
    return shown + (f" and {len(symbols) - limit} more" if len(symbols) > limit else "")


# --- expressions -----------------------------------------------------------------------------


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
    if op is EQUAL and _is_tristate_constant(expr[2]) and not expr[1].is_constant:
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


Plan = tuple[tuple[str, ...], int]  # option lines, dependencies first; how many leaves no fragment can change


class FixPlanner:
    """The option lines that make an expression true: the cheapest side of each `||`, dependencies before
    their dependents, prompt-less symbols through a selector or their own default. One per explanation."""

    def __init__(self, srctree: Path, target_options: dict | None = None,
                 providers: dict[str, list[str]] | None = None) -> None:
        self.srctree = srctree
        self.fixed = target_options or {}  # the target's own requests: a plan never changes them
        self.providers = providers or {}
        self._memo: dict[tuple[str, int], Plan] = {}

    def excluded(self, failing: list[tuple[Expr, int | None]]) -> list[tuple[str, Any]]:
        """Failing operands the target itself requests at a value that keeps them failing."""
        found = []
        for sc, wanted in failing:
            option = self.fixed.get(getattr(sc, "name", ""))
            if option is not None and wanted is not None and _tristate(option.value) != wanted \
                    and (wanted == 0) == (_tristate(option.value) > 0):
                found.append((sc.name, option))
        return found

    def _against_target(self, sc: Symbol, low: int, high: int) -> bool:
        option = self.fixed.get(sc.name)
        return option is not None and not low <= _tristate(option.value) <= high

    def lines(self, expr: Expr, need: int) -> list[str]:
        return list(self.expr(expr, need, 0)[0])

    def expr(self, expr: Expr, need: int, depth: int) -> Plan:
        if expr_value(expr) >= need:
            return (), 0
        if not isinstance(expr, tuple):
            return self.symbol(expr, need, depth)
        op = expr[0]
        if op is AND:
            return _combine(self.expr(expr[1], need, depth), self.expr(expr[2], need, depth))
        if op is OR:
            return min(self.expr(expr[1], need, depth), self.expr(expr[2], need, depth), key=_plan_cost)
        if op is NOT:
            return self.at_most(expr[1], 2 - need)
        return self._relation(expr, depth)

    def _relation(self, expr: tuple[int, Symbol, Symbol], depth: int) -> Plan:
        """`FOO=y` / `FOO=n` can be planned; other comparisons (`PAHOLE_VERSION>=121`) cannot."""
        op, left, right = expr
        if op is not EQUAL or not _is_tristate_constant(right) or left.is_constant:
            return (), 1
        wanted = STR_TO_TRI[right.name]
        return self.symbol(left, wanted, depth) if left.tri_value < wanted else self.at_most(left, wanted)

    def symbol(self, sc: Expr, need: int, depth: int) -> Plan:
        """Make `sc` at least `need`."""
        if isinstance(sc, Symbol) and sc.tri_value >= need:
            return (), 0
        if not isinstance(sc, Symbol) or sc.is_constant or is_toolchain_decided(sc, self.srctree) or depth > FIX_DEPTH:
            return (), 1
        if self._against_target(sc, need, 2):
            return (), 1  # the target turns it off on purpose
        key = (sc.name, need)
        if key not in self._memo:
            self._memo[key] = ((), 1)  # a dependency loop is no way to turn it on
            self._memo[key] = self._enable(sc, need, depth)
        return self._memo[key]

    def at_most(self, sc: Expr, limit: int) -> Plan:
        """Make `sc` at most `limit` (for `!FOO` and `FOO=n`)."""
        if not isinstance(sc, Symbol) or sc.tri_value <= limit:
            return (), 0
        if sc.is_constant or is_toolchain_decided(sc, self.srctree) or self._against_target(sc, 0, limit):
            return (), 1
        return (f"remove {_line(sc.name, sc.str_value)}",), 0

    def _enable(self, sym: Symbol, need: int, depth: int) -> Plan:
        if has_prompt(sym):
            prompt_cond = next(node.prompt[1] for node in sym.nodes if node.prompt)
            value = "y" if need == 2 or sym.orig_type is BOOL else "m"
            return _combine(self.expr(sym.direct_dep, need, depth + 1), self.expr(prompt_cond, need, depth + 1),
                            ((f"CONFIG_{sym.name}={value}",), 0))
        routes = [self.symbol(s, 2, depth + 1) for s, _ in (selectors(sym.rev_dep) + selectors(sym.weak_rev_dep))]
        for value, cond in sym.defaults:
            if value is not sym.kconfig.n:
                routes.append(_combine(self.expr(sym.direct_dep, need, depth + 1), self.expr(cond, need, depth + 1),
                                       self.expr(value, need, depth + 1)))
        return min(routes, key=_plan_cost, default=((), 1))


def _combine(*plans: Plan) -> Plan:
    lines = dict.fromkeys(line for plan in plans for line in plan[0])
    return tuple(lines), sum(plan[1] for plan in plans)


def _plan_cost(plan: Plan) -> tuple[int, int]:
    return plan[1], len(plan[0])


def _is_tristate_constant(sc: Expr) -> bool:
    return isinstance(sc, Symbol) and sc.is_constant and sc.name in ("n", "m", "y")


def _is_probe(sc: Expr, srctree: Path) -> bool:
    """A leaf no fragment can change: a constant (from an expanded $(cc-option,…)) or a toolchain symbol."""
    if not isinstance(sc, Symbol):
        return False
    return sc.is_constant or is_toolchain_decided(sc, srctree)


def _render(expr: Expr, parent: Expr = None) -> str:
    """`BLK_DEV_DM(=n) && MD(=n)`: the expression with each symbol's current value."""
    if not isinstance(expr, tuple):
        return _operand(expr)
    op = expr[0]
    if op is NOT:
        return "!" + _render(expr[1], NOT)
    if op in (AND, OR):
        text = f"{_render(expr[1], op)} {'&&' if op is AND else '||'} {_render(expr[2], op)}"
        return f"({text})" if parent not in (None, op) else text
    return f"{_plain(expr[1])}{REL_TO_STR[op]}{_plain(expr[2])}"


def _operand(sc: Expr) -> str:
    if isinstance(sc, Choice):
        return f"<choice {sc.name or ''}>".replace(" >", ">")
    if sc.is_constant:
        return _plain(sc)
    if not sc.nodes:  # undefined here (another arch's symbol): evaluates to n
        return f"{sc.name}(=n)"
    value = sc.str_value if sc.orig_type in (BOOL, TRISTATE) else f'"{sc.str_value}"'
    return f"{sc.name}(={value})"


def _plain(sc: Expr) -> str:
    if sc.is_constant and sc.name not in ("n", "m", "y"):
        return f'"{sc.name}"'
    return sc.name


def _leaf_str(sc: Expr, wanted: int | None) -> str:
    if wanted is None:
        return f"{_render(sc)} is {_tri_str(expr_value(sc))}"
    if isinstance(sc, Symbol) and sc.is_constant:
        return f"a constant {sc.name} (an expanded compiler probe such as $(cc-option,…), or `depends on n`)"
    return f"{_operand(sc)} needs to be {_tri_str(wanted)}"


def _tristate(value: str) -> int:
    return {"y": 2, "m": 1}.get(value.strip(), 0)


def _tri_str(value: int) -> str:
    return kconfiglib.TRI_TO_STR[value]


def _line(name: str, value: str) -> str:
    if value in ("", "n"):
        return f"# CONFIG_{name} is not set"
    return f"CONFIG_{name}={value}"


def _within(value: str, low: str, high: str) -> bool:
    try:
        number, lo, hi = (int(v, 0) for v in (value.strip('"'), low, high))
    except ValueError:
        return True
    return lo <= number <= hi


def render_expression(expr: Expr) -> str:
    """Public name for the value-annotated rendering (`BLK_DEV_DM(=n) && MD(=n)`)."""
    return _render(expr)
