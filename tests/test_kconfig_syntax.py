"""kconfig_syntax.py: kconfiglib reads the Kconfig syntax Linux added after kconfiglib 14.1.

Unit tests rewrite single lines and parse a small tree written in 7.x syntax; the real-source test
runs the kernel's own `make allnoconfig` on Linux 7.2 and checks that kconfiglib, through the
rewrite, computes the same value as the kernel for every symbol of the resulting .config.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ktailor.kconfig.explain import explain
from ktailor.kconfig.kconfig_syntax import rewrite_line, successors_of
from ktailor.kconfig.kconfig_tree import load_kconfig


@pytest.mark.parametrize(("line", "expected"), [
    ("\tmodules\n", "\toption modules\n"),
    ("\ttransitional\n", "\n"),
    ("\tdepends on X86_64 if SMP\n", "\tdepends on (X86_64) || SMP = n\n"),
    ("\tdepends on A && B if !C  # note\n", "\tdepends on (A && B) || C = y\n"),
    ("\tdepends on A if B && C\n", "\tdepends on (A) || !(B && C)\n"),
    ("\tdepends on A || B\n", "\tdepends on A || B\n"),
    ("\tbool \"Prompt\" if EXPERT\n", "\tbool \"Prompt\" if EXPERT\n"),
    ("\tselect FOO if BAR\n", "\tselect FOO if BAR\n"),
    ("\thelp\n", "\thelp\n"),
])
def test_rewrite_line(line: str, expected: str) -> None:
    assert rewrite_line(line) == expected


KCONFIG_7X = """\
mainmenu "Test kernel"

config MODULES
\tbool "Enable loadable module support"
\tmodules

config EXPERT
\tbool "Expert"

config SMP
\tbool "SMP"

config BASE
\tbool "Base feature"

config OLD_NAME
\tbool
\ttransitional
\thelp
\t  Kept so that old .config files carry CONFIG_OLD_NAME over to NEW_NAME.

config NEW_NAME
\tbool "The feature under its new name"
\tdefault OLD_NAME

config NEEDS_BASE_ON_SMP
\tbool "Needs BASE only when SMP is on"
\tdepends on BASE if SMP

config NEEDS_BASE_UNLESS_EXPERT
\tbool "Needs BASE unless EXPERT"
\tdepends on BASE if !EXPERT
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "linux"
    root.mkdir()
    (root / "Kconfig").write_text(KCONFIG_7X)
    (root / "Makefile").write_text("VERSION = 7\nPATCHLEVEL = 2\nSUBLEVEL = 13\nEXTRAVERSION =\n")
    return root


def values(tree: Path, lines: list[str]) -> dict[str, str]:
    config = tree.parent / "final.config"
    config.write_text("".join(f"{line}\n" for line in lines))
    kconf = load_kconfig(tree, "x86", "", config)
    return {name: sym.str_value for name, sym in kconf.syms.items() if sym.nodes}


@pytest.mark.parametrize(("lines", "expected"), [
    (["CONFIG_SMP=y", "CONFIG_NEEDS_BASE_ON_SMP=y"], "n"),  # SMP on: BASE is needed and off
    (["CONFIG_SMP=y", "CONFIG_BASE=y", "CONFIG_NEEDS_BASE_ON_SMP=y"], "y"),
    (["CONFIG_NEEDS_BASE_ON_SMP=y"], "y"),  # SMP off: no dependency at all
])
def test_conditional_dependency_applies_only_when_its_condition_holds(tree: Path, lines: list[str],
                                                                      expected: str) -> None:
    assert values(tree, lines)["NEEDS_BASE_ON_SMP"] == expected


@pytest.mark.parametrize(("lines", "expected"), [
    (["CONFIG_NEEDS_BASE_UNLESS_EXPERT=y"], "n"),  # EXPERT off: BASE is needed
    (["CONFIG_EXPERT=y", "CONFIG_NEEDS_BASE_UNLESS_EXPERT=y"], "y"),
])
def test_negated_condition(tree: Path, lines: list[str], expected: str) -> None:
    assert values(tree, lines)["NEEDS_BASE_UNLESS_EXPERT"] == expected


def test_transitional_symbol_is_remembered_with_its_new_name(tree: Path) -> None:
    kconf = load_kconfig(tree, "x86", "", None)
    assert kconf.transitional == {"OLD_NAME"}
    assert successors_of(kconf, "OLD_NAME") == ["NEW_NAME"]
    assert successors_of(kconf, "BASE") == []
    assert not kconf.syms["OLD_NAME"].nodes[0].prompt  # a hidden symbol, as in the kernel


def test_requesting_a_transitional_symbol_names_its_new_name(tree: Path) -> None:
    config = tree.parent / "final.config"
    config.write_text("# CONFIG_NEW_NAME is not set\n")
    kconf = load_kconfig(tree, "x86", "", config)
    result = explain(kconf, "CONFIG_OLD_NAME", "y", "", srctree=tree, kernel_arch="x86")
    assert result.kind == "renamed"
    assert "transitional in Linux 7.2.13" in result.detail and "NEW_NAME" in result.detail
    assert result.fix == ["CONFIG_NEW_NAME=y", "remove CONFIG_OLD_NAME=y"]


SRC_7_2 = Path(os.environ.get("KTAILOR_TEST_SRC_7_2", "/tmp/ksrc/linux-source-7.2"))
# Where kconfiglib 14.1 itself (not the syntax) disagrees with the kernel's C kconfig:
# PAHOLE_VERSION comes from the environment, VMSPLIT_3G is a choice of 32-bit x86 that the x86_64
# .config still lists, and PAGE_BLOCK_MAX_ORDER's `range 1 ARCH_FORCE_MAX_ORDER if
# ARCH_FORCE_MAX_ORDER != 0` compares a symbol x86 does not define, which the two evaluate apart.
KCONFIGLIB_DIFFERENCES = {"PAHOLE_VERSION", "VMSPLIT_3G", "PAGE_BLOCK_MAX_ORDER"}


@pytest.mark.kernel
def test_kconfiglib_computes_what_linux_7_2_computes(tmp_path: Path) -> None:
    if not (SRC_7_2 / "Kconfig").is_file():
        pytest.skip(f"no extracted Linux 7.2 tree at {SRC_7_2}; scripts/test fetches Debian sid's linux-source-7.2 "
                    "(scripts/linux-source 7.2) and points KTAILOR_TEST_SRC_7_2 at it")
    fragment = tmp_path / "fragment.config"
    fragment.write_text("".join(f"CONFIG_{name}=y\n" for name in (
        "NET", "INET", "NETFILTER", "NF_TABLES", "BPF_SYSCALL", "MD", "BLK_DEV_DM", "DM_CRYPT", "SMP",
        "VIRTIO_MENU", "VIRTIO_MMIO", "VIRTIO_BALLOON", "CFI")))
    subprocess.run(["make", "-s", "-C", str(SRC_7_2), f"O={tmp_path / 'build'}", "ARCH=x86",
                    f"KCONFIG_ALLCONFIG={fragment}", "allnoconfig"], check=True, capture_output=True)
    config = tmp_path / "build" / ".config"
    kernel = config_values(config)

    kconf = load_kconfig(SRC_7_2, "x86", "", config)
    assert {"CFI_CLANG", "RANDOM_KMALLOC_CACHES"} <= kconf.transitional
    assert "CFI_CLANG" not in kernel  # transitional symbols are never written to .config
    disagree = {name: (value, kconf.syms[name].str_value) for name, value in kernel.items()
                if name in kconf.syms and kconf.syms[name].str_value != value}
    assert set(disagree) <= KCONFIGLIB_DIFFERENCES, disagree
    assert len(kernel) > 1000


def config_values(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("CONFIG_"):
            name, value = line.removeprefix("CONFIG_").split("=", 1)
            values[name] = value.strip('"')
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            values[line.removeprefix("# CONFIG_").removesuffix(" is not set")] = "n"
    return values


@pytest.mark.kernel
@pytest.mark.parametrize("case", ["1", "2", "3"])
def test_the_kernels_own_conditional_dependency_test_passes(case: str, tmp_path: Path) -> None:
    """Linux 7.2's scripts/kconfig/tests/conditional_dep: oldconfig of test_configN gives expected_configN."""
    suite = SRC_7_2 / "scripts" / "kconfig" / "tests" / "conditional_dep"
    if not (suite / "Kconfig").is_file():
        pytest.skip(f"no extracted Linux 7.2 tree at {SRC_7_2} (KTAILOR_TEST_SRC_7_2)")
    kconf = load_kconfig(suite, "x86", "", suite / f"test_config{case}")
    written = tmp_path / ".config"
    kconf.write_config(str(written))
    assert config_values(written) == config_values(suite / f"expected_config{case}")


@pytest.mark.kernel
def test_a_renamed_option_of_linux_7_2_is_explained_with_its_new_name() -> None:
    if not (SRC_7_2 / "Kconfig").is_file():
        pytest.skip(f"no extracted Linux 7.2 tree at {SRC_7_2} (KTAILOR_TEST_SRC_7_2)")
    kconf = load_kconfig(SRC_7_2, "x86", "", None)
    result = explain(kconf, "CONFIG_RANDOM_KMALLOC_CACHES", "y", "", srctree=SRC_7_2, kernel_arch="x86")
    assert result.kind == "renamed"
    assert result.fix == ["CONFIG_KMALLOC_PARTITION_CACHES=y", "remove CONFIG_RANDOM_KMALLOC_CACHES=y"]
    assert successors_of(kconf, "CFI_CLANG") == ["CFI"]
