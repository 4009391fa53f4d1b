"""The local kernel.org-style mirror: layout, sha256sums, versions.toml, and fetch() from its server."""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
import tomllib
from pathlib import Path

import pytest

from ktailor.core.errors import InputError
from ktailor.sources.mirror import add_to_mirror, kernel_version_of_tarball, main, serve, version_from_makefile, versions_toml
from ktailor.stages.download import fetch

MAKEFILE = """\
# SPDX-License-Identifier: GPL-2.0
VERSION = {version}
PATCHLEVEL = {patchlevel}
SUBLEVEL = {sublevel}
EXTRAVERSION =
NAME = Curry Ramen
"""


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("KTAILOR_QUIET", "1")


def kernel_tarball(path: Path, version: str, top: str = "linux-source") -> Path:
    """A small kernel-looking tarball; a nested Makefile with another version comes first."""
    major, minor, sub = version.split(".")
    files = {
        f"{top}/tools/Makefile": MAKEFILE.format(version=9, patchlevel=9, sublevel=9),
        f"{top}/Makefile": MAKEFILE.format(version=major, patchlevel=minor, sublevel=sub),
        f"{top}/Kconfig": 'mainmenu "Linux"\n',
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:xz", preset=1) as archive:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(text), int(time.time()), 0o644
            archive.addfile(info, io.BytesIO(text.encode()))
    return path


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (MAKEFILE.format(version=6, patchlevel=1, sublevel=5), "6.1.5"),
        (MAKEFILE.format(version=5, patchlevel=10, sublevel=245), "5.10.245"),
        (MAKEFILE.format(version=6, patchlevel=12, sublevel=0), "6.12.0"),
        ("VERSION=6\nPATCHLEVEL=1\nSUBLEVEL=5\n", "6.1.5"),
    ],
    ids=["6.1.5", "two-digit-patchlevel", "sublevel-zero", "no-spaces"],
)
def test_version_from_makefile(text, version):
    assert version_from_makefile(text, Path("Makefile")) == version


@pytest.mark.parametrize("missing", ["VERSION", "PATCHLEVEL", "SUBLEVEL"])
def test_version_from_makefile_names_the_missing_line_and_the_file(missing):
    text = "\n".join(line for line in MAKEFILE.format(version=6, patchlevel=1, sublevel=5).splitlines()
                     if not line.startswith(missing))

    with pytest.raises(InputError, match=f"^/src/linux.tar.xz: its Makefile has no {missing} line"):
        version_from_makefile(text, Path("/src/linux.tar.xz"))


def test_the_version_comes_from_the_top_level_makefile_inside_the_tarball(tmp_path):
    tarball = kernel_tarball(tmp_path / "linux-source-6.1.tar.xz", "6.1.5")

    assert kernel_version_of_tarball(tarball) == "6.1.5"


def test_add_to_mirror_lays_out_the_tarball_like_kernel_org(tmp_path):
    tarball = kernel_tarball(tmp_path / "linux-source-6.1.tar.xz", "6.1.5")
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    mirror = tmp_path / "mirror"

    version, path, sha = add_to_mirror(tarball, mirror)

    assert (version, path, sha) == ("6.1.5", mirror / "v6.x" / "linux-6.1.5.tar.xz", digest)
    assert path.read_bytes() == tarball.read_bytes()
    assert (mirror / "v6.x" / "sha256sums").read_text() == f"{digest}  linux-6.1.5.tar.xz\n"


def test_sha256sums_keeps_other_versions_and_does_not_repeat_one(tmp_path):
    mirror = tmp_path / "mirror"
    first = kernel_tarball(tmp_path / "a" / "linux.tar.xz", "6.1.5")
    second = kernel_tarball(tmp_path / "b" / "linux.tar.xz", "6.1.15")

    add_to_mirror(first, mirror)
    add_to_mirror(second, mirror)
    add_to_mirror(first, mirror)

    sums = (mirror / "v6.x" / "sha256sums").read_text().splitlines()
    assert sorted(sums) == sorted([f"{hashlib.sha256(first.read_bytes()).hexdigest()}  linux-6.1.5.tar.xz",
                                   f"{hashlib.sha256(second.read_bytes()).hexdigest()}  linux-6.1.15.tar.xz"])


def test_a_tarball_without_a_top_level_makefile_is_refused(tmp_path):
    tarball = tmp_path / "not-a-kernel.tar.xz"
    with tarfile.open(tarball, "w:xz", preset=1) as archive:
        info = tarfile.TarInfo("docs/README")
        archive.addfile(info, io.BytesIO(b""))

    with pytest.raises(InputError, match="no top-level Makefile"):
        add_to_mirror(tarball, tmp_path / "mirror")

    assert not (tmp_path / "mirror").exists()


def test_fetch_downloads_from_the_served_mirror_with_the_generated_pin(tmp_path):
    tarball = kernel_tarball(tmp_path / "linux-source-6.1.tar.xz", "6.1.5")
    version, _, digest = add_to_mirror(tarball, tmp_path / "mirror")
    server, url = serve(tmp_path / "mirror")
    try:
        pins = tomllib.loads(versions_toml([(version, digest)], url, ["x86_64-micro"]))
        kernel = pins["kernel"][0]
        assert (pins["mirror"], pins["default"], kernel["targets"]) == (url, "6.1.5", ["x86_64-micro"])
        destination = tmp_path / "downloads" / "linux-6.1.5.tar.xz"

        fetch(f"{pins['mirror']}/v6.x/linux-{kernel['version']}.tar.xz", destination, kernel["sha256"],
              retries=2, timeout=5, backoff=0.01)
    finally:
        server.shutdown()
        server.server_close()

    assert url.startswith("http://127.0.0.1:")
    assert destination.read_bytes() == tarball.read_bytes()


def test_the_command_line_writes_a_versions_file_that_fetch_can_use(tmp_path):
    tarball = kernel_tarball(tmp_path / "linux-source-6.1.tar.xz", "6.1.5")
    mirror, versions = tmp_path / "mirror", tmp_path / "versions.toml"

    assert main(["--tarball", str(tarball), "--dir", str(mirror), "--versions", str(versions)]) == 0

    pins = tomllib.loads(versions.read_text())
    assert pins["mirror"] == mirror.resolve().as_uri()
    assert "targets" not in pins["kernel"][0]
    destination = tmp_path / "downloads" / "linux-6.1.5.tar.xz"
    fetch(f"{pins['mirror']}/v6.x/linux-6.1.5.tar.xz", destination, pins["kernel"][0]["sha256"])
    assert destination.read_bytes() == tarball.read_bytes()


def test_the_command_line_reports_a_bad_tarball_without_a_traceback(tmp_path, capsys):
    tarball = tmp_path / "empty.tar.xz"
    with tarfile.open(tarball, "w:xz", preset=1):
        pass

    assert main(["--tarball", str(tarball), "--dir", str(tmp_path / "mirror")]) == 2

    assert capsys.readouterr().err.startswith(f"E: {tarball}: has no top-level Makefile")
