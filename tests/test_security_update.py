"""`security_update` against releases.json and a signed kernel.org-style mirror on 127.0.0.1.

With apply, the real doit graph builds, verifies, boots and installs into a temp prefix; a failing
check must leave the prefix alone. The boot stage is the real one: QEMU cannot boot the fake kernel,
so these tests skip it (KTAILOR_SKIP_BOOT, set by conftest) and opt in to unbooted installs, or let
QEMU fail on the fake image; the real kernels boot in test_kernel_integration.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Exit
from tasks import edge

from _signedmirror import (  # noqa: F401 - the fixture_* are pytest fixtures, used by name
    FarmBase,
    KernelMirror,
    dead_url,
    fixture_old_key,
    fixture_served_mirror,
    fixture_signing_key,
    install_dodo,
    unit_run,
    use_mirror,
    write_versions,
)
from _vulnsrepo import make_vulns_repo
from conftest import fake_tarball
from ktailor.commands.runner import run_doit
from ktailor.commands.security_update import security_update
from ktailor.commands.update_report import (
    EXIT_END_OF_LIFE,
    EXIT_EXPOSED,
    EXIT_UP_TO_DATE,
    EXIT_UPDATED,
    KernelReport,
    end_of_life_banner,
    worst,
)
from ktailor.core.errors import (
    EXIT_BAD_INPUT,
    EXIT_CHECK_FAILED,
    EXIT_UNREACHABLE,
    ChecksumMismatch,
    DownloadError,
    EnvironmentProblem,
    InputError,
    VerificationFailed,
    exit_code_for,
)
from ktailor.core.locks import LockBusy
from ktailor.project.layout import Project
from ktailor.sources.releases import StaleSource, next_longterm, parse_releases, series_status
from ktailor.sources.signature import SignatureError
from ktailor.stages.install import fragments_digest

TARGETS = ["x86_64-micro", "aarch64-micro"]


class Farm(FarmBase):
    @property
    def prefix(self) -> Path:
        return self.root.parent / "prefix"

    @property
    def summary_file(self) -> Path:
        return self.root.parent / "summary.json"

    def summary(self) -> dict:
        return json.loads(self.summary_file.read_text())

    def run(self, apply: bool = False, **kwargs) -> int:
        kwargs.setdefault("expected_fingerprint", self.mirror.key.fingerprint)
        return security_update(self.root, apply=apply, releases_url=None, json_out=self.summary_file, **kwargs)


@pytest.fixture
def farm(project_factory, served_mirror, monkeypatch) -> Farm:
    project = project_factory()
    old_sha = project.kernel("6.1.4")
    project.kernel("6.1.5")
    served_mirror.sign_sums()
    served_mirror.releases(("longterm", "6.1.5", False), ("longterm", "6.6.70", False), ("longterm", "6.12.13", False),
                           ("stable", "6.13.2", False))
    write_versions(project.root, served_mirror.url, "6.1.4", old_sha, TARGETS[:1])
    install_dodo(project.root)
    use_mirror(monkeypatch, served_mirror)
    monkeypatch.setenv("KTAILOR_ALLOW_UNBOOTED", "1")  # the fake kernel cannot boot; see the module docstring
    return Farm(project.root, served_mirror, old_sha)


def test_newer_point_release_is_reported_and_nothing_changes(farm, capsys):
    before = farm.versions.read_bytes()
    assert farm.run() == EXIT_UPDATED
    assert farm.versions.read_bytes() == before
    (kernel,) = farm.summary()["kernels"]
    assert (kernel["version"], kernel["latest"], kernel["action"], kernel["eol"]) == ("6.1.4", "6.1.5", "update available", False)
    assert "6.1.5 is available" in capsys.readouterr().out


def test_current_series_is_up_to_date(farm):
    farm.mirror.releases(("longterm", "6.1.4", False))
    assert farm.run() == EXIT_UP_TO_DATE
    assert farm.summary()["status"] == "up to date"


@pytest.mark.parametrize("entries, why", [
    ([("longterm", "6.1.4", True), ("longterm", "6.6.70", False), ("longterm", "6.12.13", False)], "marks it end-of-life"),
    ([("longterm", "6.6.70", False), ("longterm", "6.12.13", False), ("stable", "6.13.2", False)], "no longer lists it"),
], ids=["iseol", "no-longer-listed"])
def test_end_of_life_is_loud_and_names_the_next_longterm(farm, capsys, entries, why):
    farm.mirror.releases(*entries)
    assert farm.run() == EXIT_END_OF_LIFE
    out = capsys.readouterr().out
    assert "!!! END OF LIFE: kernel series 6.1" in out and why in out
    assert "invoke upgrade --version 6.6.70 --allow-series-change --replace 6.1.4" in out  # 6.6, not 6.12
    (kernel,) = farm.summary()["kernels"]
    assert kernel["eol"] and kernel["next_longterm"] == "6.6.70"


def test_end_of_life_banner_when_the_next_series_is_already_tracked():
    report = KernelReport("6.1.4", "6.1", listed=True, eol=True, latest="6.1.4", latest_from="releases.json",
                          next_longterm="6.6.70", installed=True)
    banner = end_of_life_banner(report, "https://www.kernel.org/releases.json", ("6.6.68",))
    assert "already tracked (6.6.68)" in banner and 'default = "6.6.68"' in banner
    assert "--replace" not in banner.replace("an `upgrade --replace` would", "")
    assert "invoke upgrade --version 6.6.70" in end_of_life_banner(report, "u", ("5.10.262",))


def test_unlisted_series_still_finds_newer_release_on_the_mirror(farm):
    farm.mirror.releases(("longterm", "6.6.70", False))
    farm.run()
    (kernel,) = farm.summary()["kernels"]
    assert (kernel["latest"], kernel["latest_from"]) == ("6.1.5", "mirror listing")


def test_releases_json_unreachable_exits_30(farm, capsys):
    assert security_update(farm.root, releases_url=f"{dead_url()}/releases.json", json_out=farm.summary_file) == EXIT_UNREACHABLE
    assert "could not fetch releases.json" in capsys.readouterr().err
    assert farm.summary()["exit_code"] == EXIT_UNREACHABLE


def test_mirror_unreachable_on_apply_exits_30_and_changes_nothing(farm, monkeypatch):
    monkeypatch.setenv("KTAILOR_MIRROR", dead_url())
    before = farm.versions.read_bytes()
    assert farm.run(apply=True) == EXIT_UNREACHABLE
    assert farm.versions.read_bytes() == before
    assert not farm.prefix.exists()


def test_bad_versions_file_exits_2(farm):
    farm.versions.write_text('[[kernel]]\nversion = "six"\n')
    assert farm.run() == EXIT_BAD_INPUT
    assert "not a kernel.org release number" in farm.summary()["error"]


def test_apply_upgrades_builds_verifies_boots_and_installs_then_rests(farm, capsys):
    write_versions(farm.root, farm.mirror.url, "6.1.4", farm.old_sha, TARGETS)
    assert farm.run(apply=True) == EXIT_UPDATED

    assert 'version = "6.1.5"' in farm.versions.read_text()
    for target in TARGETS:
        manifest = json.loads((farm.prefix / "6.1.5" / target / "manifest.json").read_text())
        assert manifest["boot"]["status"] == "skipped" and manifest["verify"]["status"] == "passed"
        assert (farm.prefix / target).resolve() == (farm.prefix / "6.1.5" / target).resolve()
        # Provenance starts at the signed line the pinned sha256 came from, and links it to the tarball.
        signed, tarball = manifest["provenance"]["predicate"]["buildDefinition"]["resolvedDependencies"][:2]
        assert signed["uri"] == f"{farm.mirror.url}/v6.x/sha256sums.asc"
        assert signed["annotations"]["line"] == f"{farm.tarball_sha('6.1.5')}  linux-6.1.5.tar.xz"
        assert "signature verified" in signed["annotations"]["authenticated"]
        assert tarball["digest"]["sha256"] == farm.tarball_sha("6.1.5")
        assert tarball["annotations"]["checksum_from"] == signed["uri"]
        checks = manifest["provenance"]["predicate"]["runDetails"]["byproducts"][0]["annotations"]
        assert checks["reproduce"]["status"] == "not run"
    (kernel,) = farm.summary()["kernels"]
    assert (kernel["action"], kernel["new_version"]) == ("upgraded", "6.1.5")
    assert kernel["targets"]["aarch64-micro"] == {"verify": "passed", "boot": "skipped", "accept": "skipped", "installed": True}
    assert kernel["upgrade"]["preflight"]["ok"]
    assert "upgraded to 6.1.5" in capsys.readouterr().out

    # The next night: current and installed, so nothing to do.
    assert farm.run(apply=True) == EXIT_UP_TO_DATE
    assert farm.summary()["kernels"][0]["action"] == "none"

    # A fragment edit is rolled out by the next night: the installed kernels were made from other fragments.
    old = (farm.prefix / "x86_64-micro").resolve()
    fragment = farm.root / "fragments" / "common.conf"
    fragment.write_text(fragment.read_text() + "# requirement: more\n# more printk\nCONFIG_MORE=y\n")
    assert farm.run(apply=True) == EXIT_UPDATED
    assert farm.summary()["kernels"][0]["action"] == "installed"
    new = (farm.prefix / "x86_64-micro").resolve()
    assert new != old and old.is_dir()  # a new content dir; the old one stays for running VMs
    assert "CONFIG_MORE=y" in (new / "config").read_text()


def path_without_qemu(tmp_path: Path) -> str:
    """A PATH holding every tool of this machine's PATH except QEMU."""
    bin_dir = tmp_path / "no-qemu-bin"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        for tool in Path(folder).glob("*") if Path(folder).is_dir() else []:
            if not tool.name.startswith("qemu-system") and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    return str(bin_dir)


@pytest.mark.parametrize("failure", ["build", "boot", "unbooted", "no-qemu"])
def test_failed_check_is_never_installed(farm, monkeypatch, capsys, tmp_path, failure):
    if failure == "build":
        monkeypatch.setenv("KTAILOR_MAKE_VARS", "FAIL=vmlinux")
    elif failure == "boot":  # the real boot stage: QEMU refuses the fake vmlinux (no PVH note)
        if not shutil.which("qemu-system-x86_64"):
            pytest.skip("qemu-system-x86_64 is not installed")
        monkeypatch.delenv("KTAILOR_SKIP_BOOT")
    elif failure == "unbooted":  # the boot was skipped and nobody opted in to unbooted kernels
        write_versions(farm.root, farm.mirror.url, "6.1.4", farm.old_sha, TARGETS)
        monkeypatch.delenv("KTAILOR_ALLOW_UNBOOTED")
    else:  # QEMU is missing: the boot stage records a skip, which blocks the install
        monkeypatch.delenv("KTAILOR_SKIP_BOOT")
        monkeypatch.delenv("KTAILOR_ALLOW_UNBOOTED")
        monkeypatch.setenv("PATH", path_without_qemu(tmp_path))

    assert farm.run(apply=True) == EXIT_CHECK_FAILED

    assert not (farm.prefix / "6.1.5").exists() and not (farm.prefix / "x86_64-micro").exists()
    (kernel,) = farm.summary()["kernels"]
    assert kernel["action"] == "failed" and not kernel["installed"]
    assert all(not t["installed"] for t in kernel["targets"].values())
    assert "NOT installed" in capsys.readouterr().out
    # versions.toml stays upgraded; the next night retries the build (and fails again until fixed).
    assert 'version = "6.1.5"' in farm.versions.read_text()
    if failure in ("unbooted", "no-qemu"):
        assert all(t["boot"] == "skipped" for t in kernel["targets"].values())
        assert "KTAILOR_ALLOW_UNBOOTED=1" in kernel["problems"][-1]
    if failure in ("build", "no-qemu"):  # the next night retries (and fails again until fixed)
        assert farm.run(apply=True) == EXIT_CHECK_FAILED
        assert farm.summary()["kernels"][0]["action"] == "failed"


def test_tampered_signature_on_apply_is_a_failed_check(farm):
    path = farm.mirror.folder() / "sha256sums.asc"
    sha = farm.mirror.real_sums().split()[2]  # linux-6.1.5.tar.xz's
    path.write_text(path.read_text().replace(sha, sha[::-1]))
    assert farm.run(apply=True) == EXIT_CHECK_FAILED
    assert 'version = "6.1.4"' in farm.versions.read_text()
    assert "BAD signature" in farm.summary()["kernels"][0]["problems"][0]


# --- releases.py and the exit-code order as units -----------------------------------------------------
RELEASES = json.dumps({"latest_stable": {"version": "6.13.2"}, "releases": [
    {"moniker": "mainline", "version": "6.14-rc1", "iseol": False},
    {"moniker": "stable", "version": "6.13.2", "iseol": False},
    {"moniker": "stable", "version": "6.12.9", "iseol": True},
    {"moniker": "longterm", "version": "6.6.70", "iseol": False},
    {"moniker": "longterm", "version": "6.1.124", "iseol": False},
    {"moniker": "longterm", "version": "5.4.289", "iseol": True},
    {"moniker": "linux-next", "version": "next-20250123", "iseol": False},
]}).encode()


def test_releases_parsing_skips_rc_and_next():
    versions = [r.version for r in parse_releases(RELEASES, "test")]
    assert versions == ["6.13.2", "6.12.9", "6.6.70", "6.1.124", "5.4.289"]


@pytest.mark.parametrize("series, latest, eol, listed, move_to", [
    ("6.1", "6.1.124", False, True, None),
    ("5.4", "5.4.289", True, True, "6.1.124"),
    ("4.19", None, True, False, "6.1.124"),
    ("6.6", "6.6.70", False, True, None),
], ids=["longterm", "eol-listed", "dropped", "newest-longterm"])
def test_series_status_and_next_longterm(series, latest, eol, listed, move_to):
    releases = parse_releases(RELEASES, "test")
    status = series_status(releases, series)
    assert (status.latest, status.eol, status.listed) == (latest, eol, listed)
    found = next_longterm(releases, series) if status.eol else None
    assert (found.version if found else None) == move_to


def test_malformed_releases_json_is_an_unreachable_source():
    from ktailor.core.errors import DownloadError

    with pytest.raises(DownloadError, match=r"not kernel\.org's releases\.json format"):
        parse_releases(b'{"releases": 3}', "http://x/releases.json")


def test_worst_outcome_wins():
    assert worst([EXIT_UPDATED, EXIT_END_OF_LIFE, EXIT_UP_TO_DATE]) == EXIT_END_OF_LIFE
    assert worst([EXIT_UPDATED, EXIT_CHECK_FAILED, EXIT_UNREACHABLE]) == EXIT_UNREACHABLE
    assert worst([EXIT_CHECK_FAILED, EXIT_BAD_INPUT]) == EXIT_BAD_INPUT
    assert worst([]) == EXIT_UP_TO_DATE


def test_end_of_life_series_gets_the_pre_flight_of_the_move_without_touching_versions_toml(farm, capsys):
    """5.10-style EOL: the next longterm's newest release is configured and audited on a scratch copy."""
    fake_tarball(farm.mirror.directory, "6.6.70", "VIRTIO_MMIO\n")  # the next series cannot do VIRTIO_MMIO
    farm.mirror.sign_sums()
    farm.mirror.releases(("longterm", "6.1.4", True), ("longterm", "6.6.70", False), ("longterm", "6.12.13", False))
    before = farm.versions.read_bytes()
    run_doit(farm.root, "config:x86_64-micro")  # the current series' audit, as a previous night left it
    capsys.readouterr()

    assert farm.run(apply=True) == EXIT_END_OF_LIFE  # a forecast never makes the night fail by itself

    assert farm.versions.read_bytes() == before
    (kernel,) = farm.summary()["kernels"]
    forecast = kernel["forecast"]
    assert (forecast["to"], forecast["ok"]) == ("6.6.70", False)
    (target,) = forecast["preflight"]["targets"]
    assert [d["symbol"] for d in target["no_longer_land"]] == ["VIRTIO_MMIO"]
    out = capsys.readouterr().out
    assert "forecast 6.1 → 6.6.70: PROBLEMS; 1 requested option(s) would not land" in out
    assert not list((farm.root.parent / "build").glob("6.6.70/*/build.log"))  # nothing was built


# --- freshness: a stale or replayed source never keeps a vulnerable kernel in place ---------------------
def test_a_stale_releases_json_is_refused_and_nothing_changes(farm, capsys):
    farm.mirror.releases(("longterm", "6.1.5", False), age_days=60)
    before = farm.versions.read_bytes()
    assert farm.run(apply=True) == EXIT_UNREACHABLE
    assert farm.versions.read_bytes() == before
    assert "is stale: its newest release is from" in farm.summary()["error"]
    assert "KTAILOR_MAX_SOURCE_AGE_DAYS" in farm.summary()["error"]


def test_a_releases_json_older_than_versions_toml_is_a_replay_not_a_downgrade(farm):
    farm.mirror.releases(("longterm", "6.1.3", False))  # fresh dates, but behind what versions.toml has
    before = farm.versions.read_bytes()
    assert farm.run(apply=True) == EXIT_UNREACHABLE
    assert farm.versions.read_bytes() == before
    (kernel,) = farm.summary()["kernels"]
    assert "stale or replayed" in kernel["problems"][0] and kernel["action"] != "upgraded"


def test_an_old_signature_on_the_checksums_is_a_replay(farm, old_key, monkeypatch):
    farm.mirror.sign_sums(key=old_key, at="20240101T000000")  # a good signature by the trusted key, from 2024
    monkeypatch.setenv("KTAILOR_KEYRING", str(old_key.keyring))
    assert farm.run(apply=True, expected_fingerprint=old_key.fingerprint) == EXIT_UNREACHABLE
    assert 'version = "6.1.4"' in farm.versions.read_text()
    assert "was signed" in farm.summary()["kernels"][0]["problems"][0]


def test_a_broken_keyring_file_is_one_paragraph(farm, monkeypatch, tmp_path):
    broken = tmp_path / "keyring.asc"
    broken.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot base64 at all!\n-----END PGP PUBLIC KEY BLOCK-----\n")
    monkeypatch.setenv("KTAILOR_KEYRING", str(broken))
    assert farm.run(apply=True) == EXIT_BAD_INPUT
    problem = farm.summary()["kernels"][0]["problems"][0]
    assert "is not an OpenPGP keyring" in problem and "\n" not in problem


# --- the shipped systemd unit on a fresh machine ----------------------------------------------------------
@pytest.fixture
def unit_machine(farm, tmp_path, monkeypatch):
    """A fresh machine for contrib/ktailor-security-update.service: empty CacheDirectory and StateDirectory,
    the checkout at the project, the farm's drop-in pointing at the local mirror and its key."""
    shutil.copy(Path(__file__).resolve().parents[1] / "tasks.py", farm.root / "tasks.py")
    paths = {"/opt/ktailor/.venv": Path(sys.executable).parents[1], "/opt/ktailor": farm.root,
             "/var/cache/ktailor": tmp_path / "var-cache", "/var/lib/ktailor": tmp_path / "var-lib",
             "/usr/share/ktailor": farm.prefix}
    for made_by_systemd in ("/var/cache/ktailor", "/var/lib/ktailor"):
        paths[made_by_systemd].mkdir()
    drop_in = {"KTAILOR_BUILD_DIR": str(farm.root.parent / "build"), "KTAILOR_RELEASES_URL": farm.mirror.releases_url,
               "KTAILOR_AUTOSIGNER_KEY_URL": farm.mirror.publish_key(),
               "KTAILOR_AUTOSIGNER_FINGERPRINT": farm.mirror.key.fingerprint}
    return unit_run(paths, drop_in), paths


def test_the_shipped_unit_bootstraps_its_keyring_and_without_qemu_installs_nothing(unit_machine, farm, tmp_path):
    run, paths = unit_machine
    assert run.env["KTAILOR_KEYRING"].startswith(str(paths["/var/lib/ktailor"]))
    assert not Path(run.env["KTAILOR_KEYRING"]).exists()  # a fresh machine: nobody copied the key
    run.env["PATH"] = path_without_qemu(tmp_path)
    done = subprocess.run(run.argv, cwd=run.cwd, env=run.env, capture_output=True, text=True, timeout=600)
    assert done.returncode == EXIT_CHECK_FAILED, done.stdout[-2000:] + done.stderr[-3000:]
    assert Path(run.env["KTAILOR_KEYRING"]).is_file()  # fetched from the key URL and pinned
    assert 'version = "6.1.5"' in farm.versions.read_text()  # the signed upgrade happened
    summary = json.loads((paths["/var/lib/ktailor"] / "security-update.json").read_text())
    (kernel,) = summary["kernels"]
    assert kernel["targets"]["x86_64-micro"]["boot"] == "skipped" and not kernel["installed"]
    assert not farm.prefix.exists() or not any(farm.prefix.iterdir())
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("error", "code"), [
    pytest.param(InputError("bad"), 2, id="bad-input"),
    pytest.param(EnvironmentProblem("no gcc"), 1, id="machine"),
    pytest.param(LockBusy("busy"), 1, id="lock-busy"),
    pytest.param(DownloadError("offline"), 30, id="unreachable"),
    pytest.param(StaleSource("stale"), 30, id="stale-source"),
    pytest.param(ChecksumMismatch("sha"), 20, id="checksum"),
    pytest.param(SignatureError("sig"), 20, id="signature"),
    pytest.param(VerificationFailed("boot"), 20, id="check-failed"),
])
def test_one_exit_code_per_kind_of_failure_for_every_command(error, code):
    """invoke tasks (tasks.edge) and security-update map a failure to the same code."""
    assert exit_code_for(error) == code
    with pytest.raises(Exit) as caught:
        edge(lambda: (_ for _ in ()).throw(error))()
    assert caught.value.code == code and str(error) in str(caught.value.message)


# --- issue #20: every verdict in the graph, one "installed", the VEX and exposure of what is installed ------
def test_a_kernel_that_failed_the_pre_flight_is_not_installed_the_next_night_either(project_factory, served_mirror,
                                                                                   monkeypatch):
    """Night 1: the pre-flight finds a must-stay loss (FUTEX off on 6.1.5) and nothing is built. Night 2:
    versions.toml names 6.1.5, current but not installed; the graph's own verify refuses it."""
    project = project_factory()
    project.must_stay()
    old_sha = project.kernel("6.1.4", defaults="CONFIG_FUTEX=y\n")
    project.kernel("6.1.5", defaults="# CONFIG_FUTEX is not set\n")
    served_mirror.sign_sums()
    served_mirror.releases(("longterm", "6.1.5", False))
    write_versions(project.root, served_mirror.url, "6.1.4", old_sha, TARGETS[:1])
    install_dodo(project.root)
    use_mirror(monkeypatch, served_mirror)
    monkeypatch.setenv("KTAILOR_ALLOW_UNBOOTED", "1")
    farm = Farm(project.root, served_mirror, old_sha)
    assert run_doit(farm.root, "config:x86_64-micro").returncode == 0  # what an earlier night left

    assert farm.run(apply=True) == EXIT_CHECK_FAILED
    assert farm.summary()["kernels"][0]["upgrade"]["preflight"]["ok"] is False
    for _night in (2, 3):
        assert farm.run(apply=True) == EXIT_CHECK_FAILED
        (kernel,) = farm.summary()["kernels"]
        assert kernel["action"] == "failed" and kernel["targets"]["x86_64-micro"]["verify"] == "failed"
        assert not (farm.prefix / "6.1.5").exists() and not (farm.prefix / "x86_64-micro").exists()
    verify = json.loads((farm.root.parent / "build" / "6.1.5" / "x86_64-micro" / "verify.json").read_text())
    assert any("CONFIG_FUTEX is off but must stay on" in problem for problem in verify["problems"])


def test_a_reason_only_fragment_edit_is_rolled_out_once_then_rests(farm):
    write_versions(farm.root, farm.mirror.url, "6.1.5", farm.tarball_sha("6.1.5"), TARGETS[:1])
    assert farm.run(apply=True) == EXIT_UPDATED
    store = (farm.prefix / "x86_64-micro").resolve()
    fragment = farm.root / "fragments" / "common.conf"
    fragment.write_text(fragment.read_text().replace("# The guest needs a serial console to say anything at all.",
                                                     "# Without a serial console the guest says nothing at all."))

    assert farm.run(apply=True) == EXIT_UPDATED  # night 2: the manifest is rewritten (same files, same dir)
    assert farm.summary()["kernels"][0]["action"] == "installed"
    assert (farm.prefix / "x86_64-micro").resolve() == store
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["fragments_sha256"] == fragments_digest(Project.from_env(farm.root),
                                                            Project.from_env(farm.root).catalog.target("x86_64-micro"))
    assert farm.run(apply=True) == EXIT_UP_TO_DATE  # night 3: installed means installed
    assert farm.summary()["kernels"][0]["action"] == "none"
    assert [p.name for p in (farm.prefix / "6.1.5").iterdir() if p.name.startswith("x86_64-micro.")] == [store.name]


def _vex_status(install: Path, cve: str) -> str:
    document = json.loads((install / "vex.openvex.json").read_text())
    return next(s["status"] for s in document["statements"] if s["vulnerability"]["name"] == cve)


def test_the_vex_of_a_rebuild_describes_the_rebuild_not_the_previous_install(farm, tmp_path, monkeypatch):
    monkeypatch.setenv("KTAILOR_VULNS", str(make_vulns_repo(tmp_path / "vulns", "6.1.5")))
    write_versions(farm.root, farm.mirror.url, "6.1.5", farm.tarball_sha("6.1.5"), TARGETS[:1])
    assert run_doit(farm.root, "install:x86_64-micro").returncode == 0
    assert _vex_status(farm.prefix / "x86_64-micro", "CVE-2026-0002") == "not_affected"  # hub.c not compiled in
    # the next build compiles drivers/usb/core/hub.c (as a fragment turning USB on would)
    tree = farm.root.parent / "build" / "6.1.5" / "linux"
    (tree / "compiled").write_text("drivers/md/dm-crypt.c fs/ext4/inode.c drivers/usb/core/hub.c\n")
    assert run_doit(farm.root, "forget", "build:x86_64-micro").returncode == 0
    assert run_doit(farm.root, "install:x86_64-micro").returncode == 0

    installed = farm.prefix / "x86_64-micro"
    assert "drivers/usb/core/hub.c" in (installed / "sources.json").read_text()
    assert _vex_status(installed, "CVE-2026-0002") == "affected"


def test_vex_and_install_dir_are_the_same_for_the_same_inputs(farm, tmp_path, monkeypatch):
    monkeypatch.setenv("KTAILOR_VULNS", str(make_vulns_repo(tmp_path / "vulns", "6.1.5")))
    write_versions(farm.root, farm.mirror.url, "6.1.5", farm.tarball_sha("6.1.5"), TARGETS[:1])
    assert run_doit(farm.root, "install:x86_64-micro").returncode == 0
    first = (farm.prefix / "x86_64-micro").resolve()
    assert run_doit(farm.root, "forget", "install:x86_64-micro").returncode == 0
    assert run_doit(farm.root, "install:x86_64-micro").returncode == 0  # a forced reinstall, a second later
    assert (farm.prefix / "x86_64-micro").resolve() == first
    assert len([p for p in (farm.prefix / "6.1.5").iterdir() if p.name.startswith("x86_64-micro.")]) == 1


def test_fail_on_judges_the_installed_kernel_even_when_an_update_is_available(farm, tmp_path, monkeypatch):
    monkeypatch.setenv("KTAILOR_VULNS", str(make_vulns_repo(tmp_path / "vulns", "6.1.4")))
    assert run_doit(farm.root, "install:x86_64-micro").returncode == 0  # 6.1.4 installed: CVE-2026-0001 (HIGH)

    assert farm.run(fail_on="applicable-high") == EXIT_EXPOSED  # report only, 6.1.5 is available
    (kernel,) = farm.summary()["kernels"]
    assert kernel["exposed"]["x86_64-micro"]["version"] == "6.1.4"
    assert "CVE-2026-0001" in kernel["exposed"]["x86_64-micro"]["cves"]

    monkeypatch.setenv("KTAILOR_MAKE_VARS", "FAIL=vmlinux")  # the upgrade fails: 6.1.5 is never installed
    assert farm.run(apply=True, fail_on="applicable-high") == EXIT_EXPOSED
    (kernel,) = farm.summary()["kernels"]
    assert kernel["action"] == "failed" and kernel["exposed"]["x86_64-micro"]["version"] == "6.1.4"


def test_fail_on_with_a_corrupt_installed_sources_json_is_bad_input_not_a_traceback(farm, tmp_path, monkeypatch,
                                                                                   capsys):
    monkeypatch.setenv("KTAILOR_VULNS", str(make_vulns_repo(tmp_path / "vulns", "6.1.4")))
    assert run_doit(farm.root, "install:x86_64-micro").returncode == 0
    sources = (farm.prefix / "x86_64-micro").resolve() / "sources.json"
    sources.write_text('{"files": [')
    assert farm.run(fail_on="applicable-high") == EXIT_BAD_INPUT
    assert "could not be judged" in farm.summary()["kernels"][0]["problems"][-1]
    assert "Traceback" not in capsys.readouterr().err


def test_the_forecast_says_not_compared_and_leaves_no_source_tree_in_the_build_dir(farm, capsys):
    fake_tarball(farm.mirror.directory, "6.6.70")
    farm.mirror.sign_sums()
    farm.mirror.releases(("longterm", "6.1.4", True), ("longterm", "6.6.70", False))
    assert farm.run() == EXIT_END_OF_LIFE  # report only, and no config of 6.1.4 here to compare with
    out = capsys.readouterr().out
    assert "forecast 6.1 → 6.6.70: every requested option lands" in out
    assert "whole .config not compared" in out and "0 unrequested" not in out
    build = farm.root.parent / "build"
    assert not (build / "6.6.70").exists()
    assert not list(build.glob("forecast/*/build/6.6.70/linux"))


def test_the_forecast_compares_with_the_next_series_when_it_is_already_tracked(farm, capsys):
    sha = fake_tarball(farm.mirror.directory, "6.6.70")[1]
    farm.mirror.sign_sums()
    farm.mirror.releases(("longterm", "6.1.4", True), ("longterm", "6.6.70", False))
    farm.versions.write_text(farm.versions.read_text() + f'\n[[kernel]]\nversion = "6.6.70"\nsha256 = "{sha}"\n'
                             'targets = ["x86_64-micro"]\n')
    assert farm.run() == EXIT_END_OF_LIFE
    forecast = farm.summary()["kernels"][0]["forecast"]
    assert (forecast["to"], forecast["ok"], forecast.get("tracked")) == ("6.6.70", True, True)
