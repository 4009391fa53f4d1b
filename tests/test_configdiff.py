"""configdiff.py: the whole final .config of a target compared across kernel versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from ktailor.core.errors import InputError
from ktailor.kconfig.configdiff import compare_configs, error_count, load_must_stay, must_stay_missing, render_changes

REPO = Path(__file__).resolve().parents[1]

MUST_STAY = """\
[[keep]]
option = "CONFIG_FUTEX"
why = "pthreads."

[[keep]]
option = "CONFIG_X86_SMAP"
arch = "x86_64"
why = "SMAP."
absent_ok = "built in unconditionally later."

[[keep]]
option = "CONFIG_MITIGATION_RETPOLINE"
also = ["CONFIG_RETPOLINE"]
why = "Spectre v2."
"""


@pytest.fixture
def must_stay(tmp_path: Path):
    path = tmp_path / "must-stay.toml"
    path.write_text(MUST_STAY)
    return load_must_stay(path)


def test_the_shipped_must_stay_set_loads() -> None:
    entries = load_must_stay(REPO / "fragments" / "must-stay.toml")
    names = {e.symbol for e in entries}
    assert {"FUTEX", "EPOLL", "SHMEM", "MULTIUSER", "BLOCK", "X86_SMAP"} <= names
    assert all(e.why for e in entries)


def test_unrequested_losses_are_found_and_must_stay_ones_are_errors(must_stay) -> None:
    old = {"FUTEX": "y", "EPOLL": "y", "STACKTRACE": "n", "SPARSE": "y", "ONLY_OLD": "y", "REQ": "y"}
    new = {"FUTEX": "n", "EPOLL": "y", "STACKTRACE": "y", "SPARSE": "m", "ONLY_NEW": "y", "REQ": "n"}
    symbols = frozenset({"FUTEX", "EPOLL", "STACKTRACE", "SPARSE", "REQ"})
    changes = compare_configs(old, new, {"REQ"}, arch="x86_64", old_symbols=symbols | {"ONLY_OLD"},
                              new_symbols=symbols | {"ONLY_NEW"}, must_stay=must_stay,
                              menus={"FUTEX": "General setup"})
    kinds = {c.symbol: c.kind for c in changes}
    assert kinds == {"FUTEX": "lost", "STACKTRACE": "gained", "SPARSE": "changed", "ONLY_OLD": "removed",
                     "ONLY_NEW": "added"}  # REQ is requested: the audit's business, not drift's
    assert [c.symbol for c in changes if c.error] == ["FUTEX"]
    text = render_changes("5.10.262", "6.1.192", changes)
    assert "E: CONFIG_FUTEX was y on 5.10.262 and is n on 6.1.192; it must stay on" in text
    assert "General setup: FUTEX y→n" in text and "1 turned off, 1 turned on, 1 y↔m" in text


def test_a_gone_must_stay_symbol_warns_unless_the_entry_explains_it(must_stay) -> None:
    old = {"X86_SMAP": "y", "RETPOLINE": "y", "FUTEX": "y"}
    new = {"MITIGATION_RETPOLINE": "y", "FUTEX": "y"}
    changes = compare_configs(old, new, set(), arch="x86_64", old_symbols=frozenset(old),
                              new_symbols=frozenset(new), must_stay=must_stay)
    assert {c.symbol: c.kind for c in changes} == {"X86_SMAP": "removed", "RETPOLINE": "removed",
                                                    "MITIGATION_RETPOLINE": "added"}
    assert "W: must-stay" not in render_changes("5.10", "6.1", changes)
    bare = [e for e in must_stay if e.symbol == "FUTEX"]
    gone = compare_configs({"FUTEX": "y"}, {}, set(), arch="x86_64", old_symbols=frozenset({"FUTEX"}),
                           new_symbols=frozenset(), must_stay=bare)
    assert "W: must-stay option(s) no longer in 6.1: FUTEX" in render_changes("5.10", "6.1", gone)


def test_must_stay_missing_accepts_either_name_and_respects_arch(must_stay) -> None:
    symbols = frozenset({"FUTEX", "RETPOLINE", "X86_SMAP"})
    assert must_stay_missing({"FUTEX": "y", "RETPOLINE": "y"}, must_stay, "x86_64", symbols)[0].symbol == "X86_SMAP"
    assert must_stay_missing({"FUTEX": "y", "RETPOLINE": "y"}, must_stay, "aarch64", symbols) == []
    missing = must_stay_missing({"FUTEX": "n"}, must_stay, "aarch64", symbols)
    assert sorted(m.symbol for m in missing) == ["FUTEX", "MITIGATION_RETPOLINE"]
    changes = compare_configs({"FUTEX": "y"}, {"FUTEX": "n"}, set(), arch="aarch64", old_symbols=symbols,
                              new_symbols=symbols, must_stay=must_stay)
    assert error_count(changes, missing) == 2  # FUTEX is counted once


@pytest.mark.parametrize("text", ['[[keep]]\noption = "FUTEX"\nwhy = "x"\n', '[[keep]]\noption = "CONFIG_FUTEX"\n',
                                  "[[keep]\n"], ids=["no-prefix", "no-why", "bad-toml"])
def test_bad_must_stay_entries_name_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "must-stay.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=r"must-stay\.toml"):
        load_must_stay(path)


TSX_CHOICE = """\
choice
\tprompt "TSX mode"
\tdefault {default}
config TSX_OFF
\tbool "off"
config TSX_AUTO
\tbool "auto"
endchoice
"""

OLD_KCONFIG = """\
config EXPERT
\tbool "Expert"
config OOB
\tdef_bool y
config SYSFS_SYSCALL
\tbool "sysfs(2)" if EXPERT
\tdefault y
config EXT4
\tbool "ext4"
\tselect CRC
config CRC
\tbool "crc32c"
""" + TSX_CHOICE.format(default="TSX_OFF") + """\
config VMEMMAP
\tbool "vmemmap"
\tdefault y
config PREEMPTION
\tbool
config INLINE_UNLOCK
\tdef_bool y
\tdepends on !PREEMPTION
config INLINE_LOCK
\tdef_bool y
\tdepends on !PREEMPTION
config ARCH_FLATMEM_ENABLE
\tdef_bool y
"""

NEW_KCONFIG = """\
config EXPERT
\tbool "Expert"
config OOB
\tbool "out-of-band messages"
\tdefault y
config SYSFS_SYSCALL
\tbool "sysfs(2)"
\tdefault y
config EXT4
\tbool "ext4"
config CRC
\tbool "crc32c"
""" + TSX_CHOICE.format(default="TSX_AUTO") + """\
config VMEMMAP
\tdef_bool y
config PREEMPTION
\tbool
config ARCH_INLINE_UNLOCK
\tbool
config INLINE_UNLOCK
\tdef_bool y
\tdepends on !PREEMPTION && ARCH_INLINE_UNLOCK
config ARCH_INLINE_LOCK
\tbool
config INLINE_LOCK
\tdef_bool y
\tdepends on !PREEMPTION && ARCH_INLINE_LOCK
"""
OTHER_ARCH_KCONFIG = """\
config ARCH_FLATMEM_ENABLE
\tdef_bool y
"""


def test_drift_says_why_each_unrequested_symbol_changed_from_both_trees(tmp_path: Path) -> None:
    """Each reason the forecast 6.12.118 → 7.2.13 met on the real trees (AF_UNIX_OOB, SYSFS_SYSCALL,
    CRYPTO_CRC32C, X86_INTEL_TSX_MODE_*, SPARSEMEM_VMEMMAP, INLINE_*), in miniature."""
    from ktailor.kconfig.configdiff import drift

    configs = {"old": "CONFIG_OOB=y\nCONFIG_SYSFS_SYSCALL=y\nCONFIG_EXT4=y\nCONFIG_CRC=y\nCONFIG_TSX_OFF=y\n"
                      "# CONFIG_VMEMMAP is not set\nCONFIG_INLINE_UNLOCK=y\nCONFIG_INLINE_LOCK=y\n"
                      "CONFIG_ARCH_FLATMEM_ENABLE=y\n",
               "new": "# CONFIG_OOB is not set\n# CONFIG_SYSFS_SYSCALL is not set\nCONFIG_EXT4=y\n"
                      "# CONFIG_CRC is not set\nCONFIG_TSX_AUTO=y\nCONFIG_VMEMMAP=y\n"}
    for name, kconfig in (("old", OLD_KCONFIG), ("new", NEW_KCONFIG)):
        tree = tmp_path / name / "linux"
        tree.mkdir(parents=True)
        (tree / "Kconfig").write_text(kconfig)
        (tree / "Makefile").write_text("VERSION = 7\nPATCHLEVEL = 2\nSUBLEVEL = 0\nEXTRAVERSION =\n")
        (tmp_path / name / ".config").write_text(configs[name])
    # 5.10 → 6.1 on arm64: ARCH_FLATMEM_ENABLE is gone from arch/arm64 but other arches still define it
    (tmp_path / "new" / "linux" / "arch" / "riscv").mkdir(parents=True)
    (tmp_path / "new" / "linux" / "arch" / "riscv" / "Kconfig").write_text(OTHER_ARCH_KCONFIG)
    changes, missing = drift(old_config=tmp_path / "old" / ".config", new_config=tmp_path / "new" / ".config",
                             requested={"EXT4"}, arch="x86_64", old_tree=tmp_path / "old" / "linux",
                             new_tree=tmp_path / "new" / "linux", kernel_arch="x86", cross_compile="",
                             must_stay=[], versions=("6.12.118", "7.2.13"))
    because = {c.symbol: c.because for c in changes}
    assert because["OOB"].startswith("its prompt shows in 7.2.13 (none in 6.12.118, where its default decided)")
    assert because["SYSFS_SYSCALL"].startswith("its prompt shows in 7.2.13 (hidden in 6.12.118")
    assert because["CRC"] == ("in 6.12.118 it was selected by EXT4(=y); EXT4 no longer selects it in 7.2.13; "
                              "no fragment requests it, so allnoconfig answers its prompt n")
    assert "it takes TSX_AUTO in 7.2.13 (TSX_OFF in 6.12.118)" in because["TSX_OFF"]
    assert because["VMEMMAP"] == "its prompt is gone or hidden in 7.2.13: its default decides now"
    assert because["INLINE_UNLOCK"].startswith("its dependency changed from `!PREEMPTION(=n)` to "
                                               "`!PREEMPTION(=n) && ARCH_INLINE_UNLOCK(=n)`; INLINE_UNLOCK depends on")
    assert because["ARCH_FLATMEM_ENABLE"] == ("7.2.13 no longer defines it for this architecture (other "
                                              "architectures keep it)")
    assert missing == []
    shown = render_changes("6.12.118", "7.2.13", changes)
    assert "  why (from the Kconfig of both trees):" in shown
    reasons = shown.split("  why (from the Kconfig of both trees):\n")[1].splitlines()
    assert "    CRC y→n: " + because["CRC"] in reasons
    # INLINE_LOCK and INLINE_UNLOCK read alike once their own names are taken out: one line for both
    assert len(reasons) == 8
    assert "    INLINE_LOCK y→n, INLINE_UNLOCK y→n: its dependency changed from `!PREEMPTION(=n)` to " \
           "`!PREEMPTION(=n) && ARCH_<symbol>(=n)`" in "\n".join(reasons)
