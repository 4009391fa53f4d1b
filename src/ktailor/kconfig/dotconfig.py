"""Read a kernel .config into {symbol: value}; 'n' for '# CONFIG_X is not set'."""

from __future__ import annotations

import re
from pathlib import Path

SET_RE = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
NOT_SET_RE = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")


def parse_dotconfig_text(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        if match := SET_RE.match(line):
            values[match[1]] = match[2]
        elif match := NOT_SET_RE.match(line):
            values[match[1]] = "n"
    return values


def parse_dotconfig(path: Path) -> dict[str, str]:
    return parse_dotconfig_text(path.read_text())


def final_value(values: dict[str, str], symbol: str) -> str:
    """A symbol absent from .config is off (invisible or nonexistent): report it as 'n'."""
    return values.get(symbol, "n")


def same_value(requested: str, final: str) -> bool:
    if requested == final:
        return True
    try:  # 0x10 == 16, 010 is not octal in kconfig but compare numerically anyway
        return int(requested, 0) == int(final, 0)
    except ValueError:
        return False
