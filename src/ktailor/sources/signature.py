"""Check kernel.org's signed checksum files: a clear-signed sha256sums.asc, verified with gpgv.

kernel.org publishes <mirror>/v6.x/sha256sums.asc, a clear-signed OpenPGP message signed by its
checksum autosigner. gpgv checks it against one keyring file; the signer's fingerprint must also
equal the pinned one (a keyring can hold any key, the pin says which one we trust). Only the text
gpgv reports as signed is used: lines outside the signature never reach the checksum lookup. The
signature's time (VALIDSIG) is required too: the freshness check against replayed files rests on it.

Where no keyring exists yet, the key is fetched the way kernel.org documents
(`gpg --locate-keys autosigner@kernel.org`, over WKD) into a throwaway GNUPGHOME and kept only if
its fingerprint is the pinned one.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from ktailor.core.errors import DownloadError, EnvironmentProblem, InputError, VerificationFailed
from ktailor.core.progress import info

# The kernel.org checksum autosigner (https://www.kernel.org/signature.html).
AUTOSIGNER_UID = "autosigner@kernel.org"
AUTOSIGNER_FINGERPRINT = "B8868C80BA62A1FFFAF5FDA9632D3A06589DA6B1"
KEYRING_ENV = "KTAILOR_KEYRING"
# Where to fetch the key from instead of WKD (an internal mirror of it, or a file:// path for offline farms):
# an armored or binary OpenPGP key; it is kept only if its fingerprint is the pinned one, as over WKD.
KEY_URL_ENV = "KTAILOR_AUTOSIGNER_KEY_URL"
# A farm whose internal mirror re-signs sha256sums.asc with its own key pins that key instead.
FINGERPRINT_ENV = "KTAILOR_AUTOSIGNER_FINGERPRINT"


def pinned_fingerprint(env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    value = normalize_fingerprint(env.get(FINGERPRINT_ENV, "")) or AUTOSIGNER_FINGERPRINT
    if not re.fullmatch(r"[0-9A-F]{40}", value):
        raise InputError(f"{FINGERPRINT_ENV}={env.get(FINGERPRINT_ENV)!r} is not an OpenPGP v4 fingerprint (40 hex "
                         "digits); unset it to pin the kernel.org autosigner.")
    return value
SIGNED_HEADER = "-----BEGIN PGP SIGNED MESSAGE-----"
SIGNATURE_HEADER = "-----BEGIN PGP SIGNATURE-----"
SHA256_LINE_RE = re.compile(r"^(?P<sha>[0-9a-f]{64})\s+\*?(?P<name>\S+)$")


class SignatureError(VerificationFailed):
    """A checksum file is not signed by the key we trust (bad, missing, or another key's signature)."""


@dataclass(frozen=True)
class Verified:
    body: str  # the signed text, exactly as gpgv reports it
    signer: str  # fingerprint of the signing key
    primary: str  # fingerprint of its primary key
    signed_at: int  # Unix time of the signature (VALIDSIG); never missing: see signature_time


def default_keyring(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(KEYRING_ENV):
        return Path(env[KEYRING_ENV]).expanduser()
    config = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "ktailor" / "kernel.org-autosigner.gpg"


def normalize_fingerprint(fingerprint: str) -> str:
    return fingerprint.replace(" ", "").upper()


def verify_clearsigned(signed: bytes, keyring: Path, expected_fingerprint: str, *, source: str) -> Verified:
    """Verify a clear-signed message with gpgv against `keyring`; return its signed body."""
    return read_verdict(run_gpgv(signed, keyring), keyring, expected_fingerprint, source=source)


@dataclass(frozen=True)
class GpgvRun:
    """What gpgv said about one message; only `status` (its --status-fd lines) decides anything."""
    status: str
    human: str  # its stderr, quoted in errors
    returncode: int
    body: str  # the text it wrote out as signed


def run_gpgv(signed: bytes, keyring: Path) -> GpgvRun:
    if not keyring.is_file():
        raise InputError(f"keyring {keyring} does not exist; pass the kernel.org autosigner's key as a keyring file "
                         f"(gpg --export {AUTOSIGNER_FINGERPRINT} > {keyring}) or set ${KEYRING_ENV}.")
    if shutil.which("gpgv") is None:
        raise EnvironmentProblem("gpgv is not installed, so the signature of kernel.org's checksums cannot be checked; "
                                 "install it (apt install gpgv).")
    with tempfile.TemporaryDirectory(prefix="ktailor-gpgv-") as scratch:
        work = Path(scratch)
        (work / "home").mkdir(mode=0o700)
        try:
            binary = _binary_keyring(keyring, work)
        except (OSError, ValueError) as exc:
            raise InputError(f"keyring {keyring} is not an OpenPGP keyring gpgv can read ({exc}); replace it with the "
                             f"kernel.org autosigner's key (gpg --export {AUTOSIGNER_FINGERPRINT} > {keyring}), or delete "
                             "it so ktailor fetches the key again.") from None
        body_file = work / "body"
        # Input on stdin: given a file name, gpgv would also look for a detached-signature partner beside it.
        result = subprocess.run(
            ["gpgv", "--homedir", str(work / "home"), "--keyring", str(binary),
             "--status-fd", "1", "--output", str(body_file), "-"],
            input=signed, capture_output=True, check=False,
        )
        body = body_file.read_text(errors="replace") if body_file.is_file() else ""
    return GpgvRun(status=result.stdout.decode(errors="replace"), human=result.stderr.decode(errors="replace").strip(),
                   returncode=result.returncode, body=body)


def read_verdict(run: GpgvRun, keyring: Path, expected_fingerprint: str, *, source: str) -> Verified:
    """The signed body, signer and signature time from gpgv's status lines; SignatureError unless they show one
    good signature by the pinned key, made at a time they state."""
    expected = normalize_fingerprint(expected_fingerprint)
    status = _status_lines(run.status)
    _check_status(status, returncode=run.returncode, human=run.human, keyring=keyring, expected=expected, source=source)
    validsig = status["VALIDSIG"][0].split()
    return Verified(body=run.body, signer=validsig[0], primary=validsig[-1],
                    signed_at=signature_time(validsig, source=source))


def signature_time(validsig: list[str], *, source: str) -> int:
    """The signature's Unix time from the fields of gpgv's VALIDSIG line
    (`<fpr> <YYYY-MM-DD> <timestamp> <expires> <version> <reserved> <pk-algo> <hash-algo> <class> <primary-fpr>`).

    The freshness check rests on this time, so a line without one is refused, not waved through: the
    timestamp (seconds since the epoch, or ISO 8601 `YYYYMMDDTHHMMSS` as GnuPG's DETAILS allows) must be
    after 1970 and fall on the date beside it, which gpgv writes in UTC; a field dropped or shifted fails that.
    """
    date = validsig[1] if len(validsig) > 1 else ""
    stamp = validsig[2] if len(validsig) > 2 else ""
    seconds: int | None = None
    if stamp.isdigit():
        seconds = int(stamp)
    elif re.fullmatch(r"\d{8}T\d{6}", stamp):
        with contextlib.suppress(ValueError):
            seconds = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%S"))
    if seconds is not None and seconds > 0 and time.strftime("%Y-%m-%d", time.gmtime(seconds)) == date:
        return seconds
    raise SignatureError(f"{source}: gpgv reports a good signature but no usable time for it (VALIDSIG date {date!r}, "
                         f"timestamp {stamp!r}), so ktailor cannot show this checksum file is current rather than a "
                         "stale or replayed one; refusing it. Make sure `gpgv` on PATH is GnuPG's own (not a wrapper "
                         "that rewrites its status lines), then run again; if it still fails, fetch sha256sums.asc from "
                         "kernel.org directly and compare.")


def _status_lines(text: str) -> dict[str, list[str]]:
    status: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, _, rest = line.removeprefix("[GNUPG:] ").partition(" ")
            status.setdefault(keyword, []).append(rest)
    return status


def _check_status(status: dict[str, list[str]], *, returncode: int, human: str, keyring: Path, expected: str,
                  source: str) -> None:
    if "BADSIG" in status:
        raise SignatureError(f"{source}: BAD signature: the file was changed after it was signed. Do not use this mirror's "
                             "files; fetch sha256sums.asc from kernel.org directly and report the mirror.")
    if "ERRSIG" in status or "NO_PUBKEY" in status:
        key = (status.get("NO_PUBKEY") or status.get("ERRSIG") or ["?"])[0].split()[0]
        raise SignatureError(f"{source}: signed by key {key}, which is not in the keyring {keyring}. The checksums must be "
                             f"signed by the kernel.org checksum autosigner ({AUTOSIGNER_FINGERPRINT}); if the keyring is "
                             "stale, delete it so ktailor fetches the key again.")
    for keyword, meaning in (("EXPKEYSIG", "the signing key has expired"), ("REVKEYSIG", "the signing key was revoked"),
                             ("EXPSIG", "the signature has expired")):
        if keyword in status:
            raise SignatureError(f"{source}: {meaning} (gpgv: {keyword}). Refresh the keyring {keyring} (delete it and "
                                 f"run again, or `gpg --locate-keys {AUTOSIGNER_UID}` and export it there).")
    if "NEWSIG" not in status or "VALIDSIG" not in status:
        tail = "\n".join(human.splitlines()[-3:])
        raise SignatureError(f"{source} is not a valid clear-signed OpenPGP message (gpgv exit {returncode}: {tail}); "
                             "the mirror must carry kernel.org's sha256sums.asc unchanged.")
    if len(status["NEWSIG"]) != 1 or len(status["VALIDSIG"]) != 1:
        raise SignatureError(f"{source} carries {len(status['NEWSIG'])} signatures; kernel.org's has exactly one. "
                             "Refusing a file that was put together from several signed parts.")
    fields = status["VALIDSIG"][0].split()
    if not fields:
        raise SignatureError(f"{source}: gpgv's VALIDSIG status line names no key (gpgv exit {returncode}); make sure "
                             "`gpgv` on PATH is GnuPG's own, not a wrapper that rewrites its status lines.")
    signer, primary = fields[0].upper(), fields[-1].upper()
    if expected not in (signer, primary):
        raise SignatureError(f"{source}: good signature, but by key {primary} (signing key {signer}), not by the pinned "
                             f"signer {expected}. The keyring {keyring} trusts a key ktailor does not; replace it with "
                             f"the kernel.org checksum autosigner's key ({AUTOSIGNER_UID}).")
    if returncode != 0 or "GOODSIG" not in status:
        raise SignatureError(f"{source}: gpgv did not accept the signature (exit {returncode}): {human}")


def _binary_keyring(keyring: Path, work: Path) -> Path:
    """gpgv reads binary keyrings only; an ASCII-armored export is converted here."""
    data = keyring.read_bytes()
    if not data.lstrip().startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----"):
        return keyring.resolve()
    lines = data.decode(errors="replace").strip().splitlines()
    start = lines.index("") + 1 if "" in lines else 1
    encoded = [line for line in lines[start:] if not line.startswith(("=", "-----"))]
    converted = work / "keyring.gpg"
    converted.write_bytes(base64.b64decode("".join(encoded)))
    return converted


def unverified_body(text: str) -> str:
    """The text of a clear-signed message without checking it (--insecure-skip-signature), or the text as is."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != SIGNED_HEADER:
        return text
    start = lines.index("") + 1 if "" in lines else 1
    end = lines.index(SIGNATURE_HEADER) if SIGNATURE_HEADER in lines else len(lines)
    return "\n".join(line[2:] if line.startswith("- ") else line for line in lines[start:end]) + "\n"


def checksum_for(body: str, name: str) -> str | None:
    """The sha256 a sha256sums body gives for `name` (lines `<sha256>  <name>`)."""
    for line in body.splitlines():
        match = SHA256_LINE_RE.match(line.strip())
        if match and match["name"] == name:
            return match["sha"]
    return None


# --- obtaining the key ---------------------------------------------------------------------------
def obtain_autosigner_key(destination: Path, expected_fingerprint: str = AUTOSIGNER_FINGERPRINT) -> Path:
    """Fetch the autosigner's key over WKD into a throwaway GNUPGHOME; keep it only if its fingerprint is pinned."""
    if shutil.which("gpg") is None:
        raise EnvironmentProblem(f"no keyring at {destination} and gpg is not installed to fetch one; install gnupg, "
                                 f"or copy the kernel.org autosigner's key ({AUTOSIGNER_FINGERPRINT}) there.")
    info(f"fetching the kernel.org checksum autosigner's key (gpg --locate-keys {AUTOSIGNER_UID}) into {destination}")
    advice = (f"On a machine that can, run `gpg --locate-keys {AUTOSIGNER_UID} && gpg --export {AUTOSIGNER_FINGERPRINT} > "
              f"kernel.org-autosigner.gpg` and copy the file to {destination} (or pass --keyring / set ${KEYRING_ENV}).")
    with tempfile.TemporaryDirectory(prefix="ktailor-gnupg-") as home:
        os.chmod(home, 0o700)
        try:
            result = subprocess.run(["gpg", "--homedir", home, "--batch", "--auto-key-locate", "clear,nodefault,wkd",
                                     "--locate-keys", AUTOSIGNER_UID], capture_output=True, text=True, timeout=120, check=False)
            if result.returncode != 0:
                last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no message"
                raise DownloadError(f"could not fetch the kernel.org checksum autosigner's key over WKD "
                                    f"(gpg exit {result.returncode}: {last}). {advice}")
            return export_pinned_key(Path(home), expected_fingerprint, destination)
        except subprocess.TimeoutExpired:
            raise DownloadError(f"fetching the autosigner's key over WKD took over 2 minutes. {advice}") from None
        finally:
            if shutil.which("gpgconf"):  # the gpg-agent and dirmngr started for the throwaway home
                subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True, check=False)


def export_pinned_key(gnupghome: Path, expected_fingerprint: str, destination: Path) -> Path:
    """Export the key with `expected_fingerprint` from `gnupghome` to a keyring file; refuse any other key."""
    expected = normalize_fingerprint(expected_fingerprint)
    listing = subprocess.run(["gpg", "--homedir", str(gnupghome), "--batch", "--with-colons", "--fingerprint"],
                             capture_output=True, text=True, check=False).stdout
    primaries = _primary_fingerprints(listing)
    if expected not in primaries:
        found = ", ".join(primaries) or "no key"
        raise SignatureError(f"the key found for {AUTOSIGNER_UID} has fingerprint {found}, not the pinned {expected}; "
                             "refusing it. Someone may be serving a false key; do not trust it.")
    exported = subprocess.run(["gpg", "--homedir", str(gnupghome), "--batch", "--export", expected],
                              capture_output=True, check=False).stdout
    if not exported:
        raise EnvironmentProblem(f"gpg could not export key {expected} from {gnupghome}.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    temp = destination.with_name(destination.name + ".tmp")
    temp.write_bytes(exported)
    temp.replace(destination)
    info(f"kept key {expected} in {destination}")
    return destination


def _primary_fingerprints(colons: str) -> list[str]:
    """Fingerprints of primary keys in `gpg --with-colons --fingerprint` output (the fpr right after each pub)."""
    found, after_pub = [], False
    for line in colons.splitlines():
        fields = line.split(":")
        if fields[0] == "pub":
            after_pub = True
        elif fields[0] == "fpr" and after_pub:
            found.append(fields[9].upper())
            after_pub = False
        elif fields[0] == "sub":
            after_pub = False
    return found


def keyring_for(keyring: Path | None, expected_fingerprint: str, env: dict[str, str] | None = None) -> Path:
    """The keyring to verify with: the one given (--keyring, used as it is), else $KTAILOR_KEYRING, else the
    default path; those two are bootstrapped when missing (the systemd unit points KTAILOR_KEYRING into its
    empty StateDirectory), over WKD or from $KTAILOR_AUTOSIGNER_KEY_URL, pinned by fingerprint."""
    if keyring is not None:
        return keyring.expanduser()
    env = os.environ if env is None else env
    path = default_keyring(env)
    if path.is_file():
        return path
    if env.get(KEY_URL_ENV):
        return import_key_from(env[KEY_URL_ENV], path, expected_fingerprint)
    return obtain_autosigner_key(path, expected_fingerprint)


def import_key_from(url: str, destination: Path, expected_fingerprint: str = AUTOSIGNER_FINGERPRINT) -> Path:
    """Fetch a key file from `url` (http(s) or file://), keep it only if it is the pinned key."""
    import requests

    info(f"fetching the kernel.org checksum autosigner's key from {url} (${KEY_URL_ENV}) into {destination}")
    try:
        if urlparse(url).scheme == "file":
            data = Path(unquote(urlparse(url).path)).read_bytes()
        else:
            response = requests.get(url, timeout=60)
            response.raise_for_status()
            data = response.content
    except (OSError, requests.RequestException) as exc:
        raise DownloadError(f"could not fetch the autosigner's key from {url} (${KEY_URL_ENV}): {exc}.") from None
    if shutil.which("gpg") is None:
        raise EnvironmentProblem(f"gpg is not installed to import the key from {url}; install gnupg.")
    with tempfile.TemporaryDirectory(prefix="ktailor-gnupg-") as home:
        os.chmod(home, 0o700)
        try:
            imported = subprocess.run(["gpg", "--homedir", home, "--batch", "--import"], input=data,
                                      capture_output=True, check=False)
            if imported.returncode != 0:
                last = imported.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
                raise InputError(f"{url} (${KEY_URL_ENV}) is not an OpenPGP key gpg can import ({last[0]}).")
            return export_pinned_key(Path(home), expected_fingerprint, destination)
        finally:
            if shutil.which("gpgconf"):
                subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True, check=False)
