"""CVE exposure: records from a vulns.git in the CNA's format, compiled files from kbuild, the
per-target split in `invoke cves`, security-update and the install's OpenVEX.

The pipeline tests run the real doit graph on the fake kernel (tests/fakelinux), whose build
leaves kbuild-style .cmd files for dm-crypt.c, ext4/inode.c and arch/<ARCH>/kernel/setup.c.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _signedmirror import (  # noqa: F401 - the fixture_* are pytest fixtures, used by name
    fixture_served_mirror,
    fixture_signing_key,
    install_dodo,
    use_mirror,
    write_versions,
)
from _vulnsrepo import make_vulns_repo, record
from ktailor.compiled import Compiled, compiled_files
from ktailor.cvereport import cves_command
from ktailor.cves import load_database, parse_record, split, vulns_checkout
from ktailor.errors import EnvironmentProblem, InputError
from ktailor.layout import Project
from ktailor.runner import run_doit
from ktailor.security_update import EXIT_EXPOSED, EXIT_UP_TO_DATE, EXIT_UPDATED, security_update

TARGETS = ["x86_64-micro", "aarch64-micro"]


@pytest.fixture
def vulns(tmp_path: Path) -> Path:
    return make_vulns_repo(tmp_path / "vulns")


# --- records ----------------------------------------------------------------------------------


def test_records_parse_and_broken_ones_are_counted(vulns: Path) -> None:
    database = load_database(vulns)
    assert sorted(c.id for c in database.cves) == ["CVE-2025-0007", *(f"CVE-2026-000{n}" for n in range(1, 7))]
    assert database.unparsed == 1  # CVE-2026-0099.json is not JSON
    by_id = {c.id: c for c in database.cves}
    assert (by_id["CVE-2026-0001"].score, by_id["CVE-2026-0001"].severity) == (7.8, "HIGH")
    assert by_id["CVE-2026-0003"].severity == "" and by_id["CVE-2026-0003"].score is None


@pytest.mark.parametrize(("cve", "version", "affected"), [
    ("CVE-2026-0001", "6.1.4", True), ("CVE-2026-0001", "6.1.5", False), ("CVE-2026-0001", "3.19.300", False),
    ("CVE-2026-0001", "6.13.8", True), ("CVE-2026-0001", "6.13.9", False), ("CVE-2026-0001", "6.6.2", True),
    ("CVE-2026-0001", "6.14", False), ("CVE-2026-0001", "6.15.117", False),
    ("CVE-2026-0004", "6.1.1", False), ("CVE-2026-0004", "6.1.2", True), ("CVE-2026-0004", "6.1.5", False),
    ("CVE-2026-0004", "6.14.2", True), ("CVE-2026-0004", "6.14.3", False),
    ("CVE-2026-0006", "6.1.192", True), ("CVE-2026-0006", "3.9.9", False), ("CVE-2026-0006", "6.16.1", False),
], ids=str)
def test_affected_ranges(vulns: Path, cve: str, version: str, affected: bool) -> None:
    database = {c.id: c for c in load_database(vulns).cves}
    assert database[cve].affects(version) is affected


def test_fixed_in_names_the_series_release(vulns: Path) -> None:
    by_id = {c.id: c for c in load_database(vulns).cves}
    assert by_id["CVE-2026-0001"].fixed_in((6, 1)) == "6.1.5"
    assert by_id["CVE-2026-0004"].fixed_in((6, 1)) == "6.1.5"  # from the backport range
    assert by_id["CVE-2026-0001"].fixed_in((6, 14)) == "6.14"  # the mainline fix
    assert by_id["CVE-2026-0006"].fixed_in((6, 1)) is None


def test_parser_tolerates_missing_optional_fields() -> None:
    minimal = record("CVE-2026-0100", ["fs/ext4/inode.c"], "6.1", {"6.1": "6.1.9"}, "6.2", None, None)
    del minimal["containers"]["cna"]["title"], minimal["containers"]["cna"]["references"]
    for entry in minimal["containers"]["cna"]["affected"]:
        del entry["programFiles"]
    cve = parse_record(minimal)
    assert cve is not None and cve.files == frozenset() and cve.affects("6.1.8") and not cve.affects("6.1.9")
    old_style = {"cveMetadata": {"cveID": "CVE-2024-1"}, "containers": {"cna": {"affected": [
        {"defaultStatus": "affected", "versions": [{"version": "6.1.78", "lessThanOrEqual": "6.1.*",
                                                    "status": "unaffected", "versionType": "custom"},
                                                   {"version": "6.8-rc4", "lessThanOrEqual": "*",
                                                    "status": "unaffected", "versionType": "original_commit_for_fix"}]}]}}}
    cve = parse_record(old_style)
    assert cve is not None and cve.affects("6.1.77") and not cve.affects("6.1.78") and not cve.affects("6.8")
    assert parse_record({"cveMetadata": {"cveId": "CVE-1", "state": "REJECTED"}}) is None
    assert parse_record({"containers": {}}) is None


def test_a_fix_in_code_not_compiled_is_not_applicable_even_if_its_header_is() -> None:
    minimal = record("CVE-2026-0200", ["net/tls/tls_sw.c", "include/net/tls.h"], "6.1", {}, "6.9", None, None)
    header_only = record("CVE-2026-0201", ["include/net/tls.h"], "6.1", {}, "6.9", None, None)
    cves = [parse_record(minimal), parse_record(header_only)]
    compiled = Compiled(frozenset({"net/ipv4/tcp.c"}), frozenset({"include/net/tls.h"}))
    applicable, not_applicable = split(cves, compiled)  # type: ignore[arg-type]
    assert [c.id for c in applicable] == ["CVE-2026-0201"] and [c.id for c in not_applicable] == ["CVE-2026-0200"]


def test_vulns_from_a_git_url_is_cloned_once_and_a_path_is_used_as_is(vulns: Path, tmp_path: Path) -> None:
    url = vulns.as_uri()
    path, source = vulns_checkout(url, tmp_path / "cache")
    assert path.is_relative_to(tmp_path / "cache" / "vulns") and (path / "cve" / "published" / "2026").is_dir()
    assert source.startswith(url + " at ")
    assert vulns_checkout(url, tmp_path / "cache") == (path, source)  # at most once per run
    local, _ = vulns_checkout(str(vulns), tmp_path / "cache")
    assert local == vulns
    with pytest.raises(InputError, match="not a directory"):
        vulns_checkout(str(tmp_path / "nowhere"), tmp_path / "cache")
    with pytest.raises(EnvironmentProblem, match="KTAILOR_VULNS at a local clone"):
        vulns_checkout((tmp_path / "nowhere").as_uri(), tmp_path / "cache2")


def test_compiled_files_read_kbuild_cmd_files_and_skip_host_programs(tmp_path: Path) -> None:
    kbuild, srctree = tmp_path / "kbuild", tmp_path / "linux"
    (kbuild / "fs" / "ext4").mkdir(parents=True)
    (kbuild / "scripts" / "kconfig").mkdir(parents=True)
    (kbuild / "fs" / "ext4" / ".inode.o.cmd").write_text(
        f"cmd_fs/ext4/inode.o := gcc …\n\nsource_fs/ext4/inode.o := {srctree}/fs/ext4/inode.c\n\n"
        f"deps_fs/ext4/inode.o := \\\n  {srctree}/include/linux/fs.h \\\n  {srctree}/fs/ext4/../ext4/ext4.h \\\n"
        f"  $(wildcard include/config/EXT4) \\\n  /usr/lib/gcc/x86_64-linux-gnu/12/include/stddef.h \\\n\n")
    (kbuild / "scripts" / "kconfig" / ".conf.o.cmd").write_text(
        f"source_scripts/kconfig/conf.o := {srctree}/scripts/kconfig/conf.c\n")
    sources, headers = compiled_files(kbuild, srctree)
    assert sources == {"fs/ext4/inode.c"}
    assert headers == {"include/linux/fs.h", "fs/ext4/ext4.h"}


def test_compiled_files_resolve_paths_relative_to_the_build_dir(tmp_path: Path) -> None:
    """ccache with a base dir makes gcc report paths relative to the kbuild dir; they are the same files."""
    kbuild, srctree = tmp_path / "build" / "5.10.262" / "x86_64-micro" / "kbuild", tmp_path / "build" / "src" / "linux"
    (kbuild / "fs" / "ext4").mkdir(parents=True)
    (kbuild / "fs" / "ext4" / ".inode.o.cmd").write_text(
        "cmd_fs/ext4/inode.o := ccache gcc …\n\nsource_fs/ext4/inode.o := ../../../src/linux/fs/ext4/inode.c\n\n"
        "deps_fs/ext4/inode.o := \\\n  ../../../src/linux/include/linux/fs.h \\\n  include/generated/autoconf.h \\\n"
        "  $(wildcard include/config/EXT4) \\\n\n")
    sources, headers = compiled_files(kbuild, srctree)
    assert sources == {"fs/ext4/inode.c"}
    assert headers == {"include/linux/fs.h"}


# --- the pipeline: build → sources.json, install → VEX, security-update → what the upgrade fixes ---


class Farm:
    def __init__(self, root: Path, mirror, vulns: Path) -> None:
        self.root, self.mirror, self.vulns = root, mirror, vulns
        self.summary_file = root.parent / "summary.json"

    def run(self, **kwargs) -> int:
        return security_update(self.root, releases_url=None, json_out=self.summary_file,
                               expected_fingerprint=self.mirror.key.fingerprint, **kwargs)

    def summary(self) -> dict:
        return json.loads(self.summary_file.read_text())


@pytest.fixture
def farm(project_factory, served_mirror, monkeypatch, vulns) -> Farm:
    project = project_factory()
    old_sha = project.kernel("6.1.4")
    project.kernel("6.1.5")
    served_mirror.sign_sums()
    served_mirror.releases(("longterm", "6.1.5", False), ("longterm", "6.12.13", False))
    write_versions(project.root, served_mirror.url, "6.1.4", old_sha, TARGETS)
    install_dodo(project.root)
    use_mirror(monkeypatch, served_mirror)
    monkeypatch.setenv("KTAILOR_VULNS", vulns.as_uri())
    monkeypatch.setenv("KTAILOR_ALLOW_UNBOOTED", "1")  # the fake kernel cannot boot (conftest skips it)
    return Farm(project.root, served_mirror, vulns)


def test_build_records_compiled_files_and_install_writes_openvex(farm) -> None:
    result = run_doit(farm.root, "install:x86_64-micro", "install:aarch64-micro", capture=True)
    assert result.returncode == 0, result.stderr[-3000:]
    project = Project.from_env(farm.root)
    kernel = project.versions.default
    for target, applicable in (("x86_64-micro", {"CVE-2026-0001", "CVE-2026-0004", "CVE-2026-0006"}),
                               ("aarch64-micro", {"CVE-2026-0001", "CVE-2026-0004", "CVE-2026-0005", "CVE-2026-0006"})):
        row = project.catalog.target(target)
        installed = project.install_dir(kernel, row)
        sources = json.loads((installed / "sources.json").read_text())
        arch = row.arch.kernel_arch
        assert sources["sources"] == sorted(["drivers/md/dm-crypt.c", "fs/ext4/inode.c", f"arch/{arch}/kernel/setup.c"])
        manifest = json.loads((installed / "manifest.json").read_text())
        assert manifest["vex"] == "vex.openvex.json" and "vex.openvex.json" in manifest["sha256"]
        vex = json.loads((installed / "vex.openvex.json").read_text())
        assert vex["@context"] == "https://openvex.dev/ns/v0.2.0"
        status = {s["vulnerability"]["name"]: s["status"] for s in vex["statements"]}
        affecting = {f"CVE-2026-000{n}" for n in range(1, 7)}  # CVE-2025-0007 was fixed in 6.1.1
        assert set(status) == affecting
        assert {c for c, s in status.items() if s == "affected"} == applicable
        for statement in vex["statements"]:
            assert statement["products"][0]["@id"].startswith(f"pkg:generic/linux@6.1.4?target={target}&config_sha256=")
            if statement["status"] == "not_affected":
                assert statement["justification"] == "vulnerable_code_not_present"
        fixed = next(s for s in vex["statements"] if s["vulnerability"]["name"] == "CVE-2026-0001")
        assert "fixed in 6.1.5" in fixed["action_statement"]


def test_security_update_reports_what_the_point_release_fixes_per_target(farm, capsys) -> None:
    assert run_doit(farm.root, "build:x86_64-micro", "build:aarch64-micro", capture=True).returncode == 0
    assert farm.run() == EXIT_UPDATED
    (kernel,) = farm.summary()["kernels"]
    cves = kernel["cves"]
    assert (cves["from"], cves["to"], cves["fixed"]) == ("6.1.4", "6.1.5", 4)  # 0001, 0002, 0004, 0005
    x86, arm = cves["targets"]["x86_64-micro"], cves["targets"]["aarch64-micro"]
    assert (x86["applicable"], x86["not_applicable"], x86["applicable_high"]) == (["CVE-2026-0004", "CVE-2026-0001"], 2, 2)
    assert (arm["applicable"], arm["not_applicable"]) == (["CVE-2026-0004", "CVE-2026-0001", "CVE-2026-0005"], 1)
    assert x86["highest"] == "CRITICAL"
    out = capsys.readouterr().out
    assert "6.1.4 → 6.1.5 fixes 4 CVEs; 2 touch code compiled into x86_64-micro, 2 of them high or critical" in out


def test_cves_command_and_the_fail_on_policy_after_an_applied_upgrade(farm, capsys) -> None:
    assert farm.run(apply=True) == EXIT_UPDATED
    project = Project.from_env(farm.root)
    text, over = cves_command(project, target="x86_64-micro", version=None, vulns=None, as_json=False, fail_on="MEDIUM")
    assert "x86_64-micro on Linux 6.1.5: 2 CVEs affect this version; 1 touch code compiled into this kernel" in text
    assert "CVE-2026-0006" in text and over == 1
    with pytest.raises(InputError, match="not a severity"):
        cves_command(project, target="x86_64-micro", version=None, vulns=None, as_json=False, fail_on="BOGUS")
    data = json.loads(cves_command(project, target="x86_64-micro", version=None, vulns=None, as_json=True)[0])
    assert [c["id"] for c in data["applicable"]] == ["CVE-2026-0006"] and data["not_applicable"] == 1
    assert data["compiled_files_from"].endswith("prefix/6.1.5/x86_64-micro/sources.json")

    # The next night: nothing newer to install, so an applicable medium CVE pages under applicable-medium only.
    assert farm.run(apply=True, fail_on="applicable-high") == EXIT_UP_TO_DATE
    assert farm.run(apply=True, fail_on="applicable-medium") == EXIT_EXPOSED
    (kernel,) = farm.summary()["kernels"]
    assert kernel["exposed"] == {"x86_64-micro": ["CVE-2026-0006"], "aarch64-micro": ["CVE-2026-0006"]}
    assert "EXPOSED: x86_64-micro 6.1.5 has 1 applicable CVE(s) of medium severity or worse" in capsys.readouterr().out


def test_without_cve_records_the_update_still_runs(farm, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KTAILOR_VULNS", str(farm.root / "no-such-clone"))
    assert farm.run() == EXIT_UPDATED
    assert farm.summary()["kernels"][0]["cves"] is None
    assert "W: no CVE figures:" in capsys.readouterr().err


# --- real records of the kernel CNA (tests/data/cna, CVE Terms of Use) ---

REAL = Path(__file__).resolve().parent / "data" / "cna"


@pytest.mark.parametrize(("cve", "version", "affected"), [
    # CVE-2024-26581 .dyad: 5.10.190 → 5.10.210, 6.1.43 → 6.1.78, 6.5 → 6.6.17 / 6.7.5 / 6.8, 6.4.8 never fixed
    ("CVE-2024-26581", "5.10.189", False), ("CVE-2024-26581", "5.10.190", True), ("CVE-2024-26581", "5.10.209", True),
    ("CVE-2024-26581", "5.10.210", False), ("CVE-2024-26581", "5.10.262", False), ("CVE-2024-26581", "6.1.42", False),
    ("CVE-2024-26581", "6.1.43", True), ("CVE-2024-26581", "6.1.78", False), ("CVE-2024-26581", "6.1.192", False),
    ("CVE-2024-26581", "6.4.8", True), ("CVE-2024-26581", "6.6.16", True), ("CVE-2024-26581", "6.6.17", False),
    ("CVE-2024-26581", "6.12.117", False),
    # CVE-2021-47036 .dyad: introduced in 5.6, fixed in 5.12.4 and 5.13, never in 5.10.y
    ("CVE-2021-47036", "5.4.200", False), ("CVE-2021-47036", "5.10.262", True), ("CVE-2021-47036", "5.12.3", True),
    ("CVE-2021-47036", "5.12.4", False), ("CVE-2021-47036", "6.1.192", False),
], ids=str)
def test_real_cna_records(cve: str, version: str, affected: bool) -> None:
    database = load_database(REAL)
    assert database.unparsed == 0
    record = next(c for c in database.cves if c.id == cve)
    assert record.affects(version) is affected


def test_real_cna_record_fields() -> None:
    by_id = {c.id: c for c in load_database(REAL).cves}
    nft = by_id["CVE-2024-26581"]
    assert nft.files == {"net/netfilter/nft_set_rbtree.c"} and (nft.score, nft.severity) == (7.8, "HIGH")
    assert nft.fixed_in((6, 1)) == "6.1.78" and nft.fixed_in((5, 10)) == "5.10.210"
    udp = by_id["CVE-2021-47036"]
    assert udp.fixed_in((5, 12)) == "5.12.4" and udp.fixed_in((5, 10)) is None
