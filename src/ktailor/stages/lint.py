"""Fast checks on fragments and lists before any make (`doit lint`; the config stage runs them too).

`lint_fragments` needs only the files: malformed lines, headers, annotations, duplicates, conflicts
between the fragments of one target, lists naming missing files, fragments no list names, missing or
placeholder reasons. `lint_against_source` parses the kernel's Kconfig with kconfiglib (through
kconfig_tree.load_kconfig) and checks the symbols: unknown ones, other arches' ones, toolchain-decided ones.
Every finding names file:line, what is wrong and how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ktailor.core.errors import InputError
from ktailor.core.progress import info
from ktailor.kconfig import kconfig_tree
from ktailor.kconfig.fragment_dirs import entry_name, locate
from ktailor.kconfig.fragments import REASON_PLACEHOLDER, Fragment, Option, Scope, parse_fragment, resolve_list
from ktailor.project.targets import Catalog
from ktailor.stages.base import ONCE, Context, Stage

Version = tuple[int, int, int]
ONLY_LINE_RE = re.compile(r"^#\s*@only\s+(.*)$")


@dataclass(frozen=True)
class Finding:
    path: Path | str
    line: int  # 0 when the finding is about a file that does not exist
    message: str
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else f"{self.path}"
        return f"{where}: {self.message}"


def format_findings(findings: Iterable[Finding]) -> str:
    """One `E:`/`W:` line per finding, in file order, and a count."""
    ordered = sorted(findings, key=lambda f: (str(f.path), f.line, f.message))
    if not ordered:
        return "I: lint found nothing to fix."
    lines = [f"{'E' if f.severity == 'error' else 'W'}: {f}" for f in ordered]
    errors = sum(1 for f in ordered if f.severity == "error")
    lines.append(f"{'E' if errors else 'W'}: {_count(errors, 'error')}, {_count(len(ordered) - errors, 'warning')}.")
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


# --- file checks -----------------------------------------------------------------------------


def lint_fragments(fragments_dir: Path, root: Path, catalog: Catalog, list_names: list[str], *,
                   version: Version | None = None) -> list[Finding]:
    """Every problem in the fragments and lists, without the kernel source.

    Conflicts are checked for each arch of each list's targets, at `version` when given, otherwise at
    every version range the @only conditions distinguish.
    """
    fragments = parse_all(fragments_dir, root)
    arches = sorted(catalog.arches)
    findings: list[Finding] = []
    for path, fragment in fragments.items():
        findings += [Finding(p.path, p.line, p.message) for p in fragment.problems]
        findings += _unknown_scope_arches(path, fragment, arches)
        findings += _missing_reasons(fragment)
        findings += _duplicates(fragment, arches, version)
    findings += _list_problems(fragments_dir, root, list_names)
    findings += _unlisted_fragments(fragments_dir, fragments)
    for list_name in list_names:
        findings += _conflicts(fragments_dir, catalog, list_name, fragments, version)
    return _unique(findings)


def parse_all(fragments_dir: Path, root: Path) -> dict[Path, Fragment]:
    """Every *.conf in the directory, parsed, keyed by absolute path (shown relative to root)."""
    return {path.resolve(): parse_fragment(path, _shown(path, root)) for path in sorted(fragments_dir.glob("*.conf"))}


def _shown(path: Path, root: Path) -> Path:
    path = path.resolve()
    root = root.resolve()
    return path.relative_to(root) if path.is_relative_to(root) else path


def _missing_reasons(fragment: Fragment) -> list[Finding]:
    findings = []
    for option in fragment.options:
        if not option.reason:
            findings.append(Finding(option.path, option.line,
                                    f"{option.text} has no reason comment; add a '# why it is needed' line "
                                    "directly above it."))
        elif REASON_PLACEHOLDER in option.reason:
            findings.append(Finding(option.path, option.line,
                                    f"{option.text} still has the placeholder reason '{REASON_PLACEHOLDER}' "
                                    "from menuconfig save-back; replace it with why the option is needed."))
    return findings


def _unknown_scope_arches(path: Path, fragment: Fragment, arches: list[str]) -> list[Finding]:
    """`@only arch=x86` (the kernel's name, not ktailor's) would silently drop an option everywhere."""
    findings = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        match = ONLY_LINE_RE.match(text.strip())
        if not match:
            continue
        named = [a for word in match[1].split() if word.startswith("arch=") for a in word[5:].split(",")]
        findings += [
            Finding(fragment.path, number, f"@only arch={arch} names no arch in targets.toml, so what it scopes "
                                           f"applies nowhere; use one of {', '.join(arches)}.")
            for arch in named if arch not in arches
        ]
    return findings


def _duplicates(fragment: Fragment, arches: list[str], version: Version | None) -> list[Finding]:
    findings = []
    first: dict[str, list[Option]] = {}
    for option in fragment.options:
        for earlier in first.get(option.symbol, []):
            if _overlap(earlier.scope, option.scope, arches, version):
                findings.append(Finding(option.path, option.line,
                                        f"{option.text} sets CONFIG_{option.symbol} a second time in this fragment "
                                        f"(first at line {earlier.line}); keep one, or scope them apart with "
                                        "'# @only'."))
                break
        first.setdefault(option.symbol, []).append(option)
    return findings


def _overlap(a: Scope, b: Scope, arches: list[str], version: Version | None) -> bool:
    versions = [version] if version else sample_versions([a, b])
    return any(a.applies(arch, v) and b.applies(arch, v) for arch in arches for v in versions)


def sample_versions(scopes: Iterable[Scope]) -> list[Version]:
    """One version inside every range the scopes' version conditions can tell apart."""
    samples = {(0, 0, 0)}
    for scope in scopes:
        for _, (major, minor, patch) in scope.versions:
            below = ((major, minor, patch - 1) if patch else (major, minor - 1, 10**6) if minor
                     else (major - 1, 10**6, 10**6))
            samples |= {(major, minor, patch), below, (major, minor, patch + 1)}
    return sorted(samples)


# --- lists -----------------------------------------------------------------------------------


def _list_problems(fragments_dir: Path, root: Path, list_names: list[str]) -> list[Finding]:
    findings = []
    for name in list_names:
        if not (fragments_dir / name).is_file():
            findings.append(Finding(_shown(fragments_dir / name, root), 0,
                                    "fragment list not found; create it (one fragment or list per line) "
                                    "or drop its target from targets.toml."))
    for list_path in sorted(fragments_dir.glob("*.list")):
        for number, entry in _entries(list_path):
            if not entry.endswith((".conf", ".list")):
                message = f"entry {entry!r} is neither a fragment (*.conf) nor a list (*.list); fix the name."
            elif not locate(fragments_dir, entry).is_file():
                message = (f"names {entry!r}, which does not exist in {_shown(fragments_dir, root)}/; "
                           "fix the name or create the file.")
            else:
                continue
            findings.append(Finding(_shown(list_path, root), number, message))
    for name in list_names:
        try:
            resolve_list(fragments_dir, name)
        except InputError as exc:  # a cycle, or an entry already reported above
            finding = _from_input_error(exc, root)
            if not any((f.path, f.line) == (finding.path, finding.line) for f in findings):
                findings.append(finding)
    return findings


def _entries(list_path: Path) -> list[tuple[int, str]]:
    entries = []
    for number, raw in enumerate(list_path.read_text().splitlines(), start=1):
        entry = raw.split("#", 1)[0].strip()
        if entry:
            entries.append((number, entry))
    return entries


def _from_input_error(exc: InputError, root: Path) -> Finding:
    path = _shown(Path(exc.path), root) if exc.path else Path(".")
    return Finding(path, exc.line or 0, exc.args[0])


def _unlisted_fragments(fragments_dir: Path, fragments: dict[Path, Fragment]) -> list[Finding]:
    named = {entry_name(entry) for list_path in fragments_dir.glob("*.list") for _, entry in _entries(list_path)}
    return [
        Finding(fragment.path, 1, f"fragment {path.name} is named by no list, so no target uses it; add it to a "
                                  "<type>-<arch>.list (or a list those include), or delete it.", "warning")
        for path, fragment in fragments.items() if path.name not in named
    ]


def _conflicts(fragments_dir: Path, catalog: Catalog, list_name: str, fragments: dict[Path, Fragment],
               version: Version | None) -> list[Finding]:
    """Two fragments of one list giving one option different values without `# @override`."""
    try:
        paths = resolve_list(fragments_dir, list_name)
    except InputError:
        return []  # reported by _list_problems
    chosen = [fragments[p.resolve()] for p in paths if p.resolve() in fragments]
    arches = [t.arch.name for t in catalog.targets.values() if t.list_name == list_name] or sorted(catalog.arches)
    versions = [version] if version else sample_versions(o.scope for f in chosen for o in f.options)
    found: dict[tuple[str, str], Finding] = {}
    for arch in arches:
        for at in versions:
            wanted: dict[str, Option] = {}
            for option in (o for f in chosen for o in f.options if o.scope.applies(arch, at)):
                earlier = wanted.get(option.symbol)
                if earlier and earlier.path != option.path and earlier.value != option.value and not option.override:
                    found.setdefault((option.where, earlier.where), Finding(
                        option.path, option.line,
                        f"{option.text} conflicts with {earlier.text} from {earlier.where} in {list_name} "
                        f"(arch {arch}); if the later value is intended, add '# @override' to its reason comment, "
                        "otherwise remove one."))
                wanted[option.symbol] = option
    return list(found.values())


def _unique(findings: list[Finding]) -> list[Finding]:
    """Each finding once (one conflict shows up in every list that includes both fragments)."""
    seen: dict[tuple[str, int, str], Finding] = {}
    for finding in findings:
        key = (str(finding.path), finding.line, re.sub(r" in \S+\.list \(arch \S+\)", "", finding.message))
        seen.setdefault(key, finding)
    return list(seen.values())


# --- source checks ---------------------------------------------------------------------------


def lint_against_source(
    fragments_dir: Path, root: Path, catalog: Catalog, target_names: list[str], srctree: Path,
    kernel_version_tuple: Version,
) -> list[Finding]:
    """Symbols the kernel at `srctree` does not know, knows only for another arch, or leaves to the toolchain.

    Parses the Kconfig once per arch in use (about two seconds each); raises kconfig_tree.ExplainUnavailable
    when kconfiglib cannot parse it.
    """
    version_text = ".".join(map(str, kernel_version_tuple))
    fragments = parse_all(fragments_dir, root)
    findings: list[Finding] = []
    for arch_name, options in _options_by_arch(fragments_dir, catalog, target_names, fragments,
                                               kernel_version_tuple).items():
        arch = catalog.arches[arch_name]
        kconf = kconfig_tree.load_kconfig(srctree, arch.kernel_arch, arch.compiler_prefix(), None)
        other_arches = kconfig_tree.symbols_for_other_arches(srctree, arch.kernel_arch)
        ktailor_names = {a.kernel_arch: a.name for a in catalog.arches.values()}
        known = [s.name for s in kconf.unique_defined_syms]
        for option in options:
            sym = kconf.syms.get(option.symbol)
            if sym is None or not sym.nodes:
                owners = other_arches.get(option.symbol)
                if owners:
                    findings.append(_other_arch_finding(option, arch_name, owners, ktailor_names, version_text))
                else:
                    findings.append(_unknown_finding(option, known, version_text))
            elif kconfig_tree.is_toolchain_decided(sym, srctree):
                findings.append(Finding(option.path, option.line,
                                        f"{option.text} is decided by the toolchain in Linux {version_text}: it has "
                                        "no prompt and the kernel sets it by probing the compiler, assembler or "
                                        "linker; remove it."))
    return _unique(findings)


def _options_by_arch(fragments_dir: Path, catalog: Catalog, target_names: list[str],
                     fragments: dict[Path, Fragment], version: Version) -> dict[str, list[Option]]:
    """The options each arch's targets apply at this version, each file:line once per arch."""
    by_arch: dict[str, dict[tuple[str, int], Option]] = {}
    for name in target_names:
        target = catalog.target(name)
        try:
            paths = resolve_list(fragments_dir, target.list_name)
        except InputError:
            continue  # reported by lint_fragments
        chosen = by_arch.setdefault(target.arch.name, {})
        for path in paths:
            fragment = fragments.get(path.resolve())
            for option in fragment.options if fragment else []:
                if option.scope.applies(target.arch.name, version):
                    chosen.setdefault((str(option.path), option.line), option)
    return {arch: list(options.values()) for arch, options in by_arch.items()}


def _other_arch_finding(option: Option, arch_name: str, owners: list[str], ktailor_names: dict[str, str],
                        version_text: str) -> Finding:
    named = [ktailor_names.get(owner, owner) for owner in owners]
    ours = [n for n in named if n in ktailor_names.values()]
    scope = f"add '# @only arch={','.join(ours)}' above it" if ours else "remove it"
    return Finding(option.path, option.line,
                   f"{option.text} exists only for {', '.join(named)} in Linux {version_text}, but it applies to "
                   f"{arch_name} here; {scope}, or move it to an arch fragment.")


def _unknown_finding(option: Option, known: list[str], version_text: str) -> Finding:
    close = kconfig_tree.did_you_mean(option.symbol, known)
    hint = f"did you mean {' or '.join('CONFIG_' + c for c in close)}?" if close else "check the spelling."
    return Finding(option.path, option.line,
                   f"{option.text} is not a symbol of Linux {version_text}; {hint} If it was renamed or removed "
                   "in this version, scope it with '# @only version<…' or '# @only version>=…'.")


def lint_failed(count: int) -> InputError:
    return InputError(f"lint found {count} error(s) in the fragments (listed above); fix them and run `doit lint` again.")


# --- the stage ---------------------------------------------------------------------------------
def run(ctx: Context) -> None:
    """Every target's list that exists (versions.toml already insists on the lists of the kernels' targets)."""
    import sys

    project = ctx.project
    names = sorted({t.list_name for t in project.catalog.targets.values() if (project.fragments_dir / t.list_name).is_file()})
    findings = lint_fragments(project.fragments_dir, project.root, project.catalog, names)
    if findings:
        print(format_findings(findings), file=sys.stderr)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        raise lint_failed(len(errors))
    info(f"lint: {len(names)} lists, {len(list(project.fragments_dir.glob('*.conf')))} fragments, "
         f"{len(findings)} finding(s)")


WHAT = "check every fragment and list (format, reasons, duplicates, conflicts) before any make"
STAGE = Stage(
    "lint", WHAT,
    doc=lambda ctx: WHAT,
    run=run, per=ONCE,
    inputs=lambda ctx: sorted(ctx.project.fragments_dir.glob("*.conf")) + sorted(ctx.project.fragments_dir.glob("*.list")),
    outputs=lambda ctx: [],
)
