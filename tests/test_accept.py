"""The acceptance stage as units: its data file, the console protocol, the verdicts and the install gate.

The real thing — a Debian root filesystem made by mmdebstrap, systemd as PID 1, crun, runc, LUKS2 on the
kernels ktailor builds — runs in test_kernel_integration.py (x86_64-micro on 5.10 and 6.1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ktailor.core.errors import InputError, VerificationFailed
from ktailor.guest.vm import VmRun
from ktailor.guest.workloads import ACCEPTANCE, load_acceptance, parse_results
from ktailor.kconfig.fragments import list_files_of, load_fragments
from ktailor.project.targets import load_catalog
from ktailor.security.evidence import check_install, fingerprint
from ktailor.stages.accept import judge_run

REPO = Path(__file__).resolve().parents[1]
SPEC = load_acceptance(REPO / "guest" / ACCEPTANCE)
CATALOG = load_catalog(REPO / "targets.toml")


def test_every_workload_proves_a_requirement_group_of_the_fragments():
    groups = {f.requirement for path in (REPO / "fragments").glob("*.conf") for f in load_fragments([path], REPO)}
    for workload in SPEC.workloads:
        assert workload.requirement in groups, workload.name
        assert workload.types <= set(CATALOG.types), workload.name


@pytest.mark.parametrize("target", ["x86_64-micro", "x86_64-mini", "x86_64-micro-ebpf", "aarch64-micro"])
def test_each_type_runs_the_workloads_the_issue_names(target):
    names = {w.name for w in SPEC.for_target(CATALOG.target(target))}
    assert {"systemd", "luks2", "luks2-keyring", "crun", "runc", "rootless", "overlay-squashfs", "veth"} <= names
    assert ("nft-masquerade" in names) == target.endswith("mini")
    assert ("modprobe" in names) == target.endswith("mini")
    assert ("bpftrace-kprobe" in names) == target.endswith("ebpf")


def test_every_symbol_a_micro_workload_needs_is_requested_by_the_micro_list():
    """A failure must name a fragment line: a workload of micro needing a symbol micro never asks for is a gap."""
    target = CATALOG.target("x86_64-micro")
    paths = list_files_of(REPO / "fragments", target.list_name)
    from ktailor.kconfig.fragments import requested_options, resolve_list

    requested = requested_options(load_fragments(resolve_list(REPO / "fragments", target.list_name), REPO), "x86_64",
                                  (5, 10, 262))
    assert paths
    for workload in SPEC.for_target(target):
        missing = [s for s in workload.symbols if s not in requested]
        assert not missing, (workload.name, missing)


@pytest.mark.parametrize(("text", "words"), [
    pytest.param("[rootfs]\nsuite = \"bookworm\"\n", r"\[rootfs\] has no variant, packages", id="rootfs-incomplete"),
    pytest.param("[rootfs]\nsuite = \"s\"\nvariant = \"minbase\"\npackages = [\"a\"]\n[[workload]]\nname = \"x\"\n",
                 r"\[\[workload\]\] #1 has no requirement", id="workload-incomplete"),
    pytest.param("[rootfs\n", "not valid TOML", id="syntax"),
    pytest.param("[rootfs]\nsuite = \"s\"\nvariant = \"minbase\"\npackages = [\"a\"]\n" + 2 * (
        "[[workload]]\nname = \"x\"\nrequirement = \"r\"\nproves = \"p\"\ntypes = [\"micro\"]\nsymbols = [\"A\"]\n"
        "script = \"true\"\n"), "must be unique", id="duplicate"),
])
def test_a_broken_acceptance_file_is_one_paragraph_naming_it(tmp_path, text, words):
    path = tmp_path / ACCEPTANCE
    path.write_text(text)
    with pytest.raises(InputError, match=words) as caught:
        load_acceptance(path)
    assert str(path) in str(caught.value)


CONSOLE = [
    "[    1.0] systemd[1]: something",
    "KTAILOR-ACCEPT-START 5.10.262",
    "KTAILOR-OUT systemd state: running",
    "KTAILOR-OUT systemd Startup finished in 884ms (kernel) + 8.275s (userspace) = 9.159s",
    "KTAILOR-WORKLOAD systemd rc=0 ms=1200",
    "KTAILOR-OUT crun bpf create ``: Function not implemented",
    "KTAILOR-WORKLOAD crun rc=1 ms=300",
    "KTAILOR-OUT runc limits 67108864 32; hostname ktailor-ctr; null ok; NOT denied: /dev/blocked opened",
    "KTAILOR-WORKLOAD runc rc=0 ms=900",
    "KTAILOR-ACCEPT-DONE",
]


def test_console_lines_give_each_workloads_status_output_and_time():
    results, outputs, done = parse_results(CONSOLE)
    assert done and results == {"systemd": {"rc": 0, "ms": 1200}, "crun": {"rc": 1, "ms": 300},
                                "runc": {"rc": 0, "ms": 900}}
    assert outputs["systemd"][0] == "state: running"


def test_failed_workloads_name_their_requirement_and_the_fragment_lines_behind_it(tmp_path):
    target = CATALOG.target("x86_64-micro")
    workloads = [w for w in SPEC.for_target(target) if w.name in ("systemd", "crun", "runc", "veth")]
    from ktailor.project.layout import Project
    from ktailor.stages.base import Context

    project = Project(REPO, {})
    requested = Context(project, project.versions.default, target).requested()
    entries, problems = judge_run(target, workloads, VmRun(lines=CONSOLE), tmp_path, requested, 600)
    status = {e["name"]: e["status"] for e in entries}
    assert status == {"systemd": "pass", "crun": "fail", "runc": "fail", "veth": "missing"}
    crun = next(p for p in problems if p.startswith("workload crun"))
    assert "requirement 'containers'" in crun and "CONFIG_CGROUP_BPF=y at fragments/cgroup-bpf.conf:" in crun
    assert "Function not implemented" in crun
    runc = next(p for p in problems if p.startswith("workload runc"))
    assert "lacks 'limits 67108864 32; hostname ktailor-ctr; null ok; denied ok'" in runc  # exit 0 is not enough


def test_a_run_that_never_finished_says_so_first():
    target = CATALOG.target("x86_64-micro")
    _, problems = judge_run(target, SPEC.for_target(target)[:1], VmRun(lines=CONSOLE[:3], timed_out=True), Path("/none"),
                            {}, 600)
    assert problems[0].startswith("x86_64-micro: the acceptance run did not finish: timed out after 600s")


# --- the install gate ---------------------------------------------------------------------------------
class Checked:
    """A build whose audit, verify and boot passed (the files the gate reads), and an accept.json as given."""

    def __init__(self, tmp_path: Path) -> None:
        self.kbuild = tmp_path / "kbuild"
        self.kbuild.mkdir()
        (self.kbuild / "vmlinux").write_bytes(b"\x7fELF kernel")
        (self.kbuild / ".config").write_text("CONFIG_64BIT=y\n")
        self.images = {"vmlinux": self.kbuild / "vmlinux"}
        self.dir = tmp_path
        evidence = fingerprint(self.images, self.kbuild / ".config")
        from ktailor.core.records import sha256_of

        (tmp_path / "audit.json").write_text(json.dumps({"status": "passed",
                                                         "config_sha256": sha256_of(self.kbuild / ".config")}))
        (tmp_path / "verify.json").write_text(json.dumps({"status": "passed", "evidence": fingerprint(
            self.images, self.kbuild / ".config", tmp_path / "audit.json")}))
        (tmp_path / "boot.json").write_text(json.dumps({"status": "pass", "evidence": evidence}))
        self.evidence = evidence

    def accept(self, status: str, **extra) -> None:
        (self.dir / "accept.json").write_text(json.dumps({"status": status, "evidence": self.evidence} | extra))

    def gate(self, unaccepted_ok: bool = False) -> dict:
        return check_install(images=self.images, config=self.kbuild / ".config", audit=self.dir / "audit.json",
                             verify=self.dir / "verify.json", boot=self.dir / "boot.json", unbooted_ok=False,
                             rerun="doit boot:x86_64-micro", accept=self.dir / "accept.json", unaccepted_ok=unaccepted_ok)


def test_the_gate_installs_an_accepted_kernel(tmp_path):
    build = Checked(tmp_path)
    build.accept("pass")
    assert build.gate()["accept"]["status"] == "pass"


@pytest.mark.parametrize(("make", "words"), [
    pytest.param(lambda b: None, "accept stage has not run", id="never-accepted"),
    pytest.param(lambda b: b.accept("fail", message="workload crun failed"), "acceptance fail .workload crun", id="failed"),
    pytest.param(lambda b: b.accept("skipped", reason="mmdebstrap is not installed"), "not accepted with real userspace",
                 id="skipped"),
    pytest.param(lambda b: (b.dir / "accept.json").write_text(json.dumps(
        {"status": "pass", "evidence": {"images": {"vmlinux": "0" * 64}, "config": "0" * 64}})),
        "accept.json does not vouch", id="stale-pass"),
])
def test_the_gate_refuses_a_kernel_not_accepted_on_these_files(tmp_path, make, words):
    build = Checked(tmp_path)
    make(build)
    with pytest.raises(VerificationFailed, match=words):
        build.gate()


def test_a_skipped_acceptance_installs_only_with_the_explicit_opt_in(tmp_path):
    build = Checked(tmp_path)
    build.accept("skipped", reason="no arm64 root filesystem here")
    assert build.gate(unaccepted_ok=True)["accept"]["status"] == "skipped"
    build.accept("fail", message="crun failed")
    with pytest.raises(VerificationFailed):
        build.gate(unaccepted_ok=True)  # the opt-in is for a skip, never for a failure


def test_the_key_server_hands_every_connection_the_key_then_stops_with_the_stack(tmp_path):
    import contextlib
    import socket

    from ktailor.stages.accept import serve_key

    path = tmp_path / "vsock.uds_1025"
    with contextlib.ExitStack() as stack:
        serve_key(path, b"k" * 64, stack)
        for _ in range(2):  # luks2 and luks2-keyring each ask
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(path))
                assert client.makefile("rb").read() == b"k" * 64  # then EOF
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client, pytest.raises(OSError):
        client.connect(str(path))
