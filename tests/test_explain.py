"""explain.py: kconfiglib explains why a requested option did not land.

Most tests use a small hand-written Kconfig tree (arch dirs, a top Kconfig sourcing
arch/$(SRCARCH)/Kconfig, a `config MODULES` with the bare `modules` keyword) and a hand-written
"final" .config; the real-source tests run the kernel's own `make allnoconfig` on 5.10, 6.1, 6.12
and 7.2 (whose Kconfig needs kconfig_syntax's rewrites to parse at all).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import kconfiglib
import pytest

from ktailor.core.errors import EnvironmentProblem
from ktailor.kconfig.explain import Explanation, explain
from ktailor.kconfig.kconfig_tree import ExplainUnavailable, did_you_mean, load_kconfig, symbols_for_other_arches

TOP_KCONFIG = """\
mainmenu "Test kernel $(KERNELVERSION)"
$(info,this must not reach stdout)
$(warning-if,y,this must not reach stderr)

# The kernel's scripts/Kconfig.include helpers the probes below use.
if-success = $(shell,{ $(1); } >/dev/null 2>&1 && echo "$(2)" || echo "$(3)")
success = $(if-success,$(1),y,n)

source "arch/$(SRCARCH)/Kconfig"

config MODULES
\tbool "Enable loadable module support"
\tmodules

menuconfig MD
\tbool "Multiple devices driver support"

if MD
config BLK_DEV_DM
\ttristate "Device mapper support"

config DM_CRYPT
\ttristate "Crypt target support"
\tdepends on BLK_DEV_DM
endif

config DM_CACHE_LIKE
\ttristate "A target that follows the device mapper's tristate value"
\tdepends on BLK_DEV_DM

config EXPERT
\tbool "Configure standard kernel features (expert users)"

config EXPERT_ONLY
\tbool "Only shown to experts" if EXPERT

config FEATURE_A
\tbool "Feature A"
\tselect HIDDEN_HELPER
\tselect FORCED

config HIDDEN_HELPER
\tbool

config FORCED
\tbool "Forced by feature A"

choice
\tprompt "Kernel compression mode"
\tdefault KERNEL_GZIP

config KERNEL_GZIP
\tbool "Gzip"

config KERNEL_XZ
\tbool "XZ"

endchoice

config CC_HAS_FANCY_FLAG
\tdef_bool y

config PROBED_FEATURE
\tdef_bool $(success,false)

config USES_PROBED_FEATURE
\tbool "Needs the probed compiler feature"
\tdepends on PROBED_FEATURE

config USES_INLINE_PROBE
\tbool "Needs a compiler flag"
\tdepends on $(success,false)

config EITHER_WAY
\tbool "Needs a crypt target or expert mode"
\tdepends on DM_CRYPT || EXPERT

config UNLESS_FORCED
\tbool "Only without FORCED"
\tdepends on !FORCED

config FOLLOWS_EXPERT
\tdef_bool EXPERT

config ARM64_ONLY_DRIVER
\tbool "A driver only arm64 machines have"
\tdepends on ARM64

config LOG_BUF_SHIFT
\tint "Kernel log buffer size"
\trange 12 25
\tdefault 17
"""

ARCH_KCONFIG = {
    "x86": "config X86\n\tdef_bool y\n\nconfig X86_ONLY_FEATURE\n\tbool \"An x86 feature\"\n",
    "arm64": "config ARM64\n\tdef_bool y\n\nconfig ARM64_VA_BITS_48\n\tbool \"48-bit VA\"\n",
    "riscv": "config RISCV\n\tdef_bool y\n\nconfig ARM64_VA_BITS_48\n\tbool \"also here, for the test\"\n",
}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "linux"
    for arch, text in ARCH_KCONFIG.items():
        (root / "arch" / arch).mkdir(parents=True)
        (root / "arch" / arch / "Kconfig").write_text(text)
    (root / "Kconfig").write_text(TOP_KCONFIG)
    (root / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 99\nEXTRAVERSION =\n")
    return root


def loaded(tree: Path, config_lines: list[str], arch: str = "x86") -> kconfiglib.Kconfig:
    config = tree.parent / "final.config"
    config.write_text("".join(f"{line}\n" for line in config_lines))
    return load_kconfig(tree, arch, "", config)


def why(tree: Path, config_lines: list[str], symbol: str, requested: str, final: str, *,
        arch: str = "x86") -> Explanation:
    kconf = loaded(tree, config_lines, arch)
    return explain(kconf, symbol, requested, final, srctree=tree, kernel_arch=arch)


# --- loading and the `modules` shim ---


def test_plain_kconfiglib_rejects_the_bare_modules_keyword(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"srctree": str(tree), "SRCARCH": "x86", "ARCH": "x86"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(kconfiglib.KconfigError, match="modules"):
        kconfiglib.Kconfig(str(tree / "Kconfig"), warn_to_stderr=False)


def test_shim_parses_bare_modules_and_keeps_module_semantics(tree: Path) -> None:
    kconf = loaded(tree, ["CONFIG_MODULES=y", "CONFIG_MD=y", "CONFIG_BLK_DEV_DM=m"])
    assert kconf.modules.name == "MODULES"
    assert kconf.syms["BLK_DEV_DM"].str_value == "m"
    kconf = loaded(tree, ["# CONFIG_MODULES is not set", "CONFIG_MD=y", "CONFIG_BLK_DEV_DM=m"])
    assert kconf.syms["BLK_DEV_DM"].str_value == "y"  # without modules, m is promoted to y


def test_load_sets_kbuild_variables_and_restores_the_environment(tree: Path, capfd: pytest.CaptureFixture[str]) -> None:
    before = dict(os.environ)
    kconf = loaded(tree, [])
    assert kconf.mainmenu_text == "Test kernel 6.1.99"
    assert "X86" in kconf.syms and kconf.syms["X86"].nodes
    assert "ARM64_VA_BITS_48" not in kconf.syms  # only arch/arm64 and arch/riscv define it
    assert dict(os.environ) == before
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def break_syntax(root: Path) -> None:
    (root / "Kconfig").write_text("config BROKEN\n\tbool \"x\"\n\tfrobnicate\n")


def remove_arch_kconfig(root: Path) -> None:
    (root / "arch" / "x86" / "Kconfig").unlink()


@pytest.mark.parametrize(
    ("mutate", "why_fragment"),
    [(break_syntax, "frobnicate"), (shutil.rmtree, "no top-level Kconfig"), (remove_arch_kconfig, "arch/x86/Kconfig")],
    ids=["syntax-error", "no-tree", "missing-sourced-file"],
)
def test_unparsable_tree_raises_explain_unavailable(tree: Path, mutate: Callable[[Path], object],
                                                    why_fragment: str) -> None:
    before = dict(os.environ)
    mutate(tree)
    with pytest.raises(ExplainUnavailable, match=why_fragment) as caught:
        load_kconfig(tree, "x86", "", None)
    assert isinstance(caught.value, EnvironmentProblem)
    assert dict(os.environ) == before


def test_missing_config_file_raises_explain_unavailable(tree: Path) -> None:
    with pytest.raises(ExplainUnavailable, match=r"nothing\.config"):
        load_kconfig(tree, "x86", "", tree / "nothing.config")


# --- every explanation case ---


def test_unknown_symbol_suggests_the_close_name(tree: Path) -> None:
    result = why(tree, [], "CONFIG_DM_CRPYT", "y", "")
    assert result.kind == "unknown-symbol"
    assert "CONFIG_DM_CRYPT" in result.detail and "6.1.99" in result.detail
    assert result.fix == ["remove CONFIG_DM_CRPYT=y"]


def test_symbol_of_another_arch_names_that_arch(tree: Path) -> None:
    result = why(tree, [], "ARM64_VA_BITS_48", "y", "")
    assert result.kind == "other-arch"
    assert "arm64, riscv" in result.detail
    assert "@only arch=" in result.detail


def test_dependency_on_another_arch_is_other_arch(tree: Path) -> None:
    result = why(tree, [], "ARM64_ONLY_DRIVER", "y", "")
    assert result.kind == "other-arch"
    assert result.dependency == "ARM64(=n)"
    assert "ARM64 exists only for arm64" in result.detail
    assert result.fix == []


def test_unmet_dependency_renders_values_and_fixes_recursively(tree: Path) -> None:
    result = why(tree, [], "DM_CRYPT", "y", "")
    assert result.kind == "unmet-dependency"
    assert result.dependency == "BLK_DEV_DM(=n) && MD(=n)"
    assert "BLK_DEV_DM(=n) needs to be y" in result.detail and "MD(=n) needs to be y" in result.detail
    assert result.fix == ["CONFIG_MD=y", "CONFIG_BLK_DEV_DM=y"]
    assert str(result).endswith("add CONFIG_MD=y and CONFIG_BLK_DEV_DM=y.")


def test_fix_takes_the_cheaper_side_of_an_or(tree: Path) -> None:
    result = why(tree, [], "EITHER_WAY", "y", "")
    assert result.kind == "unmet-dependency"
    assert result.dependency == "DM_CRYPT(=n) || EXPERT(=n)"
    assert result.fix == ["CONFIG_EXPERT=y"]


def test_negated_dependency_asks_to_remove_the_option(tree: Path) -> None:
    result = why(tree, ["CONFIG_FEATURE_A=y", "CONFIG_FORCED=y"], "UNLESS_FORCED", "y", "")
    assert result.kind == "unmet-dependency"
    assert "FORCED(=y) needs to be n" in result.detail
    assert result.fix == ["remove CONFIG_FORCED=y"]


def test_demotion_to_m_names_the_m_dependency(tree: Path) -> None:
    config = ["CONFIG_MODULES=y", "CONFIG_MD=y", "CONFIG_BLK_DEV_DM=m", "CONFIG_DM_CACHE_LIKE=m"]
    result = why(tree, config, "DM_CACHE_LIKE", "y", "m")
    assert result.kind == "unmet-dependency"
    assert "capped at m" in result.detail
    assert result.dependency == "BLK_DEV_DM(=m)"
    assert result.fix == ["CONFIG_BLK_DEV_DM=y"]


def test_m_without_modules_becomes_y_and_asks_for_modules(tree: Path) -> None:
    result = why(tree, ["CONFIG_MD=y", "CONFIG_BLK_DEV_DM=y"], "BLK_DEV_DM", "m", "y")
    assert result.kind == "unmet-dependency"
    assert result.fix == ["CONFIG_MODULES=y"]


def test_symbol_without_prompt_names_its_selector(tree: Path) -> None:
    result = why(tree, [], "HIDDEN_HELPER", "y", "")
    assert result.kind == "no-prompt"
    assert "FEATURE_A(=n)" in result.detail
    assert result.fix == ["CONFIG_FEATURE_A=y"]


def test_symbol_without_prompt_follows_its_default(tree: Path) -> None:
    result = why(tree, [], "FOLLOWS_EXPERT", "y", "")
    assert result.kind == "no-prompt"
    assert "its default (EXPERT(=n)) decides" in result.detail
    assert result.fix == ["CONFIG_EXPERT=y"]


def test_prompt_hidden_by_its_condition_names_the_condition(tree: Path) -> None:
    result = why(tree, [], "EXPERT_ONLY", "y", "")
    assert result.kind == "no-prompt"
    assert result.dependency == "EXPERT(=n)"
    assert result.fix == ["CONFIG_EXPERT=y"]


def test_selected_symbol_names_the_selector_and_its_value(tree: Path) -> None:
    result = why(tree, ["CONFIG_FEATURE_A=y", "# CONFIG_FORCED is not set"], "FORCED", "n", "y")
    assert result.kind == "selected"
    assert "FEATURE_A(=y)" in result.detail
    assert result.fix == ["remove CONFIG_FEATURE_A=y"]


def test_choice_names_the_winner(tree: Path) -> None:
    result = why(tree, ["CONFIG_KERNEL_GZIP=y"], "KERNEL_XZ", "y", "")
    assert result.kind == "choice"
    assert "'Kernel compression mode'" in result.detail and "KERNEL_GZIP won" in result.detail


def test_choice_member_cannot_be_turned_off_alone(tree: Path) -> None:
    result = why(tree, ["CONFIG_KERNEL_GZIP=y"], "KERNEL_GZIP", "n", "y")
    assert result.kind == "choice"
    assert result.fix == ["CONFIG_KERNEL_XZ=y"]


@pytest.mark.parametrize(
    ("symbol", "requested", "final"),
    [("CC_HAS_FANCY_FLAG", "n", "y"), ("PROBED_FEATURE", "y", "")],
    ids=["toolchain-name", "shell-probed-default"],
)
def test_toolchain_decided_symbols(tree: Path, symbol: str, requested: str, final: str) -> None:
    result = why(tree, [], symbol, requested, final)
    assert result.kind == "toolchain"
    assert "toolchain" in result.detail


@pytest.mark.parametrize(
    ("symbol", "dependency"),
    [("USES_PROBED_FEATURE", "PROBED_FEATURE(=n)"), ("USES_INLINE_PROBE", "n")],
    ids=["depends-on-probed-symbol", "depends-on-inline-probe"],
)
def test_dependency_on_a_compiler_probe_is_a_toolchain_matter(tree: Path, symbol: str, dependency: str) -> None:
    result = why(tree, [], symbol, "y", "")
    assert result.kind == "toolchain"
    assert result.dependency == dependency
    assert result.fix == []


def test_out_of_range_number_is_other(tree: Path) -> None:
    result = why(tree, ["CONFIG_LOG_BUF_SHIFT=17"], "LOG_BUF_SHIFT", "40", "17")
    assert result.kind == "other"
    assert "12..25" in result.detail


def test_m_for_a_bool_is_other(tree: Path) -> None:
    result = why(tree, [], "EXPERT", "m", "")
    assert result.kind == "other"
    assert result.fix == ["CONFIG_EXPERT=y"]


# --- helpers ---


@pytest.mark.parametrize(
    ("name", "expected"),
    [("DM_CRPYT", ["DM_CRYPT"]), ("CONFIG_VIRTIO_BLOK", ["VIRTIO_BLK"]), ("ZZZZ", [])],
    ids=["transposed", "config-prefix", "nothing-close"],
)
def test_did_you_mean(name: str, expected: list[str]) -> None:
    candidates = ["DM_CRYPT", "DM_RAID", "VIRTIO_BLK", "VIRTIO_NET", "MD"]
    result = did_you_mean(name, candidates)
    assert (result[:1] if expected else result) == expected


def test_symbols_for_other_arches_excludes_own_arch(tree: Path) -> None:
    other = symbols_for_other_arches(tree, "x86")
    assert other["ARM64_VA_BITS_48"] == ["arm64", "riscv"]
    assert "X86_ONLY_FEATURE" not in other
    assert symbols_for_other_arches(tree, "arm64")["X86_ONLY_FEATURE"] == ["x86"]
    assert "ARM64_VA_BITS_48" not in symbols_for_other_arches(tree, "arm64")


# --- the real kernel ---

REAL_TREES = {
    "5.10": os.environ.get("KTAILOR_TEST_SRC_5_10", "/tmp/ksrc/linux-source-5.10"),
    "6.1": os.environ.get("KTAILOR_TEST_SRC_6_1", "/tmp/ksrc/linux-source-6.1"),
    "6.12": os.environ.get("KTAILOR_TEST_SRC_6_12", "/tmp/ksrc/linux-source-6.12"),
    "7.2": os.environ.get("KTAILOR_TEST_SRC_7_2", "/tmp/ksrc/linux-source-7.2"),
}


def real_tree(series: str) -> Path:
    path = Path(REAL_TREES[series])
    if not (path / "Kconfig").is_file():
        variable = "KTAILOR_TEST_SRC_" + series.replace(".", "_")
        pytest.skip(f"no extracted Linux {series} tree at {path}; extract it (e.g. /usr/src/linux-source-{series}"
                    f".tar.xz) and point {variable} at it")
    return path


@pytest.mark.kernel
@pytest.mark.parametrize("series", list(REAL_TREES))
def test_real_allnoconfig_dm_crypt_alone_is_an_unmet_dependency(series: str, tmp_path: Path) -> None:
    srctree = real_tree(series)
    allconfig = tmp_path / "fragment.config"
    allconfig.write_text("CONFIG_DM_CRYPT=y\n")
    subprocess.run(
        ["make", "-s", "-C", str(srctree), f"O={tmp_path / 'build'}", "ARCH=x86",
         f"KCONFIG_ALLCONFIG={allconfig}", "allnoconfig"],
        check=True, capture_output=True,
    )
    final = (tmp_path / "build" / ".config").read_text()
    assert "CONFIG_DM_CRYPT=y" not in final

    kconf = load_kconfig(srctree, "x86", "", tmp_path / "build" / ".config")
    result = explain(kconf, "CONFIG_DM_CRYPT", "y", "", srctree=srctree, kernel_arch="x86")
    assert result.kind == "unmet-dependency"
    assert "BLK_DEV_DM(=n)" in result.dependency and "MD(=n)" in result.dependency
    # 5.10's plain allnoconfig also has BLOCK=n (EMBEDDED → EXPERT hides its default): one more line
    block = ["CONFIG_BLOCK=y"] if series == "5.10" else []
    assert result.fix == [*block, "CONFIG_MD=y", "CONFIG_BLK_DEV_DM=y"]


@pytest.mark.kernel
@pytest.mark.parametrize("series", list(REAL_TREES))
def test_real_arm64_parses_and_knows_other_arch_symbols(series: str) -> None:
    srctree = real_tree(series)
    if not shutil.which("aarch64-linux-gnu-gcc"):
        pytest.skip("aarch64-linux-gnu-gcc is not installed")
    kconf = load_kconfig(srctree, "arm64", "aarch64-linux-gnu-", None)
    assert kconf.syms["ARM64"].nodes and kconf.modules.nodes
    result = explain(kconf, "X86_X2APIC", "y", "", srctree=srctree, kernel_arch="arm64")
    assert result.kind == "other-arch"
    assert "x86" in result.detail


def test_tree_symbols_reads_every_kconfig_but_none_under_hidden_directories(tmp_path: Path) -> None:
    """A user's tree is often a git checkout with a `git gc --auto` running in the background:
    the walk stays out of .git (and any hidden directory), where directories vanish under it."""
    from ktailor.kconfig.kconfig_tree import tree_symbols

    (tmp_path / "drivers" / "net").mkdir(parents=True)
    (tmp_path / "Kconfig").write_text("config TOP\n\tbool\n")
    (tmp_path / "drivers" / "net" / "Kconfig.debug").write_text("menuconfig NET_DEBUG\n\tbool\n")
    (tmp_path / ".git" / "objects" / "50").mkdir(parents=True)
    (tmp_path / ".git" / "Kconfig").write_text("config FROM_GIT\n\tbool\n")
    (tmp_path / ".git" / "objects" / "50" / "Kconfig").write_text("config FROM_OBJECTS\n\tbool\n")
    assert tree_symbols(tmp_path) == frozenset({"TOP", "NET_DEBUG"})
