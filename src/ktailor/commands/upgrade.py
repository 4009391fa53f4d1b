"""`invoke upgrade`: move a kernel in versions.toml to another point release, checked end to end.

1. Pick the entry: the one of the new version's series (major.minor); --latest takes the newest
   point release of a tracked series from kernel.org's releases.json (or the mirror's listing).
2. Fetch <mirror>/v6.x/sha256sums.asc, verify it with gpgv against the autosigner's key (signature.py),
   and take the tarball's sha256 from the signed text only.
3. Download the tarball into the cache, which checks it against that sha256, so a mirror serving
   another file is refused before versions.toml changes.
4. Rewrite the entry's version and sha256 (and the default pointer when it named the old version),
   keeping versions.toml's comments and layout (tomlkit).
5. Pre-flight (preflight.py): configure every target on the new version and print which options no
   longer land, before anything is built.

Guard rails: a lower version needs allow_downgrade, another series needs allow_series_change; a dry
run prints the change and writes nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import tomlkit
from tomlkit.items import Item

from ktailor.commands.preflight import Preflight, render_preflight, run_preflight
from ktailor.core.errors import ChecksumMismatch, DownloadError, InputError, line_of
from ktailor.core.progress import info, warn
from ktailor.core.records import write_json_atomically
from ktailor.farm.remote import NotOnMirror, read_url
from ktailor.project.layout import Project
from ktailor.project.versions import VERSION_RE, Kernel, VersionsFile, load_versions, parse_version
from ktailor.sources.releases import check_signed_recently, fetch_releases, newest_on_mirror, series_of, series_status
from ktailor.sources.releases import releases_url as resolve_releases_url
from ktailor.sources.signature import AUTOSIGNER_FINGERPRINT, checksum_for, keyring_for, unverified_body, verify_clearsigned
from ktailor.stages.download import fetch


@dataclass
class UpgradeResult:
    versions_path: Path
    old_version: str
    new_version: str
    old_sha256: str
    sha256: str
    signature: str  # how the sha256 was authenticated
    needed: bool  # versions.toml differs from what it should say
    written: bool  # versions.toml was rewritten
    dry_run: bool
    default_moved: bool  # the `default = …` pointer named the old version and now names the new one
    diff: str = ""
    preflight: Preflight | None = None

    @property
    def ok(self) -> bool:
        """False only when the pre-flight found a problem (versions.toml is then already upgraded)."""
        return self.preflight is None or self.preflight.ok

    def revert_hint(self) -> str:
        default = f'\n    default = "{self.old_version}"' if self.default_moved else ""
        return (f"To go back, put the old entry back in {self.versions_path}:\n"
                f'    version = "{self.old_version}"\n    sha256 = "{self.old_sha256}"{default}\n'
                f"(or `git checkout -- {self.versions_path.name}`).")

    def to_json(self) -> dict:
        return {"versions_file": str(self.versions_path), "old_version": self.old_version, "new_version": self.new_version,
                "old_sha256": self.old_sha256, "sha256": self.sha256, "signature": self.signature, "needed": self.needed,
                "written": self.written, "dry_run": self.dry_run, "default_moved": self.default_moved,
                "preflight": self.preflight.to_json() if self.preflight else None}


# --- which entry, which version -------------------------------------------------------------------
def _line_of_version(path: Path, version: str) -> int | None:
    return line_of(path.read_text(), f'version = "{version}"')


def choose_entry(versions: VersionsFile, version: str | None, replace: str | None, allow_series_change: bool) -> Kernel:
    """The entry an upgrade rewrites: `replace` if given, else the one of `version`'s series, else the default."""
    if replace:
        entry = versions.get(replace)
    elif version is None:
        entry = versions.default
    else:
        same = [k for k in versions.kernels if k.series == series_of(version)]
        if len(same) > 1:
            raise InputError(f"{len(same)} entries track series {series_of(version)} ({', '.join(k.version for k in same)}); "
                             "say which one to replace (--replace <version>).", path=versions.path)
        entry = same[0] if same else versions.default
    if entry.source is not None:
        raise InputError(f"the entry of {entry.version} builds the source tree {entry.source}, which an upgrade cannot "
                         "move to another release: update the tree itself (git pull, a new vendor drop), or replace the "
                         "entry's source with a version and sha256 to build kernel.org's tarball.",
                         path=versions.path, line=_line_of_version(versions.path, entry.version))
    if version is not None and series_of(version) != entry.series and not allow_series_change:
        tracked = ", ".join(f"{k.series} ({k.version})" for k in versions.kernels)
        raise InputError(
            f"{version} is of series {series_of(version)}, but the entry it would replace is {entry.version} (series "
            f"{entry.series}; tracked: {tracked}). Another series means other kconfig symbols and possibly other fragments: "
            "pass --allow-series-change if you mean it (the pre-flight then shows what no longer lands).",
            path=versions.path, line=_line_of_version(versions.path, entry.version))
    return entry


def newest_point_release(entry: Kernel, url: str) -> str:
    """The newest point release of the entry's series from releases.json. Only when releases.json no longer
    lists the series (end of life) is the mirror's listing read, and said to be undated and unsigned; a
    releases.json that cannot be read or is stale stops here rather than trusting a listing anyone who
    controls the mirror can hold back."""
    try:
        status = series_status(fetch_releases(url), entry.series)
    except DownloadError as exc:
        raise DownloadError(f"cannot tell the newest point release of {entry.series}: {exc} The mirror's directory "
                            "listing is not used instead (it is neither signed nor dated, so it could hold back a fix); "
                            "try again later, or name the release explicitly with --version X.Y.Z.") from None
    if status.latest:
        return status.latest
    warn(f"{url} no longer lists series {entry.series} (end of life?); taking the newest release from the mirror's "
         "listing, which is neither signed nor dated (the tarball's checksum is still checked against the signed file)")
    newest = newest_on_mirror(entry.mirror, entry.series)
    if newest is None:
        raise InputError(f"no release of series {entry.series} found in {url} nor on the mirror {entry.mirror}; "
                         "give the version explicitly (--version).")
    return newest


# --- the checksum, authenticated -------------------------------------------------------------------
def release_checksum(mirror: str, version: str, *, keyring: Path | None, expected_fingerprint: str,
                     insecure_skip_signature: bool) -> tuple[str, str, dict]:
    """(sha256 of linux-<version>.tar.xz, how it was authenticated, the record of it) from the mirror's
    sha256sums.asc; the record (URL, the signed line, the file's sha256, when it was signed) goes into the
    install's provenance."""
    folder = f"{mirror.rstrip('/')}/v{version.partition('.')[0]}.x"
    name = f"linux-{version}.tar.xz"
    if insecure_skip_signature:
        warn("--insecure-skip-signature: the checksum is taken from an UNVERIFIED file; anyone who can change the mirror "
             "or the connection can choose the kernel you build.")
        try:
            url, text = f"{folder}/sha256sums.asc", read_url(f"{folder}/sha256sums.asc", what="sha256sums.asc").decode()
        except NotOnMirror:  # mirrors made by `python -m ktailor.sources.mirror` carry an unsigned sha256sums
            url, text = f"{folder}/sha256sums", read_url(f"{folder}/sha256sums", what="sha256sums").decode()
        body, how, signed_at, raw = unverified_body(text), "NOT VERIFIED (--insecure-skip-signature)", None, text.encode()
    else:
        url = f"{folder}/sha256sums.asc"
        signed = read_url(url, what="sha256sums.asc")
        verified = verify_clearsigned(signed, keyring_for(keyring, expected_fingerprint), expected_fingerprint, source=url)
        check_signed_recently(verified.signed_at, url)
        body, how, signed_at, raw = verified.body, f"signature verified, key {verified.primary}", verified.signed_at, signed
    sha256 = checksum_for(body, name)
    if sha256 is None:
        raise InputError(f"{url} lists no {name}: kernel.org has no such release (check the version), or the mirror "
                         "is behind.")
    record = {"url": url, "sha256sums_sha256": hashlib.sha256(raw).hexdigest(), "line": f"{sha256}  {name}",
              "sha256": sha256, "authenticated": how, "signed_at": signed_at}
    return sha256, how, record


# --- versions.toml, rewritten in place -------------------------------------------------------------
def _replaced(old: Item, value: str) -> Item:
    """A new string value that keeps the old one's trailing comment and spacing."""
    new = tomlkit.string(value)
    new.trivia.comment_ws, new.trivia.comment, new.trivia.trail = old.trivia.comment_ws, old.trivia.comment, old.trivia.trail
    return new


def rewrite_versions(text: str, old_version: str, new_version: str, sha256: str) -> tuple[str, bool]:
    """versions.toml with one entry's version and sha256 replaced, and whether `default` moved with it."""
    document = tomlkit.parse(text)
    for entry in document.get("kernel", []):
        if entry.get("version") == old_version:
            entry["version"] = _replaced(entry.item("version"), new_version)
            entry["sha256"] = _replaced(entry.item("sha256"), sha256)
            break
    else:
        raise InputError(f"no [[kernel]] entry with version {old_version}.")
    moved = document.get("default") == old_version
    if moved:
        document["default"] = _replaced(document.item("default"), new_version)
    return tomlkit.dumps(document), moved


def write_versions(project: Project, text: str) -> None:
    """Replace versions.toml atomically, after checking the new text loads."""
    path = project.versions_path
    temp = path.with_name(f".{path.name}.new")
    temp.write_text(text)
    try:
        load_versions(temp, project.catalog, project.fragments_dir, project.env)
        shutil.copymode(path, temp)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    temp.replace(path)


def check_move(versions: VersionsFile, entry: Kernel, version: str, allow_downgrade: bool) -> None:
    if parse_version(version) < entry.version_tuple and not allow_downgrade:
        raise InputError(f"{version} is older than the tracked {entry.version}: a downgrade brings back fixed bugs and "
                         "security holes. Pass --allow-downgrade if that is what you mean.",
                         path=versions.path, line=_line_of_version(versions.path, entry.version))
    if version != entry.version and any(k.version == version for k in versions.kernels):
        raise InputError(f"{version} is already listed in its own entry; remove one of the two instead of upgrading.",
                         path=versions.path, line=_line_of_version(versions.path, version))


# --- the command ------------------------------------------------------------------------------------
def upgrade(root: Path, version: str | None, *, latest: bool = False, dry_run: bool = False, allow_downgrade: bool = False,
            allow_series_change: bool = False, insecure_skip_signature: bool = False, keyring: Path | None = None,
            replace: str | None = None, expected_fingerprint: str = AUTOSIGNER_FINGERPRINT,
            releases_url: str | None = None, preflight: bool = True, env: dict[str, str] | None = None) -> UpgradeResult:
    """Move one versions.toml entry to `version` (or the newest point release with `latest`); see the module doc.
    `env` replaces the process environment (the forecast points KTAILOR_VERSIONS at a scratch copy)."""
    project = Project(Path(root).resolve(), env) if env is not None else Project.from_env(root)
    versions = project.versions
    if (version is None) == (not latest):
        raise InputError("say which version: --version X.Y.Z, or --latest for the newest point release of a tracked series.")
    if version is not None and not VERSION_RE.match(version):
        raise InputError(f"{version!r} is not a kernel.org release number; write it like 6.1.192.")
    entry = choose_entry(versions, version, replace, allow_series_change)
    if version is None:
        version = newest_point_release(entry, resolve_releases_url(releases_url, project.env))
        info(f"newest point release of {entry.series}: {version}")
        if parse_version(version) <= entry.version_tuple:
            print(f"{entry.version} is already the newest point release of {entry.series}; nothing to do.")
            return UpgradeResult(versions.path, entry.version, entry.version, entry.sha256, entry.sha256, "not needed",
                                 needed=False, written=False, dry_run=dry_run, default_moved=False)
    check_move(versions, entry, version, allow_downgrade)

    sha256, how, checksum_record = release_checksum(entry.mirror, version, keyring=keyring,
                                                    expected_fingerprint=expected_fingerprint,
                                                    insecure_skip_signature=insecure_skip_signature)
    info(f"linux-{version}.tar.xz: sha256 {sha256} ({how})")
    old_text = versions.path.read_text()
    unchanged = (version, sha256) == (entry.version, entry.sha256)
    new_text, moved = (old_text, False) if unchanged else rewrite_versions(old_text, entry.version, version, sha256)
    diff = "".join(difflib.unified_diff(old_text.splitlines(keepends=True), new_text.splitlines(keepends=True),
                                        f"{versions.path.name} (now)", f"{versions.path.name} (upgraded)"))
    result = UpgradeResult(versions.path, entry.version, version, entry.sha256, sha256, how, needed=bool(diff), written=False,
                           dry_run=dry_run, default_moved=moved and version != entry.version, diff=diff)
    if not diff:
        print(f"{entry.version} is already pinned with the mirror's checksum ({how}); nothing to do.")
        return result
    if version == entry.version:
        warn(f"the sha256 pinned for {version} differs from the mirror's checksum file ({how}); taking the latter.")
    if dry_run:
        print(f"dry run: would change {versions.path} as follows (nothing written, nothing downloaded):\n{diff}")
        return result

    new_kernel = dataclasses.replace(entry, version=version, sha256=sha256)
    try:
        fetch(new_kernel.url, project.tarball(new_kernel), sha256)
    except ChecksumMismatch as exc:
        raise ChecksumMismatch(f"{exc} The checksum came from {how}: the mirror serves another tarball than the one "
                               f"signed for. {versions.path.name} was not changed; do not build from this mirror.") from None
    write_json_atomically(project.checksum_record(new_kernel), checksum_record)
    write_versions(project, new_text)
    result.written = True
    print(f"{versions.path}: {entry.version} → {version}" + (" (the default kernel)" if entry.is_default else ""))
    if preflight:
        result.preflight = run_preflight(project.root, version, entry.version, env=env)
        print(render_preflight(result.preflight))
        if not result.preflight.ok:
            print(f"E: the pre-flight of {version} failed; nothing was built. versions.toml now names {version}. "
                  f"Fix the fragments (see above) and run `doit`, or go back. {result.revert_hint()}", file=sys.stderr)
    return result
