"""Fragments and lists: parse them, resolve a target's list, and compute what it requests.

Format (see fragments/README.md): a fragment starts with a header comment whose first line is
`# requirement: <group>`; every option line is directly preceded by its own reason comment;
`# @only arch=… version>=…` scopes an option (or, in the header, the whole fragment);
`# @override` marks an intended override of an earlier fragment's value.
A list names fragments (`*.conf`) and other lists (`*.list`, included in place), one per line.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from pathlib import Path

from ktailor.core.errors import InputError, line_of
from ktailor.core.records import read_toml
from ktailor.kconfig.fragment_dirs import locate

OPTION_RE = re.compile(r'^CONFIG_([A-Z0-9_]+)=(y|m|n|-?\d+|0x[0-9a-fA-F]+|"(?:[^"\\]|\\.)*")$')
NOT_SET_RE = re.compile(r"^# CONFIG_([A-Z0-9_]+) is not set$")
ANNOTATION_RE = re.compile(r"^#\s*@(\w+)\s*(.*)$")
REQUIREMENT_RE = re.compile(r"^#\s*requirement:\s*(\S.*)$")
CONDITION_RE = re.compile(r"^(arch)=(\S+)$|^(version)(>=|<=|==|!=|>|<)(\d+(?:\.\d+){0,2})$")
REASON_PLACEHOLDER = "REASON: say why this option is needed"

_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}


def version_key(text: str) -> tuple[int, int, int]:
    major, minor, patch = [*(int(p) for p in text.split(".")), 0, 0, 0][:3]
    return major, minor, patch


@dataclass(frozen=True)
class Scope:
    """Where an option or fragment applies: some arches, some kernel versions (all must hold)."""

    arches: frozenset[str] = frozenset()
    versions: tuple[tuple[str, tuple[int, int, int]], ...] = ()

    def applies(self, arch: str, version: tuple[int, int, int]) -> bool:
        if self.arches and arch not in self.arches:
            return False
        return all(_OPS[op](version, bound) for op, bound in self.versions)

    def merged(self, other: Scope) -> Scope:
        arches = self.arches & other.arches if self.arches and other.arches else self.arches or other.arches
        return Scope(arches=arches, versions=self.versions + other.versions)

    def __str__(self) -> str:
        parts = [f"arch={a}" for a in sorted(self.arches)]
        parts += [f"version{op}{'.'.join(map(str, bound))}" for op, bound in self.versions]
        return " ".join(parts) or "everywhere"


def parse_scope(text: str) -> Scope:
    """Parse the conditions of `# @only arch=x86_64 version>=6.2`; raise ValueError on junk."""
    arches: set[str] = set()
    versions = []
    for word in text.split():
        match = CONDITION_RE.match(word)
        if not match:
            raise ValueError(word)
        if match[1]:
            arches.update(match[2].split(","))
        else:
            versions.append((match[4], version_key(match[5])))
    if not arches and not versions:
        raise ValueError(text)
    return Scope(frozenset(arches), tuple(versions))


@dataclass(frozen=True)
class Option:
    symbol: str  # without CONFIG_
    value: str  # y, m, n, a number or a quoted string
    path: Path
    line: int
    reason: str
    scope: Scope
    override: bool

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def text(self) -> str:
        return f"# CONFIG_{self.symbol} is not set" if self.value == "n" else f"CONFIG_{self.symbol}={self.value}"


@dataclass(frozen=True)
class Problem:
    """A malformed or incomplete line found while parsing (lint reports them all)."""

    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class Fragment:
    path: Path
    requirement: str | None
    scope: Scope
    options: list[Option] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _describe_bad_line(text: str) -> str:
    if re.match(r"^\s*CONFIG_\w+\s+=|^\s*CONFIG_\w+=\s", text):
        return "has spaces around '='; write CONFIG_FOO=y with no spaces."
    if re.match(r"^config_\w+=", text, re.IGNORECASE) and not text.startswith("CONFIG_"):
        return "the CONFIG_ prefix must be upper case; write CONFIG_FOO=y."
    if re.match(r"^CONFIG_\w*[a-z]\w*=", text):
        return "Kconfig symbols are upper case; write the symbol in capitals."
    if re.match(r"^CONFIG_[A-Z0-9_]+=", text):
        return "has a value that is not y, m, n, a number or a double-quoted string."
    if re.match(r"^[A-Z0-9_]+=", text):
        return "is missing the CONFIG_ prefix; write CONFIG_" + text + "."
    if text.startswith("#") and "is not set" in text:
        return "a 'not set' line must read exactly '# CONFIG_FOO is not set'."
    return "is neither an option (CONFIG_FOO=y), a '# CONFIG_FOO is not set' line, a comment nor blank; remove it."


def parse_fragment(path: Path, display: Path | None = None) -> Fragment:
    """Parse one fragment file. Malformed lines become Problems rather than exceptions."""
    shown = display or path
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise InputError("fragment file not found.", path=shown) from None
    fragment = Fragment(path=shown, requirement=None, scope=Scope())

    # Header: the leading comment block, which must be followed by a blank line.
    header_end = 0
    def in_header(text: str) -> bool:
        return text.startswith("#") and not NOT_SET_RE.match(text)

    while header_end < len(lines) and in_header(lines[header_end]):
        header_end += 1
    if header_end and (header_end == len(lines) or not lines[header_end].strip()):
        for number, text in enumerate(lines[:header_end], start=1):
            if match := REQUIREMENT_RE.match(text):
                fragment.requirement = match[1].strip()
            elif match := ANNOTATION_RE.match(text):
                if match[1] == "only":
                    try:
                        fragment.scope = fragment.scope.merged(parse_scope(match[2]))
                    except ValueError as exc:
                        fragment.problems.append(Problem(shown, number, _bad_scope(str(exc))))
                else:
                    fragment.problems.append(Problem(shown, number, f"@{match[1]} is not allowed in a header; only @only is."))
    else:
        header_end = 0
    if fragment.requirement is None:
        fragment.problems.append(
            Problem(shown, 1, "has no header; start the file with '# requirement: <group>', a line on what it covers, "
                              "and a blank line.")
        )

    comment: list[tuple[int, str]] = []  # the comment block directly above the current line
    for number, raw in enumerate(lines[header_end:], start=header_end + 1):
        text = raw.rstrip()
        symbol = value = None
        if match := NOT_SET_RE.match(text):
            symbol, value = match[1], "n"
        elif match := OPTION_RE.match(text):
            symbol, value = match[1], match[2]
        elif not text.strip():
            comment = []
            continue
        elif text.startswith("#") and "is not set" not in text:
            comment.append((number, text))
            continue
        else:
            fragment.problems.append(Problem(shown, number, f"{text.strip()!r} " + _describe_bad_line(text.strip())))
            comment = []
            continue
        fragment.options.append(_option_from(symbol, value, shown, number, comment, fragment))
        comment = []
    return fragment


def _bad_scope(word: str) -> str:
    return (
        f"@only condition {word!r} is not understood; write conditions like 'arch=x86_64', "
        "'version>=6.2' or 'version<6.9', separated by spaces."
    )


def _option_from(symbol: str, value: str, path: Path, number: int, comment: list[tuple[int, str]], fragment: Fragment) -> Option:
    reason_lines = []
    scope = fragment.scope
    override = False
    for line_number, text in comment:
        if match := ANNOTATION_RE.match(text):
            if match[1] == "only":
                try:
                    scope = scope.merged(parse_scope(match[2]))
                except ValueError as exc:
                    fragment.problems.append(Problem(path, line_number, _bad_scope(str(exc))))
            elif match[1] == "override":
                override = True
            else:
                fragment.problems.append(
                    Problem(path, line_number, f"unknown annotation @{match[1]}; the known ones are @only and @override.")
                )
        else:
            reason_lines.append(text.lstrip("#").strip())
    reason = " ".join(line for line in reason_lines if line)
    return Option(symbol, value, path, number, reason, scope, override)


def resolve_list(fragments_dir: Path, list_name: str, _stack: tuple[str, ...] = ()) -> list[Path]:
    """The fragment files a list names, includes expanded in place, in order."""
    list_path = locate(fragments_dir, list_name)
    if list_name in _stack:
        chain = " → ".join((*_stack, list_name))
        raise InputError(f"lists include each other in a cycle ({chain}); remove one include.", path=list_path)
    try:
        lines = list_path.read_text().splitlines()
    except FileNotFoundError:
        raise InputError("fragment list not found.", path=list_path) from None
    result: list[Path] = []
    for number, raw in enumerate(lines, start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        if entry.endswith(".list"):
            if not locate(fragments_dir, entry).is_file():
                raise InputError(f"includes list {entry!r}, which does not exist in {fragments_dir}; fix the name.",
                                 path=list_path, line=number)
            result.extend(p for p in resolve_list(fragments_dir, entry, (*_stack, list_name)) if p not in result)
        elif entry.endswith(".conf"):
            path = locate(fragments_dir, entry)
            if not path.is_file():
                raise InputError(f"names fragment {entry!r}, which does not exist in {fragments_dir}; "
                                 "fix the name or create the fragment.", path=list_path, line=number)
            if path not in result:
                result.append(path)
        else:
            raise InputError(f"entry {entry!r} is neither a fragment (*.conf) nor a list (*.list).",
                             path=list_path, line=number)
    return result


def list_files_of(fragments_dir: Path, list_name: str, _stack: tuple[str, ...] = ()) -> list[Path]:
    """Every list file a target's list reads (itself and the lists it includes): task dependencies."""
    own = locate(fragments_dir, list_name)
    found = [own]
    if list_name in _stack or not own.is_file():
        return found
    for raw in own.read_text().splitlines():
        entry = raw.split("#", 1)[0].strip()
        if entry.endswith(".list"):
            found += [p for p in list_files_of(fragments_dir, entry, (*_stack, list_name)) if p not in found]
    return found


def load_fragments(paths: list[Path], root: Path) -> list[Fragment]:
    """Parse fragments; raise on the first malformed line (lint lists them all)."""
    fragments = []
    for path in paths:
        display = path.relative_to(root) if path.is_relative_to(root) else path
        fragment = parse_fragment(path, display)
        bad = [p for p in fragment.problems if "has no header" not in p.message]
        if bad:
            raise InputError(str(bad[0]) + " (run `doit lint` to see every problem)")
        fragments.append(fragment)
    return fragments


def requested_options(fragments: list[Fragment], arch: str, version: tuple[int, int, int]) -> dict[str, Option]:
    """What a target asks for on this arch and version: later fragments win; conflicts need @override."""
    wanted: dict[str, Option] = {}
    for fragment in fragments:
        seen_here: dict[str, Option] = {}
        for option in fragment.options:
            if not option.scope.applies(arch, version):
                continue
            if option.symbol in seen_here:
                raise InputError(
                    f"CONFIG_{option.symbol} is set twice in this fragment (first at line "
                    f"{seen_here[option.symbol].line}); keep one.",
                    path=option.path, line=option.line,
                )
            seen_here[option.symbol] = option
            earlier = wanted.get(option.symbol)
            if earlier and earlier.value != option.value and not option.override:
                raise InputError(
                    f"{option.text} conflicts with {earlier.text} from {earlier.where}; if the later value is "
                    "intended, add '# @override' to its reason comment, otherwise remove one.",
                    path=option.path, line=option.line,
                )
            wanted[option.symbol] = option
    return wanted


def fragment_text(options: dict[str, Option]) -> str:
    """The merged fragment handed to the kernel's kconfig (KCONFIG_ALLCONFIG)."""
    lines = [f"{o.text}\n" for o in options.values()]
    return "".join(lines)


@dataclass(frozen=True)
class ExpectedDrop:
    symbol: str
    arch: str | None
    versions: Scope
    why: str
    line: int | None

    def applies(self, arch: str, version: tuple[int, int, int]) -> bool:
        return (self.arch is None or self.arch == arch) and self.versions.applies(arch, version)


def toml_entries(path: Path, table: str) -> tuple[str, list[dict]]:
    """(text, the [[table]] entries) of an optional data file beside the fragments; ("", []) when absent."""
    if not path.is_file():
        return "", []
    text, data = read_toml(path, "not found.")
    return text, list(data.get(table, []))


EXPECTED_DROPS = "expected-drops.toml"  # in the fragments dir: requested options known not to land, with why


def load_expected_drops(path: Path) -> list[ExpectedDrop]:
    text, entries = toml_entries(path, "drop")
    drops = []
    for index, entry in enumerate(entries, start=1):
        option = str(entry.get("option", ""))
        line = line_of(text, f'"{option}"') if option else None
        symbol = option.removeprefix("CONFIG_")
        if not re.fullmatch(r"[A-Z0-9_]+", symbol) or not entry.get("why"):
            raise InputError(f"[[drop]] #{index} needs option = \"CONFIG_FOO\" and a why = \"…\" sentence.", path=path, line=line)
        try:
            versions = Scope(versions=tuple(
                (cond.strip()[:2].rstrip("0123456789."), version_key(cond.strip().lstrip("<>=!")))
                for cond in str(entry.get("versions", "")).split(",") if cond.strip()
            ))
            for op, _ in versions.versions:
                if op not in _OPS:
                    raise ValueError(op)
        except ValueError:
            raise InputError(f"versions = {entry.get('versions')!r} is not understood; write e.g. \">=6.1, <6.13\".",
                             path=path, line=line) from None
        drops.append(ExpectedDrop(symbol, entry.get("arch"), versions, entry["why"], line))
    return drops
