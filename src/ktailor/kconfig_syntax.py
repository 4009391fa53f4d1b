"""Teach kconfiglib the Kconfig syntax Linux added after kconfiglib's last release (14.1.0, 2020).

kconfiglib stays the explainer; the kernel's own kconfig stays the authority. Each newer construct is
rewritten, line by line before kconfiglib tokenizes it, into an older construct with the same meaning
as the kernel's C implementation (scripts/kconfig/) gives it:

- bare `modules` inside `config MODULES` (5.x+)      → `option modules`
- `transitional` (7.x: a renamed symbol kept only so old .config files carry over; no prompt, never
  written to .config; scripts/kconfig/parser.y `config_option: T_TRANSITIONAL`) → removed, and the
  symbol is remembered in `Kconfig.transitional`; its successors are the symbols whose `default`
  names it (`successors_of`). Unlike the kernel, kconfiglib does not carry an old .config's value of
  a transitional symbol over to its successor; the explainer only loads .config files the kernel
  wrote, and those never contain one.
- `depends on X if Y` (7.x; menu.c `menu_add_dep`: "Y != n → X, Y == n → y", i.e. `X || (Y = n)`)
  → `depends on (X) || Y = n` when Y is one symbol, `(X) || Y = y` when Y is `!S` (tristate `!S` is
  n only when S is y), and `(X) || !(Y)` otherwise (exact for bool conditions; the kernel's 7.2
  Kconfig uses only the first two forms).

Anything else kconfiglib cannot parse still fails loudly (explain.ExplainUnavailable), never silently.
"""

from __future__ import annotations

import re
from typing import Any

import kconfiglib

ENTRY_RE = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*(?:#.*)?$")
CONDITIONAL_DEPENDS_RE = re.compile(
    r"^(?P<lead>\s*depends\s+on\s+)(?P<dep>[^#]*?)\s+if\s+(?P<cond>[^#]*?)\s*(?P<comment>#.*)?$"
)
SYMBOL_RE = re.compile(r"^[A-Za-z0-9_]+$")
NEGATED_SYMBOL_RE = re.compile(r"^!\s*([A-Za-z0-9_]+)$")


def rewrite_line(line: str) -> str:
    """One Kconfig line in the syntax kconfiglib 14.1 knows (the line itself when nothing is newer)."""
    stripped = line.strip()
    if stripped == "modules":
        return line.replace("modules", "option modules", 1)
    if stripped == "transitional":
        return "\n"
    match = CONDITIONAL_DEPENDS_RE.match(line.rstrip("\n"))
    if match is None:
        return line
    dep, cond = match["dep"].strip(), match["cond"].strip()
    if SYMBOL_RE.match(cond):
        unless = f"{cond} = n"
    elif negated := NEGATED_SYMBOL_RE.match(cond):
        unless = f"{negated[1]} = y"
    else:
        unless = f"!({cond})"
    return f"{match['lead']}({dep}) || {unless}\n"


def is_transitional(line: str) -> bool:
    return line.strip() == "transitional"


class KernelKconfig(kconfiglib.Kconfig):
    """kconfiglib reading a Linux Kconfig of any supported series (see the module docstring).

    `transitional` holds the names of the symbols the tree declares transitional.
    """

    __slots__ = ("_entry", "transitional")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.transitional: set[str] = set()
        self._entry = ""
        super().__init__(*args, **kwargs)

    def _tokenize(self, s: str) -> Any:
        if entry := ENTRY_RE.match(s):
            self._entry = entry[1]
        elif is_transitional(s) and self._entry:
            self.transitional.add(self._entry)
        return super()._tokenize(rewrite_line(s))


def successors_of(kconf: kconfiglib.Kconfig, name: str) -> list[str]:
    """The symbols whose `default` names the transitional symbol `name` (its new names), sorted."""
    old = kconf.syms.get(name)
    if old is None:
        return []
    found = {
        sym.name
        for sym in kconf.unique_defined_syms
        if sym is not old and any(old in kconfiglib.expr_items(value) for value, _cond in sym.defaults)
    }
    return sorted(found)
