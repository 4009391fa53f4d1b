"""The signature's time, which the freshness check rests on: read from real gpgv output, refused when missing."""

from __future__ import annotations

import calendar
import dataclasses
import os
import re
import shutil
import time

import pytest

from _signedmirror import fixture_old_key, fixture_signing_key  # noqa: F401 - pytest fixtures, used by name
from ktailor.sources import signature
from ktailor.sources.releases import MAX_AGE_ENV, StaleSource, check_signed_recently
from ktailor.sources.signature import SignatureError, read_verdict, run_gpgv, signature_time, verify_clearsigned

URL = "http://mirror.example/pub/linux/kernel/v6.x/sha256sums.asc"
SIGNED_AT = "20240101T120000"  # what old_key's clock says when it signs
SIGNED_AT_UNIX = calendar.timegm((2024, 1, 1, 12, 0, 0))


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("KTAILOR_QUIET", "1")


@pytest.fixture(name="real_run")
def fixture_real_run(old_key) -> signature.GpgvRun:
    """gpgv's own output for a good signature made at SIGNED_AT."""
    run = run_gpgv(old_key.clearsign(f"{'a' * 64}  linux-6.1.5.tar.xz\n", at=SIGNED_AT), old_key.keyring)
    assert run.returncode == 0 and "[GNUPG:] GOODSIG" in run.status, run.human
    return run


def validsig_line(run: signature.GpgvRun) -> str:
    return next(line for line in run.status.splitlines() if line.startswith("[GNUPG:] VALIDSIG "))


def doctored(run: signature.GpgvRun, change) -> signature.GpgvRun:
    """`run` with its VALIDSIG fields (after the keyword) passed through `change`."""
    line = validsig_line(run)
    fields = line.removeprefix("[GNUPG:] VALIDSIG ").split()
    return dataclasses.replace(run, status=run.status.replace(line, " ".join(["[GNUPG:] VALIDSIG", *change(fields)])))


def test_the_time_of_a_real_signature_is_read_from_gpgvs_validsig(real_run, old_key):
    verified = read_verdict(real_run, old_key.keyring, old_key.fingerprint, source=URL)

    assert verified.signed_at == SIGNED_AT_UNIX
    assert verified.primary == old_key.fingerprint
    assert verified.body == f"{'a' * 64}  linux-6.1.5.tar.xz\n"
    fields = validsig_line(real_run).split()[2:]
    assert fields[1:3] == ["2024-01-01", str(SIGNED_AT_UNIX)], "gpgv's VALIDSIG layout is not the one signature_time reads"


def test_an_iso_8601_timestamp_is_read_too(real_run, old_key):
    """GnuPG's DETAILS allows VALIDSIG's timestamp as YYYYMMDDTHHMMSS."""
    run = doctored(real_run, lambda f: [*f[:2], SIGNED_AT, *f[3:]])
    assert read_verdict(run, old_key.keyring, old_key.fingerprint, source=URL).signed_at == SIGNED_AT_UNIX


NO_USABLE_TIME = {
    "timestamp-removed": lambda f: [*f[:2], *f[3:]],
    "timestamp-zero": lambda f: [*f[:2], "0", *f[3:]],
    "timestamp-garbled": lambda f: [*f[:2], "17041x4400", *f[3:]],
    "timestamp-negative": lambda f: [*f[:2], "-1", *f[3:]],
    "iso-timestamp-impossible": lambda f: [*f[:2], "20241301T120000", *f[3:]],
    "date-and-timestamp-removed": lambda f: [f[0], *f[3:]],
    "date-disagrees-with-timestamp": lambda f: [f[0], "2023-06-01", *f[2:]],
    "only-the-fingerprints": lambda f: [f[0], f[-1]],
}


@pytest.mark.parametrize("change", list(NO_USABLE_TIME.values()), ids=list(NO_USABLE_TIME))
def test_a_good_signature_without_a_usable_time_is_refused(real_run, old_key, change):
    run = doctored(real_run, change)
    assert "[GNUPG:] GOODSIG" in run.status and run.returncode == 0  # everything else still says good

    with pytest.raises(SignatureError) as raised:
        read_verdict(run, old_key.keyring, old_key.fingerprint, source=URL)

    message = str(raised.value)
    assert message.startswith(f"{URL}: ")
    assert "no usable time" in message and "stale or replayed" in message and "refusing it" in message
    assert "\n" not in message


def test_an_empty_validsig_line_is_refused_not_a_crash(real_run, old_key):
    run = doctored(real_run, lambda f: [])
    with pytest.raises(SignatureError, match="VALIDSIG status line names no key"):
        read_verdict(run, old_key.keyring, old_key.fingerprint, source=URL)


def test_signature_time_reads_the_fields_gpgv_writes():
    assert signature_time(["F" * 40, "2024-01-01", str(SIGNED_AT_UNIX), "0"], source=URL) == SIGNED_AT_UNIX
    with pytest.raises(SignatureError, match=re.escape(f"{URL}: gpgv reports a good signature but no usable time")):
        signature_time(["F" * 40], source=URL)


@pytest.mark.parametrize("replacement", ["", "garbled "], ids=["timestamp-removed", "timestamp-garbled"])
def test_verify_clearsigned_refuses_a_gpgv_whose_status_lines_lose_the_time(signing_key, tmp_path, monkeypatch,
                                                                              replacement):
    """The whole path, with a gpgv whose VALIDSIG timestamp is lost on its way out."""
    real = shutil.which("gpgv")
    assert real
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "gpgv").write_text(f"#!/bin/sh\n'{real}' \"$@\" | sed -E 's/^(\\[GNUPG:\\] VALIDSIG [0-9A-F]+ [0-9-]+) "
                                   f"[0-9]+ /\\1 {replacement}/'\n")
    (fake_bin / "gpgv").chmod(0o755)
    signed = signing_key.clearsign("x\n")
    assert verify_clearsigned(signed, signing_key.keyring, signing_key.fingerprint, source=URL).signed_at > 0
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")

    with pytest.raises(SignatureError, match="no usable time"):
        verify_clearsigned(signed, signing_key.keyring, signing_key.fingerprint, source=URL)


# --- releases.check_signed_recently -------------------------------------------------------------------
@pytest.mark.parametrize("signed_at", [None, 0], ids=["no-time", "zero"])
def test_the_freshness_check_refuses_a_signature_without_a_time(signed_at):
    with pytest.raises(StaleSource) as raised:
        check_signed_recently(signed_at, URL, env={}, now=time.time())
    message = str(raised.value)
    assert message.startswith(f"{URL}: its signature carries no signing time") and MAX_AGE_ENV in message
    assert "\n" not in message


def test_the_freshness_check_passes_a_recent_signature_and_refuses_an_old_one():
    now = time.time()
    check_signed_recently(int(now - 86400), URL, env={}, now=now)
    with pytest.raises(StaleSource, match="signed 40 days ago"):
        check_signed_recently(int(now - 40 * 86400), URL, env={}, now=now)


def test_with_no_age_bound_the_freshness_check_asks_nothing():
    check_signed_recently(None, URL, env={MAX_AGE_ENV: "0"}, now=time.time())

