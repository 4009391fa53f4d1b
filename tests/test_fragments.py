"""Fragment and list parsing: reasons, scoping, includes, conflicts, overrides, expected drops."""

from __future__ import annotations

from pathlib import Path

import pytest

from ktailor.core.errors import InputError
from ktailor.kconfig.fragments import (
    load_expected_drops,
    parse_fragment,
    parse_scope,
    requested_options,
    resolve_list,
)

HEADER = "# requirement: storage\n# Block devices.\n\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reason_is_the_comment_block_directly_above(tmp_path):
    fragment = parse_fragment(write(tmp_path, "a.conf", HEADER + "# Root disk of every VMM.\n# Built in.\nCONFIG_VIRTIO_BLK=y\n"
                                    "\nCONFIG_EXT4_FS=y\n# Off: no floppies in a microVM.\n# CONFIG_BLK_DEV_FD is not set\n"))
    assert fragment.requirement == "storage"
    blk, ext4, floppy = fragment.options
    assert (blk.symbol, blk.value, blk.line, blk.reason) == ("VIRTIO_BLK", "y", 6, "Root disk of every VMM. Built in.")
    assert ext4.reason == ""
    assert (floppy.symbol, floppy.value, floppy.reason) == ("BLK_DEV_FD", "n", "Off: no floppies in a microVM.")
    assert not fragment.problems


@pytest.mark.parametrize(
    ("line", "words"),
    [
        pytest.param("CONFIG_FOO = y", "spaces around '='", id="spaces"),
        pytest.param("config_foo=y", "CONFIG_ prefix must be upper case", id="lowercase-prefix"),
        pytest.param("CONFIG_foo=y", "upper case", id="lowercase-symbol"),
        pytest.param("FOO=y", "missing the CONFIG_ prefix", id="no-prefix"),
        pytest.param("CONFIG_FOO=yes", "not y, m, n, a number", id="bad-value"),
        pytest.param("hello world", "neither an option", id="junk"),
        pytest.param("#CONFIG_FOO is not set", "exactly '# CONFIG_FOO is not set'", id="bad-not-set"),
    ],
)
def test_malformed_lines_are_problems_with_file_line_and_fix(tmp_path, line, words):
    fragment = parse_fragment(write(tmp_path, "a.conf", HEADER + "# why\n" + line + "\n"))
    assert [str(p) for p in fragment.problems] == [f"{tmp_path / 'a.conf'}:5: {line!r} " + p.message.split("' ", 1)[1]
                                                   for p in fragment.problems]
    assert len(fragment.problems) == 1 and words in fragment.problems[0].message


def test_missing_header_is_a_problem(tmp_path):
    fragment = parse_fragment(write(tmp_path, "a.conf", "# why\nCONFIG_FOO=y\n"))
    assert any("has no header" in p.message for p in fragment.problems)
    assert fragment.options[0].reason == "why"


def test_only_scopes_options_and_whole_fragments(tmp_path):
    text = ("# requirement: cpu\n# @only arch=x86_64\n\n# mitigations, old name\n# @only version<6.9\n"
            "CONFIG_SPECULATION_MITIGATIONS=y\n# mitigations, new name\n# @only version>=6.9\nCONFIG_CPU_MITIGATIONS=y\n")
    fragment = parse_fragment(write(tmp_path, "x86.conf", text))
    old, new = fragment.options
    assert old.scope.applies("x86_64", (6, 1, 192)) and not new.scope.applies("x86_64", (6, 1, 192))
    assert new.scope.applies("x86_64", (6, 12, 0)) and not old.scope.applies("x86_64", (6, 12, 0))
    assert not old.scope.applies("aarch64", (6, 1, 0))
    assert old.reason == "mitigations, old name"


def test_bad_scope_and_unknown_annotation_are_problems(tmp_path):
    fragment = parse_fragment(write(tmp_path, "a.conf", HEADER + "# why\n# @only kernel=6\n# @sometimes\nCONFIG_FOO=y\n"))
    messages = [p.message for p in fragment.problems]
    assert any("'kernel=6' is not understood" in m for m in messages)
    assert any("unknown annotation @sometimes" in m for m in messages)


def test_parse_scope_rejects_junk():
    assert parse_scope("arch=aarch64 version>=5.15").arches == frozenset({"aarch64"})
    with pytest.raises(ValueError):
        parse_scope("version~6")


def test_lists_include_lists_in_place_without_duplicates(tmp_path):
    for name in ("a.conf", "b.conf", "c.conf"):
        write(tmp_path, name, HEADER)
    write(tmp_path, "base.list", "# base\na.conf\nb.conf\n")
    write(tmp_path, "variant.list", "base.list  # the type's list\na.conf\nc.conf\n")
    assert [p.name for p in resolve_list(tmp_path, "variant.list")] == ["a.conf", "b.conf", "c.conf"]


@pytest.mark.parametrize(
    ("lists", "words"),
    [
        pytest.param({"t.list": "missing.conf\n"}, "t.list:1: names fragment 'missing.conf'", id="missing-fragment"),
        pytest.param({"t.list": "\nother.list\n"}, "t.list:2: includes list 'other.list'", id="missing-list"),
        pytest.param({"t.list": "u.list\n", "u.list": "t.list\n"}, "cycle (t.list → u.list → t.list)", id="cycle"),
        pytest.param({"t.list": "notes.txt\n"}, "neither a fragment", id="not-a-fragment"),
    ],
)
def test_bad_lists(tmp_path, lists, words):
    for name, text in lists.items():
        write(tmp_path, name, text)
    with pytest.raises(InputError) as caught:
        resolve_list(tmp_path, "t.list")
    assert words in str(caught.value)


def test_conflicts_need_override_and_later_fragment_wins(tmp_path):
    first = parse_fragment(write(tmp_path, "a.conf", HEADER + "# size\nCONFIG_NR_CPUS=8\n"))
    second = parse_fragment(write(tmp_path, "b.conf", HEADER + "# bigger VMs\nCONFIG_NR_CPUS=64\n"))
    with pytest.raises(InputError, match=r"b\.conf:5: CONFIG_NR_CPUS=64 conflicts with .*a\.conf:5.*@override"):
        requested_options([first, second], "x86_64", (6, 1, 0))
    overriding = parse_fragment(write(tmp_path, "c.conf", HEADER + "# bigger VMs\n# @override\nCONFIG_NR_CPUS=64\n"))
    assert requested_options([first, overriding], "x86_64", (6, 1, 0))["NR_CPUS"].value == "64"


def test_same_option_twice_in_one_fragment(tmp_path):
    fragment = parse_fragment(write(tmp_path, "a.conf", HEADER + "# one\nCONFIG_FOO=y\n# two\nCONFIG_FOO=y\n"))
    with pytest.raises(InputError, match=r"a\.conf:7: CONFIG_FOO is set twice in this fragment \(first at line 5\)"):
        requested_options([fragment], "x86_64", (6, 1, 0))


def test_scoped_out_options_are_not_requested(tmp_path):
    fragment = parse_fragment(write(tmp_path, "a.conf", HEADER + "# arm only\n# @only arch=aarch64\nCONFIG_ARM_AMBA=y\n"))
    assert requested_options([fragment], "x86_64", (6, 1, 0)) == {}
    assert set(requested_options([fragment], "aarch64", (6, 1, 0))) == {"ARM_AMBA"}


def test_expected_drops_scoped_by_arch_and_versions(tmp_path):
    path = write(tmp_path, "expected-drops.toml",
                 '[[drop]]\noption = "CONFIG_FOO"\narch = "x86_64"\nversions = ">=6.1, <6.13"\nwhy = "renamed"\n')
    (drop,) = load_expected_drops(path)
    assert drop.applies("x86_64", (6, 1, 192)) and not drop.applies("x86_64", (6, 13, 0))
    assert not drop.applies("aarch64", (6, 1, 192)) and drop.line == 2
    write(tmp_path, "expected-drops.toml", '[[drop]]\noption = "CONFIG_FOO"\n')
    with pytest.raises(InputError, match=r"needs option .* and a why"):
        load_expected_drops(path)
