"""lint.py: one test per rule, on tiny fragment dirs (and a tiny Kconfig tree for the source rules)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ktailor.kconfig.fragments import REASON_PLACEHOLDER, Scope
from ktailor.project.targets import Catalog, load_catalog
from ktailor.stages.lint import Finding, format_findings, lint_against_source, lint_fragments, sample_versions

REPO = Path(__file__).resolve().parents[1]

TARGETS = """\
[arch.x86_64]
kernel_arch = "x86"
cross_compile = "x86_64-linux-gnu-"
make_targets = ["vmlinux"]
images = { vmlinux = "elf" }

[arch.aarch64]
kernel_arch = "arm64"
cross_compile = "aarch64-linux-gnu-"
make_targets = ["vmlinux"]
images = { vmlinux = "elf" }

[type.micro]
description = "test type"

[target.x86_64-micro]
size_budget = { vmlinux = 1 }

[target.aarch64-micro]
size_budget = { vmlinux = 1 }
"""

GOOD = """\
# requirement: boot
# What a test guest needs.

# The console is the only way a test guest talks.
CONFIG_TTY=y
"""

LISTS = ["micro-x86_64.list", "micro-aarch64.list"]


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.fragments = root / "fragments"
        self.fragments.mkdir(parents=True)
        (root / "targets.toml").write_text(TARGETS)
        self.catalog: Catalog = load_catalog(root / "targets.toml")

    def write(self, name: str, text: str) -> None:
        (self.fragments / name).write_text(text)

    def lists(self, *entries: str) -> None:
        for name in LISTS:
            self.write(name, "# test list\n" + "".join(f"{e}\n" for e in entries))

    def lint(self, version: tuple[int, int, int] | None = None, list_names: list[str] | None = None) -> list[Finding]:
        return lint_fragments(self.fragments, self.root, self.catalog, list_names or LISTS, version=version)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path / "project")


def rendered(findings: list[Finding]) -> list[str]:
    return sorted(str(f) for f in findings)


def fragment(*body: str, header: str = "# requirement: test\n# A test fragment.\n\n") -> str:
    return header + "".join(f"{line}\n" for line in body)


# --- file rules ---


def test_clean_project_has_no_findings(project: Project) -> None:
    project.write("good.conf", GOOD)
    project.lists("good.conf")
    assert project.lint() == []
    assert format_findings([]) == "I: lint found nothing to fix."


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("CONFIG_TTY = y", "fragments/bad.conf:5: 'CONFIG_TTY = y' has spaces around '='"),
        ("config_tty=y", "fragments/bad.conf:5: 'config_tty=y' the CONFIG_ prefix must be upper case"),
        ("CONFIG_tty=y", "fragments/bad.conf:5: 'CONFIG_tty=y' Kconfig symbols are upper case"),
        ("TTY=y", "fragments/bad.conf:5: 'TTY=y' is missing the CONFIG_ prefix; write CONFIG_TTY=y."),
        ("CONFIG_TTY=yes", "fragments/bad.conf:5: 'CONFIG_TTY=yes' has a value that is not y, m, n"),
        ("hello world", "fragments/bad.conf:5: 'hello world' is neither an option"),
    ],
    ids=["spaces", "lowercase-prefix", "lowercase-symbol", "no-prefix", "bad-value", "junk"],
)
def test_malformed_lines(project: Project, line: str, expected: str) -> None:
    project.write("bad.conf", fragment("# Reason.", line))
    project.lists("bad.conf")
    messages = rendered(project.lint())
    assert len(messages) == 1
    assert messages[0].startswith(expected)


def test_every_malformed_line_is_reported(project: Project) -> None:
    project.write("bad.conf", fragment("# Reason.", "CONFIG_A = y", "# Reason.", "B=y", "# Reason.", "CONFIG_C=y"))
    project.lists("bad.conf")
    assert [f.line for f in sorted(project.lint(), key=lambda f: f.line)] == [5, 7]


def test_missing_header(project: Project) -> None:
    project.write("bare.conf", "# The console.\nCONFIG_TTY=y\n")
    project.lists("bare.conf")
    assert rendered(project.lint()) == [
        "fragments/bare.conf:1: has no header; start the file with '# requirement: <group>', a line on what it "
        "covers, and a blank line."
    ]


def test_unknown_annotation(project: Project) -> None:
    project.write("a.conf", fragment("# Reason.", "# @sometimes arch=x86_64", "CONFIG_TTY=y"))
    project.lists("a.conf")
    assert rendered(project.lint()) == [
        "fragments/a.conf:5: unknown annotation @sometimes; the known ones are @only and @override."
    ]


def test_bad_only_condition(project: Project) -> None:
    project.write("a.conf", fragment("# Reason.", "# @only kernel=6.1", "CONFIG_TTY=y"))
    project.lists("a.conf")
    [message] = rendered(project.lint())
    assert message.startswith("fragments/a.conf:5: @only condition 'kernel=6.1' is not understood")


def test_only_arch_unknown_to_targets_toml(project: Project) -> None:
    project.write("a.conf", fragment("# Reason.", "# @only arch=x86", "CONFIG_TTY=y"))
    project.lists("a.conf")
    assert rendered(project.lint()) == [
        "fragments/a.conf:5: @only arch=x86 names no arch in targets.toml, so what it scopes applies nowhere; "
        "use one of aarch64, x86_64."
    ]


def test_same_option_twice_in_one_fragment(project: Project) -> None:
    project.write("a.conf", fragment("# Reason.", "CONFIG_TTY=y", "# Again.", "CONFIG_TTY=y"))
    project.lists("a.conf")
    assert rendered(project.lint()) == [
        "fragments/a.conf:7: CONFIG_TTY=y sets CONFIG_TTY a second time in this fragment (first at line 5); "
        "keep one, or scope them apart with '# @only'."
    ]


@pytest.mark.parametrize(
    ("first", "second"),
    [("# @only arch=x86_64", "# @only arch=aarch64"), ("# @only version<6.2", "# @only version>=6.2")],
    ids=["by-arch", "by-version"],
)
def test_same_option_scoped_apart_is_fine(project: Project, first: str, second: str) -> None:
    project.write("a.conf", fragment("# Reason.", first, "CONFIG_HZ=100", "# Other.", second, "CONFIG_HZ=250"))
    project.lists("a.conf")
    assert project.lint() == []


def test_conflicting_values_across_fragments(project: Project) -> None:
    project.write("a.conf", fragment("# Reason.", "CONFIG_HZ=100"))
    project.write("b.conf", fragment("# Other reason.", "CONFIG_HZ=250"))
    project.lists("a.conf", "b.conf")
    assert rendered(project.lint()) == [
        "fragments/b.conf:5: CONFIG_HZ=250 conflicts with CONFIG_HZ=100 from fragments/a.conf:5 in "
        "micro-x86_64.list (arch x86_64); if the later value is intended, add '# @override' to its reason "
        "comment, otherwise remove one."
    ]


def test_override_allows_the_later_value(project: Project) -> None:
    project.write("a.conf", fragment("# Reason.", "CONFIG_HZ=100"))
    project.write("b.conf", fragment("# Other reason.", "# @override", "CONFIG_HZ=250"))
    project.lists("a.conf", "b.conf")
    assert project.lint() == []


def test_conflict_is_evaluated_per_arch(project: Project) -> None:
    project.write("a.conf", fragment("# Reason.", "CONFIG_HZ=100"))
    project.write("b.conf", fragment("# Only on arm.", "# @only arch=aarch64", "CONFIG_HZ=250"))
    project.lists("a.conf", "b.conf")
    [finding] = project.lint()
    assert (str(finding.path), finding.line) == ("fragments/b.conf", 6)
    assert "(arch aarch64)" in finding.message
    assert project.lint(list_names=["micro-x86_64.list"]) == []


def test_conflict_is_evaluated_per_version(project: Project) -> None:
    project.write("a.conf", fragment("# Reason.", "CONFIG_HZ=100"))
    project.write("b.conf", fragment("# Newer kernels.", "# @only version>=6.2", "CONFIG_HZ=250"))
    project.lists("a.conf", "b.conf")
    assert [f.line for f in project.lint()] == [6]  # some version (6.2 and later) conflicts
    assert project.lint(version=(6, 1, 100)) == []
    assert [f.line for f in project.lint(version=(6, 12, 1))] == [6]


def test_sample_versions_cover_each_side_of_a_bound() -> None:
    samples = sample_versions([Scope(versions=((">=", (6, 2, 0)),))])
    assert (6, 2, 0) in samples and any(v < (6, 2, 0) for v in samples)


def test_fragment_named_by_no_list_is_a_warning(project: Project) -> None:
    project.write("good.conf", GOOD)
    project.write("orphan.conf", GOOD)
    project.lists("good.conf")
    [finding] = project.lint()
    assert finding.severity == "warning"
    assert str(finding) == ("fragments/orphan.conf:1: fragment orphan.conf is named by no list, so no target uses "
                            "it; add it to a <type>-<arch>.list (or a list those include), or delete it.")


def test_fragment_named_only_by_an_included_list_is_used(project: Project) -> None:
    project.write("good.conf", GOOD)
    project.write("common.list", "good.conf\n")
    project.lists("common.list")
    assert project.lint() == []


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("missing.conf", "fragments/micro-x86_64.list:2: names 'missing.conf', which does not exist in fragments/; "
                         "fix the name or create the file."),
        ("missing.list", "fragments/micro-x86_64.list:2: names 'missing.list', which does not exist in fragments/; "
                         "fix the name or create the file."),
        ("notes.txt", "fragments/micro-x86_64.list:2: entry 'notes.txt' is neither a fragment (*.conf) nor a list "
                      "(*.list); fix the name."),
    ],
    ids=["missing-fragment", "missing-list", "not-a-fragment"],
)
def test_list_names_something_missing(project: Project, entry: str, expected: str) -> None:
    project.write("good.conf", GOOD)
    project.lists("good.conf")
    project.write("micro-x86_64.list", f"good.conf\n{entry}\n")
    assert rendered(project.lint()) == [expected]


def test_list_cycle(project: Project) -> None:
    project.write("good.conf", GOOD)
    project.lists("good.conf")
    project.write("a.list", "b.list\n")
    project.write("b.list", "a.list\n")
    project.write("micro-x86_64.list", "good.conf\na.list\n")
    [message] = rendered(project.lint())
    assert message.startswith("fragments/a.list: lists include each other in a cycle")


def test_target_list_file_missing(project: Project) -> None:
    project.write("good.conf", GOOD)
    project.write("micro-x86_64.list", "good.conf\n")
    assert rendered(project.lint()) == [
        "fragments/micro-aarch64.list: fragment list not found; create it (one fragment or list per line) or drop "
        "its target from targets.toml."
    ]


def test_option_without_reason(project: Project) -> None:
    project.write("a.conf", fragment("# Reason.", "CONFIG_TTY=y", "", "CONFIG_PRINTK=y"))
    project.lists("a.conf")
    assert rendered(project.lint()) == [
        "fragments/a.conf:7: CONFIG_PRINTK=y has no reason comment; add a '# why it is needed' line directly "
        "above it."
    ]


def test_placeholder_reason_from_menuconfig_is_rejected(project: Project) -> None:
    project.write("a.conf", fragment(f"# {REASON_PLACEHOLDER}", "CONFIG_TTY=y"))
    project.lists("a.conf")
    [message] = rendered(project.lint())
    assert message.startswith(f"fragments/a.conf:5: CONFIG_TTY=y still has the placeholder reason '{REASON_PLACEHOLDER}'")


def test_format_findings_prefixes_levels_and_counts() -> None:
    findings = [
        Finding(Path("fragments/b.conf"), 3, "second", "warning"),
        Finding(Path("fragments/a.conf"), 12, "CONFIG_FOO=y is wrong; fix it."),
    ]
    assert format_findings(findings) == (
        "E: fragments/a.conf:12: CONFIG_FOO=y is wrong; fix it.\n"
        "W: fragments/b.conf:3: second\n"
        "E: 1 error, 1 warning."
    )


# --- source rules, on a tiny Kconfig tree ---

KCONFIG = """\
source "arch/$(SRCARCH)/Kconfig"

config MODULES
\tbool "Enable loadable module support"
\tmodules

config TTY
\tbool "Enable TTY"

config VIRTIO_BLK
\ttristate "Virtio block driver"

config CC_HAS_SHINY
\tdef_bool y

config PROBED
\tdef_bool $(shell,echo y)
"""


@pytest.fixture
def srctree(tmp_path: Path) -> Path:
    root = tmp_path / "linux"
    for arch, symbol in (("x86", "X86_X2APIC"), ("arm64", "ARM64_VA_BITS_48")):
        (root / "arch" / arch).mkdir(parents=True)
        (root / "arch" / arch / "Kconfig").write_text(f"config {symbol}\n\tbool \"{symbol}\"\n")
    (root / "Kconfig").write_text(KCONFIG)
    (root / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 5\n")
    return root


def source_lint(project: Project, srctree: Path, version: tuple[int, int, int] = (6, 1, 5)) -> list[str]:
    return rendered(lint_against_source(project.fragments, project.root, project.catalog,
                                        ["x86_64-micro", "aarch64-micro"], srctree, version))


def test_source_clean(project: Project, srctree: Path) -> None:
    project.write("good.conf", GOOD)
    project.lists("good.conf")
    assert source_lint(project, srctree) == []


def test_source_unknown_symbol_with_suggestion(project: Project, srctree: Path) -> None:
    project.write("a.conf", fragment("# Disk.", "CONFIG_VIRTIO_BLOK=y"))
    project.lists("a.conf")
    assert source_lint(project, srctree) == [
        "fragments/a.conf:5: CONFIG_VIRTIO_BLOK=y is not a symbol of Linux 6.1.5; did you mean CONFIG_VIRTIO_BLK? "
        "If it was renamed or removed in this version, scope it with '# @only version<…' or '# @only version>=…'."
    ]


def test_source_unknown_symbol_scoped_to_other_versions_is_not_checked(project: Project, srctree: Path) -> None:
    project.write("a.conf", fragment("# Newer kernels only.", "# @only version>=6.9", "CONFIG_VIRTIO_BLOK=y"))
    project.lists("a.conf")
    assert source_lint(project, srctree) == []


def test_source_symbol_of_another_arch(project: Project, srctree: Path) -> None:
    project.write("a.conf", fragment("# APIC.", "CONFIG_X86_X2APIC=y"))
    project.lists("a.conf")
    assert source_lint(project, srctree) == [
        "fragments/a.conf:5: CONFIG_X86_X2APIC=y exists only for x86_64 in Linux 6.1.5, but it applies to aarch64 "
        "here; add '# @only arch=x86_64' above it, or move it to an arch fragment."
    ]


def test_source_other_arch_symbol_scoped_away_is_fine(project: Project, srctree: Path) -> None:
    project.write("a.conf", fragment("# APIC.", "# @only arch=x86_64", "CONFIG_X86_X2APIC=y"))
    project.lists("a.conf")
    assert source_lint(project, srctree) == []


@pytest.mark.parametrize("symbol", ["CC_HAS_SHINY", "PROBED"], ids=["toolchain-name", "shell-probe"])
def test_source_toolchain_decided_symbol(project: Project, srctree: Path, symbol: str) -> None:
    project.write("a.conf", fragment("# Compiler.", f"CONFIG_{symbol}=y"))
    project.lists("a.conf")
    assert source_lint(project, srctree) == [
        f"fragments/a.conf:5: CONFIG_{symbol}=y is decided by the toolchain in Linux 6.1.5: it has no prompt and "
        "the kernel sets it by probing the compiler, assembler or linker; remove it."
    ]


# --- the shipped fragments ---


def shipped_list_names(catalog: Catalog) -> list[str]:
    return sorted({t.list_name for t in catalog.targets.values()})


def test_shipped_fragments_have_no_errors() -> None:
    catalog = load_catalog(REPO / "targets.toml")
    findings = lint_fragments(REPO / "fragments", REPO, catalog, shipped_list_names(catalog))
    errors = [f for f in findings if f.severity == "error"]
    assert errors == [], format_findings(errors)


SOURCES = {
    (5, 10, 262): os.environ.get("KTAILOR_TEST_SRC_5_10", "/tmp/ksrc/linux-source-5.10"),
    (6, 1, 192): os.environ.get("KTAILOR_TEST_SRC_6_1", "/tmp/ksrc/linux-source-6.1"),
    (6, 12, 118): os.environ.get("KTAILOR_TEST_SRC_6_12", "/tmp/ksrc/linux-source-6.12"),
    (7, 2, 13): os.environ.get("KTAILOR_TEST_SRC_7_2", "/tmp/ksrc/linux-source-7.2"),
}


@pytest.mark.kernel
@pytest.mark.parametrize("version", list(SOURCES), ids=["5.10", "6.1", "6.12", "7.2"])
def test_shipped_fragments_against_real_source(version: tuple[int, int, int]) -> None:
    srctree = Path(SOURCES[version])
    if not (srctree / "Kconfig").is_file():
        pytest.skip(f"no extracted Linux {version[0]}.{version[1]} tree at {srctree}; set "
                    f"KTAILOR_TEST_SRC_{version[0]}_{version[1]} to one")
    catalog = load_catalog(REPO / "targets.toml")
    findings = lint_against_source(REPO / "fragments", REPO, catalog, list(catalog.targets), srctree, version)
    errors = [f for f in findings if f.severity == "error"]
    assert errors == [], format_findings(errors)
