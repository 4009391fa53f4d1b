"""fetch() against a real HTTP server on 127.0.0.1: resume, retries, timeouts, checksums, file:// mirrors."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import pytest

from _httpserver import Reply, scripted_servers
from ktailor.core.errors import ChecksumMismatch, DownloadError
from ktailor.stages import download
from ktailor.stages.download import fetch, is_verified, verified_marker

# Short enough that the whole file runs in a few seconds, long enough for loopback.
FAST = {"retries": 3, "timeout": 1.0, "backoff": 0.01}
NAME = "linux-6.1.5.tar.xz"


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("KTAILOR_QUIET", "1")


@pytest.fixture
def http_server():
    yield from scripted_servers()


def payload(size: int = 300_000) -> tuple[bytes, str]:
    data = os.urandom(size)
    return data, hashlib.sha256(data).hexdigest()


def url_of(server) -> str:
    return f"{server.url}/v6.x/{NAME}"


def ranges(server) -> list[str | None]:
    return [request.headers.get("Range") for request in server.requests]


def part_of(destination: Path) -> Path:
    return destination.with_name(destination.name + ".part")


def assert_verified(destination: Path, data: bytes, sha: str) -> None:
    assert destination.read_bytes() == data
    assert verified_marker(destination).read_text().split() == [sha, str(len(data))]
    assert not part_of(destination).exists()


def test_downloads_verifies_and_marks(tmp_path, http_server):
    data, sha = payload()
    server = http_server(data)
    destination = tmp_path / "downloads" / NAME

    assert fetch(url_of(server), destination, sha, **FAST) == destination

    assert_verified(destination, data, sha)
    assert [r.path for r in server.requests] == [f"/v6.x/{NAME}"]
    assert ranges(server) == [None]
    assert is_verified(destination, sha)


def test_a_verified_file_is_not_downloaded_again(tmp_path, http_server):
    data, sha = payload()
    server = http_server(data)
    destination = tmp_path / NAME
    fetch(url_of(server), destination, sha, **FAST)

    fetch(url_of(server), destination, sha, **FAST)

    assert len(server.requests) == 1


def test_resumes_with_range_after_the_connection_is_cut(tmp_path, http_server):
    data, sha = payload()
    cut = 123_457
    server = http_server(data, [Reply(cut_after=cut), Reply()])
    destination = tmp_path / NAME

    fetch(url_of(server), destination, sha, **FAST)

    assert ranges(server) == [None, f"bytes={cut}-"]
    assert_verified(destination, data, sha)


def test_resumes_a_part_file_left_by_an_earlier_run(tmp_path, http_server):
    data, sha = payload()
    have = 200_001
    destination = tmp_path / NAME
    part_of(destination).write_bytes(data[:have])
    server = http_server(data)

    fetch(url_of(server), destination, sha, **FAST)

    assert ranges(server) == [f"bytes={have}-"]
    assert_verified(destination, data, sha)


def test_a_server_ignoring_range_restarts_the_part_file(tmp_path, http_server):
    data, sha = payload()
    destination = tmp_path / NAME
    stale = b"stale bytes from another file"
    part_of(destination).write_bytes(stale)
    server = http_server(data, [Reply(ranges=False)])

    fetch(url_of(server), destination, sha, **FAST)

    assert ranges(server) == [f"bytes={len(stale)}-"]
    assert_verified(destination, data, sha)


def test_a_part_file_longer_than_the_remote_one_starts_over(tmp_path, http_server):
    data, sha = payload()
    destination = tmp_path / NAME
    part_of(destination).write_bytes(data + b"junk")
    server = http_server(data)

    fetch(url_of(server), destination, sha, **FAST)

    assert ranges(server) == [f"bytes={len(data) + 4}-", None]
    assert_verified(destination, data, sha)


def test_404_names_the_url_and_the_kernel_org_layout_and_is_not_retried(tmp_path, http_server):
    server = http_server(b"", [Reply(status=404)])
    destination = tmp_path / NAME

    with pytest.raises(DownloadError) as raised:
        fetch(url_of(server), destination, "0" * 64, **FAST)

    message = str(raised.value)
    assert url_of(server) in message
    assert "HTTP 404" in message
    assert "kernel.org" in message and "/v6.x/linux-" in message
    assert len(server.requests) == 1
    assert [p.name for p in tmp_path.iterdir()] == [".locks"]  # the cache entry's lock file (kept: see locks.py)


@pytest.mark.parametrize("status", [500, 502, 503, 429], ids=["500", "502", "503", "429-too-many"])
def test_server_errors_are_retried_until_the_download_succeeds(tmp_path, http_server, status):
    data, sha = payload()
    server = http_server(data, [Reply(status=status), Reply(status=status), Reply()])
    destination = tmp_path / NAME

    fetch(url_of(server), destination, sha, **FAST)

    assert len(server.requests) == 3
    assert_verified(destination, data, sha)


def test_persistent_server_errors_give_up_after_the_retries_with_growing_backoff(tmp_path, http_server, monkeypatch):
    server = http_server(b"", [Reply(status=500)])
    destination = tmp_path / NAME
    delays: list[float] = []
    monkeypatch.setattr(download.time, "sleep", delays.append)

    with pytest.raises(DownloadError, match=r"after 4 attempts \(last: HTTP 500\)"):
        fetch(url_of(server), destination, "0" * 64, retries=4, timeout=1.0, backoff=0.5)

    assert len(server.requests) == 4
    assert delays == [0.5, 1.0, 2.0]
    assert not destination.exists()


def test_a_refused_connection_is_retried_then_reported(tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v6.x/{NAME}"

    with pytest.raises(DownloadError, match=r"after 3 attempts \(last: ConnectionError") as raised:
        fetch(url, tmp_path / NAME, "0" * 64, **FAST)

    assert url in str(raised.value)


def test_wrong_checksum_names_url_and_both_hashes_and_deletes_the_part(tmp_path, http_server):
    data, actual = payload()
    expected = hashlib.sha256(b"the file versions.toml pins").hexdigest()
    server = http_server(data)
    destination = tmp_path / NAME

    with pytest.raises(ChecksumMismatch) as raised:
        fetch(url_of(server), destination, expected, **FAST)

    message = str(raised.value)
    assert url_of(server) in message
    assert f"expected sha256 {expected}" in message
    assert f"got {actual}" in message
    assert [p.name for p in tmp_path.iterdir()] == [".locks"]


def test_a_stalled_server_times_out_is_retried_and_keeps_the_part_for_the_next_run(tmp_path, http_server):
    data, sha = payload()
    cut = 100_003
    server = http_server(data, [Reply(cut_after=cut), Reply(stall=30)])
    destination = tmp_path / NAME

    started = time.monotonic()
    with pytest.raises(DownloadError, match="ReadTimeout") as raised:
        fetch(url_of(server), destination, sha, retries=3, timeout=0.2, backoff=0.01)
    elapsed = time.monotonic() - started

    assert elapsed < 3, "the timeout did not bound the download"
    assert "is kept" in str(raised.value)
    assert ranges(server) == [None, f"bytes={cut}-", f"bytes={cut}-"]
    assert part_of(destination).read_bytes() == data[:cut]
    assert not destination.exists()

    server.script = [Reply()]  # the next run, against a mirror that answers again
    fetch(url_of(server), destination, sha, **FAST)

    assert ranges(server)[-1] == f"bytes={cut}-"
    assert_verified(destination, data, sha)


def test_a_body_that_stalls_midway_is_retried(tmp_path, http_server):
    data, sha = payload()
    server = http_server(data, [Reply(stall=30, stall_after=50_000), Reply()])
    destination = tmp_path / NAME

    started = time.monotonic()
    fetch(url_of(server), destination, sha, retries=3, timeout=0.2, backoff=0.01)

    assert time.monotonic() - started < 3
    assert len(server.requests) == 2
    assert_verified(destination, data, sha)


def test_a_trickling_mirror_is_cut_off_by_the_minimum_rate_and_the_download_resumes(tmp_path, http_server):
    """A byte every 0.2 s beats a 1 s per-read timeout forever; the minimum rate ends the attempt."""
    data, sha = payload()
    server = http_server(data, [Reply(trickle=0.2, trickle_after=70_000), Reply()])
    destination = tmp_path / NAME
    started = time.monotonic()
    fetch(url_of(server), destination, sha, retries=3, timeout=1.0, backoff=0.01, min_rate=10_000, rate_window=1.0)
    assert time.monotonic() - started < 10
    assert len(server.requests) == 2
    resumed_at = int(str(ranges(server)[1]).removeprefix("bytes=").rstrip("-"))
    assert 65_536 <= resumed_at < len(data)  # it kept what had arrived
    assert_verified(destination, data, sha)


def test_a_mirror_that_only_trickles_gives_up_with_the_rate_in_the_message(tmp_path, http_server):
    data, sha = payload()
    server = http_server(data, [Reply(trickle=0.2)])
    with pytest.raises(DownloadError, match="fewer than 10000 bytes/s over 1s") as raised:
        fetch(url_of(server), tmp_path / NAME, sha, retries=2, timeout=1.0, backoff=0.01, min_rate=10_000,
              rate_window=1.0)
    assert "is kept" in str(raised.value)


def test_file_url_is_copied_and_verified(tmp_path):
    data, sha = payload()
    source = tmp_path / "mirror dir" / "v6.x" / NAME  # the space is %20 in the URL
    source.parent.mkdir(parents=True)
    source.write_bytes(data)
    destination = tmp_path / "downloads" / NAME

    fetch(source.as_uri(), destination, sha, **FAST)

    assert "%20" in source.as_uri()
    assert_verified(destination, data, sha)


def test_missing_file_url_is_a_download_error(tmp_path):
    url = (tmp_path / "mirror" / "v6.x" / NAME).as_uri()
    destination = tmp_path / "downloads" / NAME

    with pytest.raises(DownloadError, match="no such file on the file:// mirror") as raised:
        fetch(url, destination, "0" * 64, **FAST)

    assert url in str(raised.value)
    assert not destination.exists() and not part_of(destination).exists()


def grow(path: Path) -> None:
    with path.open("ab") as handle:
        handle.write(b"x")


@pytest.mark.parametrize(
    ("spoil", "verified"),
    [
        (lambda path, sha: None, True),
        (lambda path, sha: grow(path), False),
        (lambda path, sha: verified_marker(path).unlink(), False),
        (lambda path, sha: path.unlink(), False),
        (lambda path, sha: verified_marker(path).write_text(f"{'f' * 64} {path.stat().st_size}\n"), False),
        (lambda path, sha: verified_marker(path).write_text("garbage\n"), False),
    ],
    ids=["fresh", "size-changed", "no-marker", "no-file", "other-sha", "garbled-marker"],
)
def test_is_verified_trusts_the_marker_only_for_the_same_sha_and_size(tmp_path, spoil, verified):
    data, sha = payload(1000)
    source = tmp_path / "source.tar.xz"
    source.write_bytes(data)
    destination = tmp_path / NAME
    fetch(source.as_uri(), destination, sha, **FAST)

    spoil(destination, sha)

    assert is_verified(destination, sha) is verified


def test_a_file_whose_size_changed_is_downloaded_again(tmp_path, http_server):
    data, sha = payload()
    server = http_server(data)
    destination = tmp_path / NAME
    fetch(url_of(server), destination, sha, **FAST)
    grow(destination)

    fetch(url_of(server), destination, sha, **FAST)

    assert len(server.requests) == 2
    assert_verified(destination, data, sha)
