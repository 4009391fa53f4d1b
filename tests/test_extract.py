"""extract_tarball on small .tar.xz files built here: the tree lands in place, hostile members never do."""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ktailor.core.errors import EnvironmentProblem, InputError
from ktailor.stages import extract
from ktailor.stages.extract import STAMP, extract_tarball, is_extracted, unsafe_reason


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str = "file"  # file, dir, symlink, hardlink, chardev, fifo
    data: bytes = b""
    link: str = ""
    mode: int = 0o644
    culprit: bool = False  # the member the error must name


def kernel_tree(top: str = "linux-6.1.5") -> list[Entry]:
    return [
        Entry(top, "dir", mode=0o755),
        Entry(f"{top}/Makefile", data=b"VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 5\n"),
        Entry(f"{top}/Kconfig", data=b'mainmenu "Linux"\n'),
        Entry(f"{top}/drivers", "dir", mode=0o755),
        Entry(f"{top}/drivers/hello.c", data=b"line one\nline two\nline three\n"),
        Entry(f"{top}/scripts", "dir", mode=0o755),
        Entry(f"{top}/scripts/check.sh", data=b"#!/bin/sh\nexit 0\n", mode=0o755),
        Entry(f"{top}/scripts/hello.c", "symlink", link="../drivers/hello.c"),
        Entry(f"{top}/drivers/hello-again.c", "hardlink", link=f"{top}/drivers/hello.c"),
    ]


def tar_info(entry: Entry) -> tuple[tarfile.TarInfo, io.BytesIO | None]:
    info = tarfile.TarInfo(entry.name)
    info.mtime = int(time.time())  # GNU tar warns about 1970 timestamps
    info.mode = entry.mode
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                 "hardlink": tarfile.LNKTYPE, "chardev": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[entry.kind]
    info.linkname = entry.link
    if entry.kind == "chardev":
        info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    if entry.kind != "file":
        return info, None
    info.size = len(entry.data)
    return info, io.BytesIO(entry.data)


def build_tarball(path: Path, entries: list[Entry]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:xz", preset=1) as archive:
        for entry in entries:
            archive.addfile(*tar_info(entry))
    return path


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every path under root with its kind and content (or link target), to compare trees."""
    result = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            result[relative] = ("symlink", os.readlink(path))
        elif path.is_dir():
            result[relative] = ("dir", "")
        else:
            executable = "x" if path.stat().st_mode & stat.S_IXUSR else "-"
            result[relative] = (f"file{executable}", path.read_text())
    return result


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("KTAILOR_QUIET", "1")


@pytest.fixture(params=["piped", "tarfile"], ids=["tar+xz", "tarfile-fallback"])
def mode(request, monkeypatch):
    """Run the test through GNU tar + xz, and again through the tarfile fallback."""
    if request.param == "tarfile":
        monkeypatch.setattr(extract.shutil, "which", lambda name: None)

        def must_not_run(*args):
            raise AssertionError("the piped path ran although xz and tar are 'missing'")

        monkeypatch.setattr(extract, "_extract_piped", must_not_run)
    return request.param


@pytest.mark.parametrize("top", ["linux-6.1.5", "linux-source-6.1", "kernel"],
                         ids=["kernel-org-name", "debian-source-name", "bare-name"])
def test_a_good_tree_lands_at_the_destination_whatever_its_top_folder(tmp_path, mode, top):
    tarball = build_tarball(tmp_path / "tarballs" / "linux.tar.xz", kernel_tree(top))
    destination = tmp_path / "src" / "linux-6.1.5"

    assert extract_tarball(tarball, destination) == destination

    tree = snapshot(destination)
    assert tree["Makefile"] == ("file-", "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 5\n")
    assert tree["scripts/check.sh"] == ("filex", "#!/bin/sh\nexit 0\n")
    assert tree["scripts/hello.c"] == ("symlink", "../drivers/hello.c")
    assert tree["drivers/hello-again.c"] == ("file-", "line one\nline two\nline three\n")
    assert (destination / "drivers/hello-again.c").samefile(destination / "drivers/hello.c")
    assert (destination / STAMP).read_text() == "linux.tar.xz\n"
    assert is_extracted(destination)
    assert list(destination.parent.iterdir()) == [destination], "a temp dir was left behind"


def test_the_fallback_gives_the_same_tree_as_tar(tmp_path, monkeypatch):
    tarball = build_tarball(tmp_path / "linux.tar.xz", kernel_tree())
    piped = extract_tarball(tarball, tmp_path / "piped" / "linux")
    monkeypatch.setattr(extract.shutil, "which", lambda name: None)

    fallback = extract_tarball(tarball, tmp_path / "fallback" / "linux")

    assert snapshot(fallback) == snapshot(piped)
    assert len(snapshot(piped)) == len(kernel_tree()) + 1  # every member but the top folder, the stamp, the date
    with tarfile.open(tarball) as archive:
        newest = max(int(m.mtime) for m in archive.getmembers())
    assert extract.source_date(piped, {}) == newest == extract.source_date(fallback, {})  # the archive's, not now
    assert extract.source_date(piped, {"SOURCE_DATE_EPOCH": "1700000000"}) == 1700000000


def test_an_existing_destination_is_replaced(tmp_path):
    tarball = build_tarball(tmp_path / "linux.tar.xz", kernel_tree())
    destination = tmp_path / "src" / "linux"
    destination.mkdir(parents=True)
    (destination / "left-over.o").write_text("from an older extraction")

    extract_tarball(tarball, destination)

    assert not (destination / "left-over.o").exists()
    assert (destination / "Makefile").is_file()


# Every escape target sits inside tmp_path at a spot the test then inspects:
# tarballs are extracted from tmp/work/parent/.<tmp>/, so "../x" there means tmp/work/parent/x.
HOSTILE = {
    "absolute-path": [Entry("{tmp}/escaped-absolute", data=b"pwned\n", culprit=True)],
    "dot-dot-at-top": [Entry("../escaped-dotdot", data=b"pwned\n", culprit=True)],
    "dot-dot-inside-tree": [Entry("linux/../../escaped-dotdot", data=b"pwned\n", culprit=True)],
    "symlink-to-etc": [Entry("linux/etc", "symlink", link="/etc", culprit=True)],
    "absolute-symlink-then-write-through-it": [
        Entry("linux/out", "symlink", link="{tmp}/outside", culprit=True),
        Entry("linux/out/pwned", data=b"pwned\n"),
    ],
    "relative-symlink-escaping": [
        Entry("linux/a", "symlink", link="../../outside", culprit=True),
        Entry("linux/a/pwned", data=b"pwned\n"),
    ],
    "symlink-to-the-tree-parent": [Entry("linux/up", "symlink", link="..", culprit=True)],
    "symlink-to-a-sibling-of-the-tree": [Entry("linux/next-door", "symlink", link="../victim", culprit=True)],
    "member-under-an-earlier-symlink": [
        Entry("linux/s1", "dir", mode=0o755),
        Entry("linux/s1/s2", "dir", mode=0o755),
        Entry("linux/s1/s2/up", "symlink", link="../.."),
        Entry("linux/s1/s2/up/q", "symlink", link="../..", culprit=True),
    ],
    "symlink-target-through-an-earlier-symlink": [
        Entry("linux/s1", "dir", mode=0o755),
        Entry("linux/s1/s2", "dir", mode=0o755),
        Entry("linux/s1/s2/up", "symlink", link="../.."),
        Entry("linux/z", "symlink", link="s1/s2/up/..", culprit=True),
    ],
    "hardlink-outside": [Entry("linux/victim", "hardlink", link="../victim", culprit=True)],
    "hardlink-absolute": [Entry("linux/victim", "hardlink", link="{tmp}/work/parent/victim", culprit=True)],
    "char-device": [Entry("linux/null", "chardev", culprit=True)],
    "fifo": [Entry("linux/pipe", "fifo", culprit=True)],
}


def hostile_tarball(tmp_path: Path, case: str, *, after_data: bool = False) -> tuple[Path, str]:
    members = [Entry(e.name.format(tmp=tmp_path), e.kind, e.data, e.link.format(tmp=tmp_path), e.mode, e.culprit)
               for e in HOSTILE[case]]
    # The hostile member comes after a real-looking tree (and optionally after more than one
    # read-ahead chunk of data), so tar has already written files when Python sees it.
    padding = [Entry("linux/firmware.bin", data=b"\x00" * (extract.CHUNK + 4096))] if after_data else []
    tarball = build_tarball(tmp_path / "tarballs" / f"{case}.tar.xz", kernel_tree("linux") + padding + members)
    return tarball, next(entry.name for entry in members if entry.culprit)


def outside_state(tmp_path: Path) -> dict[str, object]:
    return {str(p.relative_to(tmp_path)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None,
                                            p.lstat().st_nlink if p.is_file() else None)
            for p in sorted(tmp_path.rglob("*")) if "tarballs" not in p.parts}


@pytest.mark.parametrize("after_data", [False, True], ids=["early", "after-1MiB"])
@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_a_hostile_member_is_refused_and_leaves_nothing_behind(tmp_path, mode, case, after_data):
    tarball, culprit = hostile_tarball(tmp_path, case, after_data=after_data)
    parent = tmp_path / "work" / "parent"
    (parent / "outside").mkdir(parents=True)
    (parent / "victim").write_text("untouched\n")
    (tmp_path / "outside").mkdir()
    before = outside_state(tmp_path)
    destination = parent / "linux"

    with pytest.raises(InputError, match="refusing to extract") as raised:
        extract_tarball(tarball, destination)

    assert repr(culprit) in str(raised.value)
    assert str(tarball) in str(raised.value)
    assert not destination.exists()
    assert outside_state(tmp_path) == before, "something was written or a temp dir was left behind"


def test_the_data_filter_still_refuses_what_the_header_check_misses(tmp_path, monkeypatch):
    tarball = build_tarball(tmp_path / "linux.tar.xz",
                            [*kernel_tree("linux"), Entry("linux/etc", "symlink", link="/etc")])
    monkeypatch.setattr(extract.shutil, "which", lambda name: None)
    monkeypatch.setattr(extract, "unsafe_reason", lambda member, symlinks=None: None)
    destination = tmp_path / "src" / "linux"

    with pytest.raises(InputError, match="refusing to extract: 'linux/etc'"):
        extract_tarball(tarball, destination)

    assert list(destination.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([Entry("linux", "dir", mode=0o755), Entry("linux/Kconfig")], "its top level: linux/ without Makefile)"),
        ([Entry("linux", "dir", mode=0o755), Entry("linux/Makefile")], "its top level: linux/ without Kconfig)"),
        ([Entry("linux/Makefile", "dir", mode=0o755), Entry("linux/Kconfig")], "its top level: linux/ without Makefile)"),
        ([*kernel_tree("linux"), Entry("README")], "one top-level folder, found: README, linux"),
        ([Entry("Makefile"), Entry("Kconfig")], "its top level: Kconfig, Makefile)"),
        ([Entry("linux/Makefile"), Entry("linux/Kconfig"), Entry("linux/Makefile", "symlink", link="nowhere")],
         "linux/ has no Makefile and Kconfig once extracted"),
    ],
    ids=["no-makefile", "no-kconfig", "makefile-is-a-folder", "stray-top-level-file", "no-top-level-folder",
         "makefile-replaced-later"],
)
def test_not_a_kernel_tree_is_an_input_error(tmp_path, mode, entries, message):
    tarball = build_tarball(tmp_path / "tarballs" / "odd.tar.xz", entries)
    destination = tmp_path / "src" / "linux"

    with pytest.raises(InputError, match=re.escape(message)) as raised:
        extract_tarball(tarball, destination)

    assert str(tarball) in str(raised.value)
    assert list(destination.parent.iterdir()) == []


# --- not a kernel at all, or far too big (issue 20) -----------------------------------------------------
@pytest.fixture(name="writes")
def fixture_writes(monkeypatch) -> list[str]:
    """What started writing the tree: tar and xz (the piped path) or tarfile's extractall (the fallback)."""
    started: list[str] = []
    real_start, real_extractall = extract.start, tarfile.TarFile.extractall

    def start(argv, **kwargs):
        started.append(argv[0])
        return real_start(argv, **kwargs)

    def extractall(self, *args, **kwargs):
        started.append("extractall")
        return real_extractall(self, *args, **kwargs)

    monkeypatch.setattr(extract, "start", start)
    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)
    return started


def some_project(top: str = "project-2.1") -> list[Entry]:
    """A source tarball of something else: a Makefile, but no Kconfig."""
    return [Entry(top, "dir", mode=0o755), Entry(f"{top}/Makefile", data=b"all:\n\tcc -o hello hello.c\n"),
            Entry(f"{top}/README", data=b"Hello\n"), Entry(f"{top}/src", "dir", mode=0o755),
            *(Entry(f"{top}/src/part{n}.c", data=b"int x;\n") for n in range(20))]


def assert_refused_as_not_linux(raised: pytest.ExceptionInfo, tarball: Path, destination: Path) -> str:
    message = str(raised.value)
    assert message.startswith(f"{tarball}: is not a Linux source tree: ")
    assert "versions.toml" in message and "sha256" in message and "\n" not in message
    assert not destination.exists() and list(destination.parent.iterdir()) == [], "something was left behind"
    return message


def test_a_tarball_holding_no_kernel_is_refused_before_anything_is_written(tmp_path, mode, writes):
    tarball = build_tarball(tmp_path / "tarballs" / "linux-6.1.5.tar.xz", some_project())
    destination = tmp_path / "src" / "linux-6.1.5"

    with pytest.raises(InputError) as raised:
        extract_tarball(tarball, destination)

    message = assert_refused_as_not_linux(raised, tarball, destination)
    assert "no top-level folder in it holds both a Makefile and a Kconfig (its top level: project-2.1/ without " \
           "Kconfig)" in message
    assert writes == [], "extraction started before the tarball was seen not to be a kernel"


@pytest.mark.parametrize("kernel_first", [False, True], ids=["no-kernel", "kernel-then-more"])
@pytest.mark.parametrize(("limits", "words"), [
    pytest.param(extract.Limits(members=15, size=1 << 30), "it holds over 15 members", id="members"),
    pytest.param(extract.Limits(members=1000, size=200_000), "its members add up to over 200,000 bytes", id="size"),
])
def test_a_tarball_past_the_limits_is_refused_and_leaves_nothing(tmp_path, mode, writes, limits, words, kernel_first):
    """A 100,000-file or 100 GB tarball, scaled down: the limits are lowered instead."""
    bulk = [Entry(f"linux/bulk/zeros-{n}.bin", data=b"\0" * 50_000) for n in range(20)]
    entries = [*kernel_tree("linux"), *bulk] if kernel_first else [*some_project("linux"), *bulk]
    tarball = build_tarball(tmp_path / "tarballs" / "linux-6.1.5.tar.xz", entries)
    destination = tmp_path / "src" / "linux-6.1.5"

    with pytest.raises(InputError) as raised:
        extract_tarball(tarball, destination, limits=limits)

    assert words in assert_refused_as_not_linux(raised, tarball, destination)
    if kernel_first and mode == "piped":  # the tree had shown, so tar was writing: stopped at the limit, all removed
        assert writes == ["xz", "tar"]
    else:  # the listing pass stopped it before anything was written
        assert writes == []
    if kernel_first:
        assert extract_tarball(tarball, destination) == destination  # within the real limits it is a kernel


def test_the_kernel_limits_hold_a_real_tree_with_room_to_grow():
    """A Linux 6.12 tarball: 92,452 members and 1.49 GB."""
    assert extract.KERNEL_LIMITS.members >= 200_000
    assert extract.KERNEL_LIMITS.size >= 4 << 30


def test_a_kernel_whose_makefile_and_kconfig_come_last_is_extracted(tmp_path, mode):
    """The listing pass reads on until the top files show, wherever the archive puts them."""
    tree = kernel_tree("linux")
    entries = [tree[0], *tree[3:], *(Entry(f"linux/drivers/f{n}.c", data=b"int x;\n") for n in range(30)), *tree[1:3]]
    tarball = build_tarball(tmp_path / "linux.tar.xz", entries)

    destination = extract_tarball(tarball, tmp_path / "src" / "linux", limits=extract.Limits(members=50, size=1 << 20))

    assert (destination / "Kconfig").is_file() and (destination / "drivers" / "f29.c").is_file()


@pytest.mark.parametrize("spoil", [lambda path: path.write_text("<html>mirror error page</html>\n"),
                                   lambda path: path.write_bytes(path.read_bytes()[:-200])],
                         ids=["not-xz", "truncated"])
def test_a_corrupt_tarball_is_an_input_error(tmp_path, mode, spoil):
    tarball = build_tarball(tmp_path / "linux.tar.xz",
                            [*kernel_tree("linux"), Entry("linux/firmware.bin", data=os.urandom(50_000))])
    spoil(tarball)
    destination = tmp_path / "src" / "linux"

    with pytest.raises(InputError) as raised:
        extract_tarball(tarball, destination)

    assert str(tarball) in str(raised.value)
    assert list(destination.parent.iterdir()) == []


FIRST = """\
--- a/drivers/hello.c
+++ b/drivers/hello.c
@@ -1,3 +1,3 @@
 line one
-line two
+line two, patched once
 line three
"""
SECOND = FIRST.replace("-line two\n+line two, patched once", "-line two, patched once\n+line two, patched twice")
BROKEN = FIRST.replace("line two", "a line this tree never had")


def write_patches(folder: Path, patches: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    for name in sorted(patches, reverse=True):  # created last-first, so directory order is not name order
        (folder / name).write_text(patches[name])
    return folder


def test_patches_are_applied_in_name_order(tmp_path, mode):
    tarball = build_tarball(tmp_path / "linux.tar.xz", kernel_tree())
    patches = write_patches(tmp_path / "patches" / "6.1", {"0001-first.patch": FIRST, "0002-second.patch": SECOND,
                                                           "README": "not a patch, ignored"})
    destination = tmp_path / "src" / "linux"

    extract_tarball(tarball, destination, patches)

    assert (destination / "drivers/hello.c").read_text() == "line one\nline two, patched twice\nline three\n"
    assert is_extracted(destination)
    assert not list(destination.rglob("*.orig")) and not list(destination.rglob("*.rej"))


def test_a_patch_that_does_not_apply_is_named_and_nothing_lands(tmp_path, mode):
    tarball = build_tarball(tmp_path / "linux.tar.xz", kernel_tree())
    patches = write_patches(tmp_path / "patches" / "6.1", {"0001-first.patch": FIRST, "0002-broken.patch": BROKEN})
    destination = tmp_path / "src" / "linux"

    with pytest.raises(InputError, match="does not apply") as raised:
        extract_tarball(tarball, destination, patches)

    assert str(raised.value).startswith(str(patches / "0002-broken.patch"))
    assert list(destination.parent.iterdir()) == []


def member(name: str, kind: str = "file", link: str = "") -> tarfile.TarInfo:
    return tar_info(Entry(name, kind, link=link))[0]


@pytest.mark.parametrize(
    ("info", "reason"),
    [
        pytest.param(member("linux/Makefile"), None, id="regular-file"),
        pytest.param(member("linux/arch", "dir"), None, id="directory"),
        pytest.param(member("./linux/Makefile"), None, id="dot-slash-prefix"),
        pytest.param(member("linux/scripts/dtc/include-prefixes/arm", "symlink", "../../../arch/arm/boot/dts"), None,
                     id="symlink-inside-tree"),
        pytest.param(member("linux/self", "symlink", "."), None, id="symlink-to-the-tree-itself"),
        pytest.param(member("linux/a/b", "hardlink", "linux/a/c"), None, id="hardlink-inside-tree"),
        pytest.param(member("/etc/passwd"), "has an absolute path", id="absolute"),
        pytest.param(member("../x"), "contains '..'", id="dot-dot-at-top"),
        pytest.param(member("linux/../../x"), "contains '..'", id="dot-dot-inside"),
        pytest.param(member("linux/etc", "symlink", "/etc"), "is a symlink to '/etc', outside the tree",
                     id="symlink-absolute"),
        pytest.param(member("linux/a", "symlink", "../../x"), "is a symlink to '../../x', outside the tree",
                     id="symlink-two-up"),
        pytest.param(member("linux/a", "symlink", "../x"), "is a symlink to '../x', outside the tree",
                     id="symlink-to-a-sibling"),
        pytest.param(member("linux/up", "symlink", ".."), "is a symlink to '..', outside the tree",
                     id="symlink-to-the-parent"),
        pytest.param(member("linux/deep/a", "symlink", "../../../x"), "is a symlink to '../../../x', outside the tree",
                     id="symlink-deep-escape"),
        pytest.param(member("linux/h", "hardlink", "../etc/passwd"),
                     "is a hard link to '../etc/passwd', outside the tree", id="hardlink-dot-dot"),
        pytest.param(member("linux/h", "hardlink", "/etc/passwd"), "is a hard link to '/etc/passwd', outside the tree",
                     id="hardlink-absolute"),
        pytest.param(member("linux/null", "chardev"), "is a device file or fifo", id="char-device"),
        pytest.param(member("linux/pipe", "fifo"), "is a device file or fifo", id="fifo"),
    ],
)
def test_unsafe_reason(info, reason):
    assert unsafe_reason(info) == reason


UP = member("linux/s/up", "symlink", "..")


@pytest.mark.parametrize(
    ("earlier", "last", "reason"),
    [
        pytest.param(UP, member("linux/s/up/x"), "lies under the symlink 'linux/s/up', which could lead outside the tree",
                     id="member-under-a-symlink"),
        pytest.param(UP, member("linux/z", "symlink", "s/up/../.."),
                     "is a symlink to 's/up/../..', through another symlink that could lead outside the tree",
                     id="symlink-target-through-a-symlink"),
        pytest.param(UP, member("linux/h", "hardlink", "linux/s/up/../Makefile"),
                     "is a hard link to 'linux/s/up/../Makefile', outside the tree", id="hardlink-through-a-symlink"),
        pytest.param(member("linux/s/lnk", "symlink", "../d"), member("linux/z", "symlink", "s/lnk"), None,
                     id="symlink-to-a-symlink"),
        pytest.param(member("linux/s/lnk", "symlink", "../d"), member("linux/s/lnk2", "symlink", "../s"), None,
                     id="sibling-names-not-confused"),
    ],
)
def test_unsafe_reason_remembers_earlier_symlinks(earlier, last, reason):
    symlinks: set = set()
    assert unsafe_reason(earlier, symlinks) is None

    assert unsafe_reason(last, symlinks) == reason


# --- trust and robustness (issue 9: stale objects, wrong release, hangs, leftovers) ------------------
def test_every_file_is_newer_than_objects_built_before_the_extraction(tmp_path, mode):
    """GNU tar restores archive mtimes by default: a re-extracted (patch removed) tree would be older than
    the objects of the last build, and make would rebuild nothing."""
    tarball = tmp_path / "linux-6.1.5.tar.xz"
    released = int(time.time()) - 30 * 86400  # the release was cut a month ago
    with tarfile.open(tarball, "w:xz", preset=1) as archive:
        for entry in kernel_tree():
            info, data = tar_info(entry)
            info.mtime = released
            archive.addfile(info, data)
    object_built = time.time()  # the last build's objects: newer than every file of the archive
    tree = extract_tarball(tarball, tmp_path / "src" / "linux-6.1.5")
    files = [p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()]
    old = [p.name for p in files if p.stat().st_mtime < object_built - 1]
    assert files and not old, old


@pytest.mark.parametrize(("makefile", "words"), [
    pytest.param(b"VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 2\n", "its Makefile says Linux 6.1.2", id="other-release"),
    pytest.param(b"# no version lines\n", "no VERSION/PATCHLEVEL/SUBLEVEL", id="no-version"),
])
def test_a_tarball_holding_another_release_is_refused(tmp_path, mode, makefile, words):
    entries = [Entry(e.name, e.kind, makefile if e.name.endswith("/Makefile") else e.data, e.link, e.mode)
               for e in kernel_tree()]
    tarball = build_tarball(tmp_path / "linux-6.1.5.tar.xz", entries)
    with pytest.raises(InputError, match=words) as caught:
        extract_tarball(tarball, tmp_path / "src" / "linux-6.1.5", version="6.1.5")
    assert "linux-6.1.5.tar.xz" in str(caught.value) and "named for Linux 6.1.5" in str(caught.value)
    assert not (tmp_path / "src" / "linux-6.1.5").exists() and not list((tmp_path / "src").iterdir())


def test_the_named_release_is_accepted_and_a_dot_zero_release_reads_as_major_minor(tmp_path):
    tree = extract_tarball(build_tarball(tmp_path / "a.tar.xz", kernel_tree()), tmp_path / "src" / "a", version="6.1.5")
    assert extract.tree_version(tree) == "6.1.5"
    (tree / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 0\n")
    assert extract.tree_version(tree) == "6.12"


def test_future_dated_members_by_the_thousand_do_not_hang_the_extraction(tmp_path):
    """GNU tar warns once per future-dated member; on a pipe nobody reads, 5,000 warnings used to block it."""
    if not (shutil.which("tar") and shutil.which("xz")):
        pytest.skip("GNU tar and xz are needed for the piped extraction")
    top = "linux-6.1.5"
    future = int(time.time()) + 10 * 365 * 86400
    tarball = tmp_path / "linux-6.1.5.tar.xz"
    with tarfile.open(tarball, "w:xz", preset=1) as archive:
        for entry in kernel_tree(top)[:3]:
            archive.addfile(*tar_info(entry))
        for number in range(5000):
            info = tarfile.TarInfo(f"{top}/drivers/generated/file-with-a-long-name-{number:05d}.c")
            info.size, info.mtime = 2, future
            archive.addfile(info, io.BytesIO(b"x\n"))
    script = ("import sys; from pathlib import Path; from ktailor.stages.extract import extract_tarball; "
              "extract_tarball(Path(sys.argv[1]), Path(sys.argv[2]))")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script, str(tarball), str(tmp_path / "src" / top)],
                          capture_output=True, text=True, timeout=120, env=os.environ | {"KTAILOR_QUIET": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "src" / top / "drivers" / "generated").iterdir())) == 5000
    assert time.monotonic() - started < 120


def test_a_killed_extractions_temp_dir_is_removed_by_the_next_one(tmp_path):
    destination = tmp_path / "src" / "linux-6.1.5"
    leftover = tmp_path / "src" / ".linux-6.1.5.abc123"
    (leftover / "linux-6.1.5" / "drivers").mkdir(parents=True)
    (leftover / "linux-6.1.5" / "drivers" / "big.o").write_bytes(b"\0" * 1000)
    assert extract.leftovers(destination) == [leftover]
    extract_tarball(build_tarball(tmp_path / "a.tar.xz", kernel_tree()), destination)
    assert not leftover.exists() and extract.leftovers(destination) == []


def test_a_full_disk_is_not_called_a_hostile_tarball(tmp_path, monkeypatch):
    """tar dies of ENOSPC; the message must say so, not blame the tarball."""
    if not (shutil.which("tar") and shutil.which("xz")):
        pytest.skip("GNU tar and xz are needed for the piped extraction")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "tar").write_text("#!/bin/sh\nhead -c 1000 >/dev/null\necho 'tar: linux/x: Cannot write: No space left on "
                                  "device' >&2\nexit 2\n")
    (fake_bin / "tar").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    entries = kernel_tree() + [Entry(f"linux-6.1.5/drivers/blob-{n}.bin", data=os.urandom(20000)) for n in range(40)]
    tarball = build_tarball(tmp_path / "linux-6.1.5.tar.xz", entries)
    with pytest.raises(EnvironmentProblem, match="disk is full") as caught:
        extract_tarball(tarball, tmp_path / "src" / "linux-6.1.5")
    assert "hostile" not in str(caught.value)
