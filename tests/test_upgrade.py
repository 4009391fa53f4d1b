"""`upgrade` against a kernel.org-style mirror on 127.0.0.1 whose sha256sums.asc a throwaway key signs.

The fake kernel tree makes the pre-flight (download → extract → config → audit through the real
doit graph) take a second, so these tests run the whole flow, not a mock of it.
"""

from __future__ import annotations

import subprocess

import pytest

from _signedmirror import (  # noqa: F401 - the fixture_* are pytest fixtures, used by name
    FarmBase,
    KernelMirror,
    fixture_served_mirror,
    fixture_signing_key,
    fixture_stranger_key,
    install_dodo,
    use_mirror,
    write_versions,
)
from ktailor.commands.runner import run_doit
from ktailor.commands.upgrade import rewrite_versions, upgrade
from ktailor.core.errors import ChecksumMismatch, DownloadError, InputError
from ktailor.sources.signature import (
    AUTOSIGNER_FINGERPRINT,
    SignatureError,
    checksum_for,
    export_pinned_key,
    unverified_body,
    verify_clearsigned,
)


class Farm(FarmBase):
    def upgrade(self, version: str | None = "6.1.5", **kwargs):
        kwargs.setdefault("expected_fingerprint", self.mirror.key.fingerprint)
        return upgrade(self.root, version, **kwargs)


@pytest.fixture
def farm(project_factory, served_mirror, monkeypatch) -> Farm:
    project = project_factory()
    old_sha = project.kernel("6.1.4")
    project.kernel("6.1.5")
    served_mirror.sign_sums()
    served_mirror.releases(("longterm", "6.1.5", False), ("longterm", "6.6.70", False), ("stable", "6.13.2", False))
    write_versions(project.root, served_mirror.url, "6.1.4", old_sha, ["x86_64-micro"])
    install_dodo(project.root)
    use_mirror(monkeypatch, served_mirror)
    return Farm(project.root, served_mirror, old_sha)


def test_signed_upgrade_rewrites_entry_keeps_comments_and_runs_preflight(farm, capsys):
    result = farm.upgrade("6.1.5")

    text = farm.versions.read_text()
    assert result.written and result.ok
    assert result.sha256 == farm.tarball_sha("6.1.5")
    assert f'sha256 = "{farm.tarball_sha("6.1.5")}"' in text
    assert 'version = "6.1.5"   # bumped by `invoke upgrade`' in text  # the trailing comment too
    assert "# The test farm's kernels. This comment must survive an upgrade." in text
    assert "# 6.1: the longterm series the guests need." in text
    assert 'default = "6.1.5"' in text and "6.1.4" not in text
    assert result.default_moved and "signature verified" in result.signature
    # The pre-flight configured the new version through doit, before any build.
    audit = farm.root.parent / "build" / "6.1.5" / "x86_64-micro" / "audit.json"
    assert audit.is_file() and result.preflight is not None and result.preflight.ok
    assert not (farm.root.parent / "build" / "6.1.5" / "x86_64-micro" / "kbuild" / "vmlinux").exists()
    assert "pre-flight 6.1.4 → 6.1.5" in capsys.readouterr().out


def test_explicit_keyring_argument_is_used(farm, monkeypatch):
    monkeypatch.setenv("KTAILOR_KEYRING", "/nonexistent/keyring.gpg")
    result = farm.upgrade("6.1.5", keyring=farm.mirror.key.keyring, dry_run=True)
    assert result.needed and "signature verified" in result.signature


def test_tampered_signed_body_is_refused_and_versions_untouched(farm):
    path = farm.mirror.folder() / "sha256sums.asc"
    signed = path.read_text()
    sha = farm.tarball_sha("6.1.5")
    path.write_text(signed.replace(sha, sha[:10] + ("0" if sha[10] != "0" else "1") + sha[11:]))  # one byte
    before = farm.versions.read_bytes()

    with pytest.raises(SignatureError, match="BAD signature"):
        farm.upgrade("6.1.5")
    assert farm.versions.read_bytes() == before


def test_correctly_signed_wrong_checksum_is_refused_at_download(farm):
    wrong = farm.mirror.real_sums().replace(farm.tarball_sha("6.1.5"), "0" * 64)
    farm.mirror.sign_sums(body=wrong)
    before = farm.versions.read_bytes()

    with pytest.raises(ChecksumMismatch, match="checksum mismatch"):
        farm.upgrade("6.1.5")
    assert farm.versions.read_bytes() == before
    assert not list((farm.root.parent / "cache" / "downloads").glob("linux-6.1.5.tar.xz*"))


def test_signature_by_a_key_outside_the_keyring_is_refused(farm, stranger_key):
    farm.mirror.sign_sums(key=stranger_key)
    before = farm.versions.read_bytes()
    with pytest.raises(SignatureError, match=f"signed by key {stranger_key.fingerprint[-16:]}, which is not in the keyring"):
        farm.upgrade("6.1.5")
    assert farm.versions.read_bytes() == before


def test_good_signature_by_an_unpinned_key_is_refused(farm):
    with pytest.raises(SignatureError, match=f"not by the pinned signer {AUTOSIGNER_FINGERPRINT}"):
        upgrade(farm.root, "6.1.5")  # expected_fingerprint defaults to the kernel.org autosigner's
    assert "6.1.5" not in farm.versions.read_text()


def test_insecure_skip_signature_uses_the_unsigned_checksums(farm, capsys):
    (farm.mirror.folder() / "sha256sums.asc").unlink()
    (farm.mirror.folder() / "sha256sums").write_text(farm.mirror.real_sums())  # what `python -m ktailor.sources.mirror` writes

    with pytest.raises(DownloadError, match=r"sha256sums\.asc does not exist"):
        farm.upgrade("6.1.5", dry_run=True)
    result = farm.upgrade("6.1.5", insecure_skip_signature=True, preflight=False)
    assert result.written and result.sha256 == farm.tarball_sha("6.1.5")
    assert "NOT VERIFIED" in result.signature
    assert "--insecure-skip-signature" in capsys.readouterr().err


def test_downgrade_needs_allow_downgrade(farm):
    farm.mirror.sign_sums(body=farm.mirror.real_sums() + f"{'3' * 64}  linux-6.1.3.tar.xz\n")
    with pytest.raises(InputError, match=r"older than the tracked 6\.1\.4.*--allow-downgrade") as caught:
        farm.upgrade("6.1.3")
    assert caught.value.line == 9  # versions.toml:9 is the entry's version line
    result = farm.upgrade("6.1.3", allow_downgrade=True, dry_run=True)
    assert result.needed and not result.written


def test_other_series_needs_allow_series_change(farm, capsys):
    farm.mirror.sign_sums(body=farm.mirror.real_sums() + f"{'6' * 64}  linux-6.6.70.tar.xz\n")
    with pytest.raises(InputError, match=r"series 6\.6.*--allow-series-change"):
        farm.upgrade("6.6.70")
    result = farm.upgrade("6.6.70", allow_series_change=True, dry_run=True)
    assert result.needed and result.new_version == "6.6.70" and result.old_version == "6.1.4"
    assert '+version = "6.6.70"' in capsys.readouterr().out


def test_dry_run_changes_nothing_and_prints_the_diff(farm, capsys):
    before = farm.versions.read_bytes()
    result = farm.upgrade("6.1.5", dry_run=True)

    assert result.needed and not result.written and result.preflight is None
    assert farm.versions.read_bytes() == before
    assert not (farm.root.parent / "cache" / "downloads" / "linux-6.1.5.tar.xz").exists()
    out = capsys.readouterr().out
    assert '-version = "6.1.4"' in out and '+version = "6.1.5"' in out and "nothing written" in out


def test_latest_takes_newest_point_release_from_releases_json(farm):
    result = farm.upgrade(None, latest=True, dry_run=True)
    assert result.new_version == "6.1.5"


def test_latest_falls_back_to_mirror_listing_when_series_not_in_releases_json(farm, capsys):
    farm.mirror.releases(("longterm", "6.6.70", False))
    result = farm.upgrade(None, latest=True, dry_run=True)
    assert result.new_version == "6.1.5"
    assert "no longer lists series 6.1" in capsys.readouterr().err


@pytest.mark.parametrize("releases", ["stale", "unreachable"])
def test_latest_never_falls_back_to_the_unsigned_listing_when_releases_json_cannot_be_trusted(farm, releases):
    if releases == "stale":
        farm.mirror.releases(("longterm", "6.1.5", False), age_days=60)
    else:
        (farm.mirror.directory / "releases.json").unlink()
    before = farm.versions.read_bytes()
    with pytest.raises(DownloadError, match="listing is not used instead"):
        farm.upgrade(None, latest=True, dry_run=True)
    assert farm.versions.read_bytes() == before


def test_latest_when_already_newest_does_nothing(farm):
    farm.mirror.releases(("longterm", "6.1.4", False))
    result = farm.upgrade(None, latest=True)
    assert not result.needed and not result.written


def test_version_missing_from_signed_list_is_bad_input(farm):
    with pytest.raises(InputError, match=r"lists no linux-6\.1\.9\.tar\.xz"):
        farm.upgrade("6.1.9")


def test_preflight_reports_options_that_no_longer_land_before_building(project_factory, served_mirror, monkeypatch, capsys):
    project = project_factory()
    old_sha = project.kernel("6.1.4", unsupported="X86_THING\n")  # the old kernel could not do X86_THING…
    project.kernel("6.1.5", unsupported="VIRTIO_MMIO\n")  # …the new one does, but drops VIRTIO_MMIO
    served_mirror.sign_sums()
    versions = write_versions(project.root, served_mirror.url, "6.1.4", old_sha, ["x86_64-micro"])
    install_dodo(project.root)
    use_mirror(monkeypatch, served_mirror)
    run_doit(project.root, "config:x86_64-micro")  # the old version's audit.json, as a previous `doit` left it
    capsys.readouterr()

    result = upgrade(project.root, "6.1.5", expected_fingerprint=served_mirror.key.fingerprint)

    assert result.written and not result.ok  # versions.toml stays upgraded; the report says how to go back
    assert 'version = "6.1.5"' in versions.read_text()
    (target,) = result.preflight.targets
    assert target.compared_with == "6.1.4"
    assert [d["symbol"] for d in target.no_longer_land] == ["VIRTIO_MMIO"]
    assert [d["symbol"] for d in target.now_land] == ["X86_THING"]
    captured = capsys.readouterr()
    assert "no longer lands: CONFIG_VIRTIO_MMIO requested y, final n (fragments/micro.conf:" in captured.out
    assert "lands now:       CONFIG_X86_THING" in captured.out
    assert f'sha256 = "{old_sha}"' in captured.err  # the revert hint names the old entry
    assert not (project.root.parent / "build" / "6.1.5" / "x86_64-micro" / "build.log").exists()


def test_preflight_flags_a_lost_must_stay_default_that_no_audit_sees(project_factory, served_mirror, monkeypatch,
                                                                    capsys):
    project = project_factory()
    project.must_stay()
    # nobody requests FUTEX or STACKTRACE: the old kernel's defaults give both, the new one's only STACKTRACE
    old_sha = project.kernel("6.1.4", defaults="CONFIG_FUTEX=y\nCONFIG_STACKTRACE=y\nCONFIG_GONE=y\n")
    project.kernel("6.1.5", defaults="# CONFIG_FUTEX is not set\nCONFIG_STACKTRACE=y\nCONFIG_NEW_DEFAULT=y\n")
    served_mirror.sign_sums()
    write_versions(project.root, served_mirror.url, "6.1.4", old_sha, ["x86_64-micro"])
    install_dodo(project.root)
    use_mirror(monkeypatch, served_mirror)
    run_doit(project.root, "config:x86_64-micro")
    capsys.readouterr()

    result = upgrade(project.root, "6.1.5", expected_fingerprint=served_mirror.key.fingerprint)

    (target,) = result.preflight.targets
    assert target.audit == "passed" and not target.no_longer_land  # the audit of requests sees nothing…
    assert target.drift_errors == 1 and not result.ok  # …the whole-config comparison does
    assert [(c.symbol, c.kind) for c in target.drift] == [("FUTEX", "lost"), ("GONE", "removed"), ("NEW_DEFAULT", "added")]
    assert [m.symbol for m in target.must_stay_missing] == ["FUTEX"]
    out = capsys.readouterr().out
    assert "PROBLEMS" in out and "E: CONFIG_FUTEX is off on 6.1.5 but must stay on (fragments/must-stay.toml:2)" in out
    assert "(top level): FUTEX y→n" in out


# --- signature.py as units ----------------------------------------------------------------------------
def test_rewrite_keeps_inline_comments_and_moves_default():
    text = 'default = "6.1.4"  # the default\n\n[[kernel]]\nversion = "6.1.4"  # pin\nsha256 = "aa"  # from .asc\n'
    assert rewrite_versions(text, "6.1.4", "6.1.5", "bb") == (
        'default = "6.1.5"  # the default\n\n[[kernel]]\nversion = "6.1.5"  # pin\nsha256 = "bb"  # from .asc\n', True)


def test_checksum_is_read_from_the_signed_text_only(signing_key):
    signed = signing_key.clearsign(f"{'a' * 64}  linux-6.1.5.tar.xz\n")
    forged = signed + f"{'b' * 64}  linux-6.1.6.tar.xz\n".encode()  # appended outside the signature
    verified = verify_clearsigned(forged, signing_key.keyring, signing_key.fingerprint, source="test")
    assert checksum_for(verified.body, "linux-6.1.5.tar.xz") == "a" * 64
    assert checksum_for(verified.body, "linux-6.1.6.tar.xz") is None
    assert checksum_for(unverified_body(signed.decode()), "linux-6.1.5.tar.xz") == "a" * 64


def test_armored_keyring_is_accepted(signing_key, tmp_path):
    armored = tmp_path / "key.asc"
    armored.write_bytes(subprocess.run(["gpg", "--homedir", str(signing_key.home), "--batch", "--armor", "--export",
                                        signing_key.fingerprint], capture_output=True, check=True).stdout)
    verified = verify_clearsigned(signing_key.clearsign("x\n"), armored, signing_key.fingerprint, source="test")
    assert verified.primary == signing_key.fingerprint


def test_fetched_key_is_kept_only_when_its_fingerprint_is_pinned(signing_key, tmp_path):
    destination = tmp_path / "kernel.org-autosigner.gpg"
    with pytest.raises(SignatureError, match=f"not the pinned {AUTOSIGNER_FINGERPRINT}"):
        export_pinned_key(signing_key.home, AUTOSIGNER_FINGERPRINT, destination)
    assert not destination.exists()

    export_pinned_key(signing_key.home, signing_key.fingerprint, destination)
    verified = verify_clearsigned(signing_key.clearsign("x\n"), destination, signing_key.fingerprint, source="test")
    assert verified.signer == signing_key.fingerprint


def test_missing_keyring_is_bad_input(signing_key, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        verify_clearsigned(signing_key.clearsign("x\n"), tmp_path / "none.gpg", signing_key.fingerprint, source="test")


def test_unsigned_file_is_refused(signing_key):
    with pytest.raises(SignatureError, match="not a valid clear-signed OpenPGP message"):
        verify_clearsigned(b"a" * 64 + b"  linux-6.1.5.tar.xz\n", signing_key.keyring, signing_key.fingerprint, source="t")
