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

Anything else kconfiglib cannot parse still fails loudly (kconfig_tree.ExplainUnavailable), never silently.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
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
    """kconfiglib reading a Linux Kconfig of any supported series (see the module docstring), with its
    environment given rather than taken from the process: `env` answers `$(VAR)` and `srctree`, and
    `$(shell,…)` runs with that environment in `workdir` (cc-option & co. leave scratch files there).
    The process's os.environ, working directory and stdout are never touched; `$(info,…)` is dropped.

    `transitional` holds the names of the symbols the tree declares transitional.
    """

    __slots__ = ("_entry", "_env", "_workdir", "transitional")

    def __init__(self, filename: str, *, env: Mapping[str, str], workdir: Path, **kwargs: Any) -> None:
        self.transitional: set[str] = set()
        self._entry = ""
        self._env = dict(env)
        self._workdir = workdir
        super().__init__(filename, **kwargs)

    # kconfiglib sets srctree from os.getenv("srctree") before parsing; ours comes from `env`.
    @property  # type: ignore[override]
    def srctree(self) -> str:
        return self._env.get("srctree", "")

    @srctree.setter
    def srctree(self, _from_process_environment: str) -> None:
        pass

    def _tokenize(self, s: str) -> Any:
        if entry := ENTRY_RE.match(s):
            self._entry = entry[1]
        elif is_transitional(s) and self._entry:
            self.transitional.add(self._entry)
        return super()._tokenize(rewrite_line(s))

    def _fn_val(self, args: list[str]) -> str:
        name = args[0]
        if name in self.variables:  # a Kconfig-defined macro: kconfiglib expands it
            return super()._fn_val(args)
        if name == "shell" and len(args) == 2:
            return self._shell(args[1])
        if name == "info" and len(args) == 2:
            return ""
        if name in self._functions:
            return super()._fn_val(args)
        if name in self._env:
            self.env_vars.add(name)
            return self._env[name]
        return ""

    def _shell(self, command: str) -> str:
        """kconfiglib's $(shell,…), run with this Kconfig's environment in its workdir."""
        result = subprocess.run(command, shell=True, capture_output=True, env=self._env, cwd=self._workdir,
                                check=False)
        stdout = result.stdout.decode(self._encoding, errors="replace")
        stderr = result.stderr.decode(self._encoding, errors="replace")
        if stderr:
            self._warn(f"'{command}' wrote to stderr: {' '.join(stderr.splitlines())}", self.filename, self.linenr)
        return "\n".join(stdout.splitlines()).rstrip("\n").replace("\n", " ")


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
