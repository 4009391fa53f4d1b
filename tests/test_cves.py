"""CVE exposure: records from a vulns.git in the CNA's format, compiled files from kbuild, the
per-target split in `invoke cves`, security-update and the install's OpenVEX.

The pipeline tests run the real doit graph on the fake kernel (tests/fakelinux), whose build
leaves kbuild-style .cmd files for dm-crypt.c, ext4/inode.c and arch/<ARCH>/kernel/setup.c.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
from ktailor.commands.runner import run_doit
from ktailor.commands.security_update import security_update
from ktailor.commands.update_report import EXIT_EXPOSED, EXIT_UP_TO_DATE, EXIT_UPDATED
from ktailor.core.errors import EnvironmentProblem, InputError
from ktailor.farm.compiled import Compiled, compiled_files
from ktailor.project.layout import Project
from ktailor.security.cvereport import cves_command
from ktailor.security.cves import (
    Cve,
    Database,
    Exposure,
    exposure,
    exposure_json,
    load_database,
    parse_record,
    render_exposure,
    split,
    unknown_of,
    vulns_checkout,
)
from ktailor.security.vex import openvex

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


# --- CVE JSON 5 version items (cve-schema docs/versions.md and the kernel CNA's shapes) ---


def cna_record(*entries: dict, cve_id: str = "CVE-2026-1000") -> dict:
    return {"cveMetadata": {"cveId": cve_id, "state": "PUBLISHED"},
            "containers": {"cna": {"title": f"test record {cve_id}", "affected": list(entries)}}}


def entry(*versions: dict, default: str | None, files: tuple[str, ...] = ("fs/ext4/inode.c",)) -> dict:
    """One `affected[]` entry; `default=None` leaves defaultStatus out, as the schema allows."""
    product = {"product": "Linux", "vendor": "Linux", "programFiles": list(files), "versions": list(versions)}
    return product | ({"defaultStatus": default} if default else {})


def item(version: str, status: str, **bound: str) -> dict:
    """A version item: `lessThan=` / `lessThanOrEqual=` for a range, neither for a single version."""
    return {"version": version, "status": status, **bound} | ({"versionType": "semver"} if bound else {})


@dataclass(frozen=True)
class Case:
    name: str
    entries: tuple[dict, ...]
    status: dict[str, str]  # version -> affected | unaffected | unknown
    fixed: dict[tuple[int, int], str | None] = field(default_factory=dict)  # series -> fixed_in


CASES = [
    # cve-schema docs/versions.md, "Versions and Version Ranges" and "Version Status Changes"
    Case("schema: lessThanOrEqual 2.5.1 is inclusive",
         (entry(item("2.0.0", "affected", lessThanOrEqual="2.5.1"), default="unaffected"),),
         {"1.9": "unaffected", "2.0.0": "affected", "2.5.1": "affected", "2.5.2": "unaffected"}),
    Case("schema: lessThan 2.* is the whole 2.x series",
         (entry(item("1.0", "affected", lessThan="2.*"), default="unaffected"),),
         {"0.9": "unaffected", "1.0": "affected", "2.99.1": "affected", "3.0": "unaffected"}),
    Case("schema: single versions 2.4 and 2.5 are exactly those",
         (entry(item("2.4", "affected"), item("2.5", "affected"), default="unaffected"),),
         {"2.4": "affected", "2.4.1": "unaffected", "2.5": "affected", "2.6": "unaffected"}),
    Case("schema: no defaultStatus, only the listed versions count",
         (entry(item("2.4", "affected"), item("2.5", "affected"), item("2.6", "unaffected"), default=None),),
         {"2.4": "affected", "2.5": "affected", "2.5.1": "unaffected", "2.6": "unaffected"}),
    Case("schema: status changes, listed out of order",
         (entry({"version": "2.0.0", "versionType": "semver", "lessThan": "2.*", "status": "affected",
                 "changes": [{"at": "2.6.3", "status": "unaffected"}, {"at": "2.5.2", "status": "unaffected"},
                             {"at": "2.6.0", "status": "affected"}]}, default=None),),
         {"2.5.1": "affected", "2.5.2": "unaffected", "2.6.2": "affected", "2.6.3": "unaffected", "3.0": "unaffected"},
         {(2, 6): "2.6.3", (2, 5): "2.5.2"}),
    # the kernel CNA's affected entry (defaultStatus unaffected)
    Case("affected lessThanOrEqual 6.1.20 is inclusive",
         (entry(item("6.1.10", "affected", lessThanOrEqual="6.1.20"), default="unaffected"),),
         {"6.1.9": "unaffected", "6.1.10": "affected", "6.1.20": "affected", "6.1.21": "unaffected"}),
    Case("affected lessThanOrEqual 6.1.* is the rest of the series",
         (entry(item("6.1.10", "affected", lessThanOrEqual="6.1.*"), default="unaffected"),),
         {"6.1.9": "unaffected", "6.1.10": "affected", "6.1.192": "affected", "6.2": "unaffected"},
         {(6, 1): None}),
    Case("a single affected stable version, beside a git range that is skipped",
         (entry({"version": "0", "lessThan": "*", "status": "affected", "versionType": "git"},
                item("5.10.100", "affected"), default="unaffected"),),
         {"5.10.99": "unaffected", "5.10.100": "affected", "5.10.101": "unaffected", "6.1.1": "unaffected"}),
    # the kernel CNA's unaffected entry (defaultStatus affected)
    Case("unaffected lessThanOrEqual 6.1.20 is inclusive, affected again after",
         (entry(item("6.1.10", "unaffected", lessThanOrEqual="6.1.20"), default="affected"),),
         {"6.1.9": "affected", "6.1.10": "unaffected", "6.1.20": "unaffected", "6.1.21": "affected"},
         {(6, 1): None}),
    Case("unaffected lessThanOrEqual 5.* is the rest of the 5.x line",
         (entry(item("0", "unaffected", lessThan="5.4"), item("5.15.100", "unaffected", lessThanOrEqual="5.*"),
                default="affected"),),
         {"5.3.18": "unaffected", "5.15.99": "affected", "5.15.100": "unaffected", "5.19.17": "unaffected",
          "6.0": "affected"},
         {(5, 15): "5.15.100"}),
    Case("a single unaffected version (original_commit_for_fix) is exactly that one",
         (entry(item("6.8", "affected"), {"version": "6.9", "status": "unaffected", "versionType": "original_commit_for_fix"},
                default="affected"),),
         {"6.8.12": "affected", "6.9": "unaffected", "6.9.1": "affected"},
         {(6, 9): None}),
    # status unknown: never read as unaffected
    Case("an unknown range wins over an overlapping unaffected one",
         (entry(item("0", "unaffected", lessThan="6.1"), item("6.1", "unknown", lessThan="6.2"),
                item("6.1.50", "unaffected", lessThanOrEqual="6.1.*"), default="affected"),),
         {"6.0.19": "unaffected", "6.1.49": "unknown", "6.1.50": "unknown", "6.2": "affected"},
         {(6, 1): None}),
    Case("an unknown range in a default-unaffected entry",
         (entry(item("5.10", "unknown", lessThan="5.11"), default="unaffected"),),
         {"5.4.1": "unaffected", "5.10.5": "unknown", "5.11": "unaffected"}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_version_items_of_a_record(case: Case) -> None:
    cve = parse_record(cna_record(*case.entries))
    assert cve is not None
    assert {v: cve.affects(v) for v in case.status} == {v: s == "affected" for v, s in case.status.items()}
    assert {v: cve.status(v) for v in case.status} == case.status
    assert {series: cve.fixed_in(series) for series in case.fixed} == case.fixed


def files_cve(cve_id: str, files: tuple[str, ...], *versions: dict, default: str = "affected") -> Cve:
    cve = parse_record(cna_record(entry(*versions, default=default, files=files), cve_id=cve_id))
    assert cve is not None
    return cve


COMPILED = Compiled(frozenset({"fs/ext4/inode.c", "net/ipv4/udp_offload.c"}), frozenset({"include/linux/fs.h"}))
IN_61 = item("6.1", "affected", lessThan="6.2")  # affects every 6.1.y


def records_of_61() -> list[Cve]:
    return [
        files_cve("CVE-2026-1001", ("fs/ext4/inode.c",), IN_61, default="unaffected"),  # applicable
        files_cve("CVE-2026-1002", ("drivers/usb/core/hub.c",), IN_61, default="unaffected"),  # not applicable
        files_cve("CVE-2026-1003", (), IN_61, default="unaffected"),  # names no files
        files_cve("CVE-2026-1004", ("fs/ext4/inode.c",), item("6.1", "unknown", lessThan="6.2"), default="unaffected"),
    ]


def test_split_leaves_out_records_without_files_and_exposure_reports_them_unknown() -> None:
    records = records_of_61()
    affecting = records[:3]
    applicable, not_applicable = split(affecting, COMPILED)
    assert ([c.id for c in applicable], [c.id for c in not_applicable]) == (["CVE-2026-1001"], ["CVE-2026-1002"])
    assert [c.id for c in unknown_of(affecting)] == ["CVE-2026-1003"]
    found = exposure(Database(records, 0, "test"), "x86_64-micro", "6.1.4", COMPILED)
    assert [c.id for c in found.unknown] == ["CVE-2026-1003", "CVE-2026-1004"]  # no files; 6.1.4 unknown
    assert (len(found.applicable), len(found.not_applicable), found.affecting) == (1, 1, 4)
    data = exposure_json(found, COMPILED, "test")
    assert (data["affecting"], data["not_applicable"], data["unknown"]) == (4, 1, 2)
    assert "1 do not (their files are not compiled in), 2 cannot be told" in render_exposure(found, COMPILED, "test")


def test_an_upgrade_to_a_version_of_unknown_status_fixes_nothing() -> None:
    cve = files_cve("CVE-2026-1005", ("fs/ext4/inode.c",), item("6.1.4", "affected", lessThan="6.1.5"),
                    item("6.1.5", "unknown", lessThan="6.1.6"), default="unaffected")
    database = Database([cve], 0, "test")
    assert [c.id for c in database.fixed_between("6.1.4", "6.1.6")] == ["CVE-2026-1005"]
    assert database.fixed_between("6.1.4", "6.1.5") == []


def test_a_real_record_without_program_files_is_unknown_not_unaffected() -> None:
    """CVE-2021-46905 in an early version of the record (bippy-7f0d2821bfb2): it names no programFiles."""
    database = load_database(REAL)
    hso = next(c for c in database.cves if c.id == "CVE-2021-46905")
    assert hso.files == frozenset() and hso.affects("5.12") and not hso.affects("5.12.1")
    found = exposure(database, "x86_64-micro", "5.12", COMPILED)
    assert [c.id for c in found.unknown] == ["CVE-2021-46905"]
    assert [c.id for c in found.applicable] == ["CVE-2021-47036"] and found.not_applicable == []
    statements = {s["vulnerability"]["name"]: s for s in openvex(found, COMPILED, config_sha256="0" * 64,
                                                                  source="test")["statements"]}
    assert statements["CVE-2021-46905"]["status"] == "under_investigation"
    assert "names no files" in statements["CVE-2021-46905"]["status_notes"]


@pytest.mark.parametrize(("cve_id", "note"), [
    ("CVE-2026-1003", "the CVE record names no files (programFiles)"),
    ("CVE-2026-1004", "the CVE record leaves the status of Linux 6.1.4 unknown"),
], ids=["record names no files", "record leaves the version unknown"])
def test_openvex_says_under_investigation_when_it_cannot_be_told(cve_id: str, note: str) -> None:
    found = exposure(Database(records_of_61(), 0, "test"), "x86_64-micro", "6.1.4", COMPILED)
    document = openvex(found, COMPILED, config_sha256="0" * 64, source="test")
    (statement,) = [s for s in document["statements"] if s["vulnerability"]["name"] == cve_id]
    assert statement["status"] == "under_investigation" and "justification" not in statement
    assert statement["status_notes"].startswith(note)


def test_openvex_is_the_same_document_for_the_same_inputs() -> None:
    more = [files_cve(f"CVE-2026-10{n}", (path,), IN_61, default="unaffected")
            for n, path in (("09", "fs/ext4/inode.c"), ("08", "drivers/usb/core/hub.c"), ("07", "net/ipv4/udp_offload.c"))]
    found = exposure(Database(records_of_61() + more, 0, "test"), "x86_64-micro", "6.1.4", COMPILED)
    shuffled = Exposure(found.target, found.version, found.applicable[::-1], found.not_applicable[::-1], found.unknown[::-1])
    stamp = "2026-03-01T12:00:00Z"
    first = openvex(found, COMPILED, config_sha256="0" * 64, source="test", timestamp=stamp)
    assert openvex(shuffled, COMPILED, config_sha256="0" * 64, source="test", timestamp=stamp) == first
    assert first["timestamp"] == stamp
    order = [(s["status"], s["vulnerability"]["name"]) for s in first["statements"]]
    assert order == [("affected", "CVE-2026-1001"), ("affected", "CVE-2026-1007"), ("affected", "CVE-2026-1009"),
                     ("under_investigation", "CVE-2026-1003"), ("under_investigation", "CVE-2026-1004"),
                     ("not_affected", "CVE-2026-1002"), ("not_affected", "CVE-2026-1008")]
    later = openvex(found, COMPILED, config_sha256="0" * 64, source="test", timestamp="2026-03-02T12:00:00Z")
    assert later["@id"] == first["@id"]  # the id names the content, not the time it was written


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
        installed = project.artifacts(kernel, row).install
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
    assert kernel["exposed"] == {t: {"version": "6.1.5", "cves": ["CVE-2026-0006"]} for t in ("x86_64-micro", "aarch64-micro")}
    out = capsys.readouterr().out
    assert "EXPOSED: x86_64-micro 6.1.5 (installed) has 1 applicable CVE(s) of medium severity or worse" in out


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
