"""A kernel.org-style mirror for the upgrade and security-update tests, served on 127.0.0.1.

A throwaway OpenPGP key (made once per session in its own GNUPGHOME) clear-signs each
v<major>.x/sha256sums.asc as kernel.org's autosigner does; releases.json sits at the mirror's root.
The tarballs are the fake kernel tree of tests/fakelinux (conftest.fake_tarball).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from ktailor.sources.mirror import QuietHandler

REPO = Path(__file__).resolve().parents[1]

def install_dodo(root: Path) -> Path:
    """Copy the project's real dodo.py (every real stage, boot included) into a test project."""
    dodo = root / "dodo.py"
    dodo.write_text((REPO / "dodo.py").read_text())
    return dodo


@dataclass(frozen=True)
class SigningKey:
    home: Path
    fingerprint: str
    keyring: Path  # binary export, for gpgv --keyring

    def clearsign(self, text: str, at: str | None = None) -> bytes:
        """`at`: sign as if the clock said this (gpg --faked-system-time, e.g. 20240101T000000)."""
        faked = ["--faked-system-time", at, "--ignore-time-conflict"] if at else []
        return subprocess.run(["gpg", "--homedir", str(self.home), "--batch", "--yes", *faked, "--local-user",
                               self.fingerprint, "--clearsign"], input=text.encode(), capture_output=True,
                              check=True).stdout


def make_key(name: str, created: str | None = None) -> SigningKey:
    """`created`: make the key as if the clock said this (so it can sign as of then), e.g. 20230101T000000."""
    # A short path: gpg-agent's socket lives in the home and socket paths are limited to ~100 bytes.
    home = Path(tempfile.mkdtemp(prefix="kt-gpg-"))
    home.chmod(0o700)
    faked = ["--faked-system-time", created] if created else []
    subprocess.run(["gpg", "--homedir", str(home), "--batch", *faked, "--passphrase", "", "--quick-gen-key",
                    f"{name} <{name}@example.invalid>", "ed25519", "sign", "never"], capture_output=True, check=True)
    colons = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--with-colons", "--fingerprint"],
                            capture_output=True, text=True, check=True).stdout
    fingerprint = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))
    keyring = home / "keyring.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--homedir", str(home), "--batch", "--export", fingerprint],
                                       capture_output=True, check=True).stdout)
    return SigningKey(home, fingerprint, keyring)


def drop_key(key: SigningKey) -> None:
    subprocess.run(["gpgconf", "--homedir", str(key.home), "--kill", "all"], capture_output=True, check=False)
    shutil.rmtree(key.home, ignore_errors=True)


@pytest.fixture(scope="session", name="signing_key")
def fixture_signing_key() -> Iterator[SigningKey]:
    """The test's stand-in for the kernel.org checksum autosigner."""
    key = make_key("autosigner")
    yield key
    drop_key(key)


@pytest.fixture(scope="session", name="old_key")
def fixture_old_key() -> Iterator[SigningKey]:
    """A trusted key made in 2023, so that it can sign a checksum file as of 2024 (a replayed one)."""
    key = make_key("autosigner-2023", created="20230101T000000")
    yield key
    drop_key(key)


@pytest.fixture(scope="session", name="stranger_key")
def fixture_stranger_key() -> Iterator[SigningKey]:
    """A key nobody trusts."""
    key = make_key("stranger")
    yield key
    drop_key(key)


class KernelMirror:
    """<directory>/v6.x/{linux-*.tar.xz, sha256sums.asc} and <directory>/releases.json, over HTTP."""

    def __init__(self, directory: Path, key: SigningKey, url: str) -> None:
        self.directory, self.key, self.url = directory, key, url

    def folder(self, major: str = "6") -> Path:
        return self.directory / f"v{major}.x"

    def real_sums(self, major: str = "6") -> str:
        tarballs = sorted(self.folder(major).glob("linux-*.tar.xz"))
        lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in tarballs]
        return "\n".join(lines) + "\n"

    def sign_sums(self, major: str = "6", body: str | None = None, key: SigningKey | None = None,
                  at: str | None = None) -> Path:
        """Write v<major>.x/sha256sums.asc: the real checksums (or `body`), clear-signed (at time `at`)."""
        path = self.folder(major) / "sha256sums.asc"
        path.write_bytes((key or self.key).clearsign(self.real_sums(major) if body is None else body, at))
        return path

    def publish_key(self) -> str:
        """Serve the signing key as a key file (what KTAILOR_AUTOSIGNER_KEY_URL points at); returns its URL."""
        shutil.copy(self.key.keyring, self.directory / "autosigner.gpg")
        return f"{self.url}/autosigner.gpg"

    def releases(self, *entries: tuple[str, str, bool], age_days: float = 2) -> Path:
        """releases.json with (moniker, version, iseol) entries, in kernel.org's format, released `age_days` ago."""
        stamp = int(time.time() - age_days * 86400)
        released = {"timestamp": stamp, "isodate": time.strftime("%Y-%m-%d", time.gmtime(stamp))}
        releases = [{"moniker": moniker, "version": version, "iseol": eol, "source": None, "pgp": None,
                     "released": released} for moniker, version, eol in entries]
        releases.append({"moniker": "linux-next", "version": "next-20250101", "iseol": False})
        releases.insert(0, {"moniker": "mainline", "version": "6.14-rc1", "iseol": False})
        path = self.directory / "releases.json"
        path.write_text(json.dumps({"latest_stable": {"version": "6.13.2"}, "releases": releases}))
        return path

    @property
    def releases_url(self) -> str:
        return f"{self.url}/releases.json"


@pytest.fixture(name="served_mirror")
def fixture_served_mirror(tmp_path: Path, signing_key: SigningKey) -> Iterator[KernelMirror]:
    directory = tmp_path / "project" / "mirror"  # where conftest's ProjectFactory.kernel() puts tarballs
    directory.mkdir(parents=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(directory)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield KernelMirror(directory, signing_key, f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()
    server.server_close()


def dead_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


VERSIONS_TOML = """\
# The test farm's kernels. This comment must survive an upgrade.
mirror = "{mirror}"

# The kernel bare task names mean.
default = "{version}"

[[kernel]]
# 6.1: the longterm series the guests need.
version = "{version}"   # bumped by `invoke upgrade`
sha256 = "{sha256}"
targets = [{targets}]
"""


def write_versions(root: Path, mirror_url: str, version: str, sha256: str, targets: list[str]) -> Path:
    path = root / "versions.toml"
    path.write_text(VERSIONS_TOML.format(mirror=mirror_url, version=version, sha256=sha256,
                                         targets=", ".join(f'"{t}"' for t in targets)))
    return path


def use_mirror(monkeypatch: pytest.MonkeyPatch, mirror: KernelMirror) -> None:
    """Point ktailor (and the doit subprocesses, which inherit the environment) at the served mirror."""
    monkeypatch.setenv("KTAILOR_MIRROR", mirror.url)
    monkeypatch.setenv("KTAILOR_KEYRING", str(mirror.key.keyring))
    monkeypatch.setenv("KTAILOR_RELEASES_URL", mirror.releases_url)


@dataclass
class FarmBase:
    """A test project served by a signed mirror: what upgrade and security-update tests share."""

    root: Path
    mirror: KernelMirror
    old_sha: str

    @property
    def versions(self) -> Path:
        return self.root / "versions.toml"

    def tarball_sha(self, version: str) -> str:
        """Computed from the file the mirror serves."""
        return hashlib.sha256((self.mirror.folder() / f"linux-{version}.tar.xz").read_bytes()).hexdigest()


UNIT = REPO / "contrib" / "ktailor-security-update.service"


@dataclass(frozen=True)
class UnitRun:
    argv: list[str]
    env: dict[str, str]
    cwd: Path


def unit_run(paths: dict[str, Path], extra_env: dict[str, str]) -> UnitRun:
    """ExecStart, Environment= and WorkingDirectory= of the shipped systemd unit, with its machine paths
    (/opt/ktailor, /var/lib/ktailor, …) moved to `paths`; `extra_env` is what a farm's drop-in adds."""
    def moved(value: str) -> str:
        for old in sorted(paths, key=len, reverse=True):
            value = value.replace(old, str(paths[old]))
        return value

    env: dict[str, str] = {}
    argv: list[str] = []
    cwd = Path("/")
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = moved(value)
        elif line.startswith("ExecStart="):
            argv = [moved(arg) for arg in shlex.split(line.removeprefix("ExecStart="))]
        elif line.startswith("WorkingDirectory="):
            cwd = Path(moved(line.removeprefix("WorkingDirectory=")))
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return UnitRun(argv, keep | env | extra_env, cwd)
