"""The hardening audit: its checks as data, the score in the report, and verify failing on an unwaived check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import test_dag
from ktailor.core.errors import InputError
from ktailor.kconfig.hardening import CHECKS_FILE, audit_hardening, load_checks, render_hardening
from test_dag import run_doit

REPO = Path(__file__).resolve().parents[1]
CHECKS = load_checks(REPO / "fragments" / CHECKS_FILE)


def test_the_repo_checks_load_each_with_a_source_and_a_reason():
    symbols = {check.symbol for check in CHECKS.checks}
    # the settings issue #12 found off everywhere are all audited
    assert {"HARDENED_USERCOPY", "SLAB_FREELIST_HARDENED", "SLAB_FREELIST_RANDOM", "SHUFFLE_PAGE_ALLOCATOR",
            "INIT_ON_ALLOC_DEFAULT_ON", "FORTIFY_SOURCE", "BUG_ON_DATA_CORRUPTION", "SECURITY_YAMA",
            "SECURITY_DMESG_RESTRICT", "SYN_COOKIES", "LEGACY_VSYSCALL_NONE", "PANIC_ON_OOPS",
            "DEFAULT_MMAP_MIN_ADDR", "RANDOMIZE_BASE", "INIT_STACK_ALL_ZERO"} <= symbols
    assert all(check.why and check.source for check in CHECKS.checks)
    assert all(why for why in CHECKS.waivers.values())


@pytest.mark.parametrize(("config", "arch", "version", "status"), [
    ({"DEFAULT_MMAP_MIN_ADDR": "65536"}, "x86_64", (6, 1, 0), "pass"),
    ({"DEFAULT_MMAP_MIN_ADDR": "4096"}, "x86_64", (6, 1, 0), "fail"),
    ({"DEFAULT_MMAP_MIN_ADDR": "65536"}, "aarch64", (6, 1, 0), "pass"),
    ({"DEFAULT_MMAP_MIN_ADDR": "32768"}, "aarch64", (6, 1, 0), "fail"),  # 32-bit ARM's value, not arm64's
    ({"DEFAULT_MMAP_MIN_ADDR": "32768"}, "x86_64", (6, 1, 0), "fail"),
], ids=["x86-64k", "x86-4k", "arm64-64k", "arm64-32k", "x86-32k"])
def test_number_checks_want_at_least_the_kspp_value(config, arch, version, status):
    result = audit_hardening(CHECKS, config, arch=arch, version=version, target=None)
    (entry,) = [r for r in result["checks"] if r["symbol"] == "DEFAULT_MMAP_MIN_ADDR"]
    assert entry["status"] == status


def test_scope_when_and_waivers():
    config = {"RETPOLINE": "y", "BPF_SYSCALL": "y"}
    old = audit_hardening(CHECKS, config, arch="x86_64", version=(5, 10, 262), target="x86_64-micro")
    names = {r["symbol"]: r for r in old["checks"]}
    assert names["RETPOLINE"]["status"] == "pass" and "MITIGATION_RETPOLINE" not in names  # renamed in 6.8
    assert names["BPF_UNPRIV_DEFAULT_OFF"]["status"] == "fail"  # BPF_SYSCALL is on (5.13's option, in 5.10.y too)
    assert "STRICT_MODULE_RWX" not in names  # only when MODULES=y
    assert names["RANDOMIZE_BASE"]["status"] == "waived" and "PVH" in names["RANDOMIZE_BASE"]["waiver"]
    assert names["DEVMEM"]["status"] == "pass"  # not set: as wanted
    new = audit_hardening(CHECKS, config, arch="x86_64", version=(6, 12, 0), target="x86_64-mini")
    names = {r["symbol"]: r for r in new["checks"]}
    assert names["MITIGATION_RETPOLINE"]["status"] == "fail"
    without_bpf = audit_hardening(CHECKS, {}, arch="x86_64", version=(6, 12, 0), target=None)["checks"]
    assert "BPF_UNPRIV_DEFAULT_OFF" not in {r["symbol"] for r in without_bpf}  # applies only when BPF_SYSCALL=y
    assert names["RANDOMIZE_BASE"]["status"] == "fail"  # mini boots its bzImage: no waiver
    # mini loads modules: lockdown and the static usermode helper are waived there, and nothing else is
    assert sorted(r["symbol"] for r in new["checks"] if r["status"] == "waived") == [
        "SECURITY_LOCKDOWN_LSM", "STATIC_USERMODEHELPER"]
    assert new["score"] == f"{new['passed']}/{new['applicable']}" and new["waived"] == 2
    assert "| CONFIG_RANDOMIZE_BASE | y | not set | fail |" in render_hardening(new)


@pytest.mark.parametrize(("text", "message"), [
    ('[[check]]\nsymbol = "CONFIG_FOO"\nwant = "y"\nsource = "KSPP"\nwhy = "x"\n', "no CONFIG_"),
    ('[[check]]\nsymbol = "FOO"\nwant = "yes"\nsource = "KSPP"\nwhy = "x"\n', "want ="),
    ('[[check]]\nsymbol = "FOO"\nwant = "y"\nsource = "KSPP"\n', "why ="),
    ('[[check]]\nsymbol = "FOO"\nwant = "y"\nsource = "KSPP"\nwhy = "x"\nonly = "arch=x86_64 kernel=6"\n', "kernel=6"),
    ('[[waiver]]\ntarget = "x86_64-micro"\nsymbol = "FOO"\n', "without a reason"),
], ids=["prefix", "want", "why", "only", "waiver"])
def test_bad_checks_are_refused_with_the_file_named(tmp_path, text, message):
    path = tmp_path / CHECKS_FILE
    path.write_text(text)
    with pytest.raises(InputError, match=message) as caught:
        load_checks(path)
    assert str(path) in str(caught.value)


CHECKS_TOML = '''[[check]]
symbol = "PRINTK"
want = "y"
source = "kernel docs"
why = "the console must say what happened"

[[check]]
symbol = "HARDENED_THING"
want = "y"
source = "KSPP"
why = "stops the thing"
'''


def test_verify_fails_on_an_unwaived_check_and_passes_once_it_is_waived(two_kernels, monkeypatch):
    monkeypatch.setattr(test_dag, "STAGES", (*test_dag.STAGES, "report"))
    root = two_kernels.root
    (root / "fragments" / CHECKS_FILE).write_text(CHECKS_TOML)
    code, _, err = run_doit(root, "verify:x86_64-micro", "report:x86_64-micro")
    assert code != 0
    assert "hardening check CONFIG_HARDENED_THING wants y but is not set (stops the thing; KSPP)" in err, err
    assert "Traceback" not in err
    target_dir = root.parent / "build" / "6.1.1" / "x86_64-micro"
    verify = json.loads((target_dir / "verify.json").read_text())
    assert verify["status"] == "failed" and verify["hardening"]["score"] == "1/2"
    report = json.loads((target_dir / "report.json").read_text())
    assert report["hardening"]["failing"][0]["symbol"] == "HARDENED_THING"
    assert "## Hardening audit: 1/2 checks pass (0 waived)" in (target_dir / "report.md").read_text()

    # a waiver with its reason: verify reruns (the checks file is its input) and passes; the report shows it
    with (root / "fragments" / CHECKS_FILE).open("a") as checks:
        checks.write('\n[[waiver]]\ntarget = "x86_64-micro"\nsymbol = "HARDENED_THING"\nwhy = "the fake kernel has no thing"\n')
    code, ran, err = run_doit(root, "verify:x86_64-micro", "report:x86_64-micro")
    assert code == 0, err
    assert ran == ["verify:x86_64-micro", "report:x86_64-micro"]
    assert "waived: the fake kernel has no thing" in (target_dir / "report.md").read_text()
    assert json.loads((target_dir / "verify.json").read_text())["hardening"]["waived"] == 1


def test_the_report_puts_what_the_booted_guest_observed_beside_the_configured_value(tmp_path):
    """report.md's configured / observed table: from boot.json only when it judged this very .config."""
    from ktailor.core.records import sha256_of
    from ktailor.guest.probes import load_probe_table
    from ktailor.project.targets import load_catalog
    from ktailor.stages.report import observed_rows, render_observed

    repo = Path(__file__).resolve().parents[1]
    target = load_catalog(repo / "targets.toml").target("x86_64-mini")
    probes = load_probe_table(repo / "guest" / "probes.toml").for_target(target)
    config = tmp_path / ".config"
    config.write_text("CONFIG_SHUFFLE_PAGE_ALLOCATOR=y\nCONFIG_MODULE_SIG_FORCE=y\n")
    final = {"SHUFFLE_PAGE_ALLOCATOR": "y", "MODULE_SIG_FORCE": "y"}
    hardening = {"checks": [{"symbol": "MODULE_SIG_FORCE"}]}
    boot = {"evidence": {"config": sha256_of(config)},
            "probes": [{"name": "page-shuffle", "status": "pass", "detail": "/sys/module/page_alloc/parameters/shuffle = Y"},
                       {"name": "module-sig-enforce", "status": "fail", "detail": "sig_enforce is N"}]}
    rows = {r["probe"]: r for r in observed_rows(probes, hardening, final, boot, sha256_of(config))}
    assert rows["page-shuffle"] == {"probe": "page-shuffle", "configured": {"CONFIG_SHUFFLE_PAGE_ALLOCATOR": "y"},
                                    "observed": "/sys/module/page_alloc/parameters/shuffle = Y", "status": "pass"}
    assert rows["module-sig-enforce"]["status"] == "fail"  # a checked symbol, though its requirement is "modules"
    assert "virtio-blk" not in rows and "lockdown-integrity" not in rows  # not hardening; micro only
    assert "| page-shuffle | CONFIG_SHUFFLE_PAGE_ALLOCATOR=y | /sys/module/page_alloc/parameters/shuffle = Y | pass |" \
        in render_observed(list(rows.values()))
    stale = observed_rows(probes, hardening, final, boot, "0" * 64)  # boot.json judged another .config
    assert {r["status"] for r in stale} == {"not booted"}
