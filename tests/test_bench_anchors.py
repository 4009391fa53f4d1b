"""bench/reference.py's reference configs: pinned upstream files, fetched over HTTP and checked by sha256."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import pytest

from ktailor.core.errors import ChecksumMismatch
from ktailor.sources.mirror import serve

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from anchors import URL_ENV, check_local, fetch_anchors, pins  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "anchors"


def test_every_pin_names_a_full_commit_and_sha256():
    pinned = pins()
    assert set(pinned) == {"firecracker", "kuasar"}
    for project in pinned.values():
        assert re.fullmatch(r"[0-9a-f]{40}", project["commit"]) and "/" in project["repo"]
        assert project["files"] and all(re.fullmatch(r"[0-9a-f]{64}", sha) for sha in project["files"].values())
    kuasar = pinned["kuasar"]["files"]  # every fragment the list names is pinned too
    listed = [line for line in (SHARED / "kuasar" / "micro-kernel-x86_64.list").read_text().split()
              if not line.startswith("#")] if SHARED.is_dir() else []
    assert all(name in kuasar for name in listed)


@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared/anchors copy beside this checkout")
def test_the_pins_are_the_files_of_the_shared_copy():
    assert check_local(SHARED) == []


def upstream_layout(tmp_path: Path, pinned: dict, contents: dict[str, bytes]) -> Path:
    """A raw.githubusercontent.com-style tree: <repo>/<commit>/<base>/<file>."""
    root = tmp_path / "upstream"
    for project in pinned.values():
        for name in project["files"]:
            path = root / project["repo"] / project["commit"] / project["base"] / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(contents[name])
    return root


def small_pins(contents: dict[str, bytes]) -> dict:
    return {"firecracker": {"repo": "firecracker-microvm/firecracker", "commit": "a" * 40, "base": "resources/guest_configs",
                            "files": {"x.config": hashlib.sha256(contents["x.config"]).hexdigest()}},
            "kuasar": {"repo": "kuasar-io/kuasar", "commit": "b" * 40, "base": "vmm/k",
                       "files": {"fragments/base.conf": hashlib.sha256(contents["fragments/base.conf"]).hexdigest()}}}


def test_fetched_files_land_in_the_cache_in_the_anchors_layout(tmp_path):
    contents = {"x.config": b"CONFIG_64BIT=y\n", "fragments/base.conf": b"CONFIG_PRINTK=y\n"}
    pinned = small_pins(contents)
    server, url = serve(upstream_layout(tmp_path, pinned, contents))
    try:
        root = fetch_anchors(tmp_path / "cache", {URL_ENV: url}, pinned)
    finally:
        server.shutdown()
    assert (root / "firecracker" / "x.config").read_bytes() == contents["x.config"]
    assert (root / "kuasar" / "fragments" / "base.conf").read_bytes() == contents["fragments/base.conf"]
    assert check_local(root, pinned) == []


def test_a_file_that_is_not_the_pinned_one_is_refused(tmp_path):
    contents = {"x.config": b"CONFIG_64BIT=y\n", "fragments/base.conf": b"CONFIG_PRINTK=y\n"}
    pinned = small_pins(contents)
    upstream = upstream_layout(tmp_path, pinned, contents)
    changed = upstream / "firecracker-microvm/firecracker" / ("a" * 40) / "resources/guest_configs/x.config"
    changed.write_bytes(b"CONFIG_64BIT=y\nCONFIG_EVIL=y\n")
    server, url = serve(upstream)
    try:
        with pytest.raises(ChecksumMismatch):
            fetch_anchors(tmp_path / "cache", {URL_ENV: url}, pinned)
    finally:
        server.shutdown()
    assert not (tmp_path / "cache" / "anchors" / "firecracker" / "x.config").exists()
    local = tmp_path / "local"
    (local / "firecracker").mkdir(parents=True)
    (local / "firecracker" / "x.config").write_bytes(changed.read_bytes())
    problems = check_local(local, pinned)
    assert any("is not firecracker-microvm/firecracker@aaaaaaaaaaaa's x.config" in p for p in problems)
    assert any(p.endswith("base.conf is missing") for p in problems)
