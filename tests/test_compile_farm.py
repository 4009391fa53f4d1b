"""A farm's engines on real servers on 127.0.0.1: ccache's remote storage on redis-server, distcc on distccd."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ktailor.core.errors import InputError
from ktailor.farm.compile_farm import DISTCC_HOSTS_ENV, REMOTE_ENV, distcc_hosts, engine_record, redacted, remote_storage
from ktailor.farm.toolchain import jobs_from_env
from test_dag import run_doit


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited ({process.returncode}): {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nothing listened on 127.0.0.1:{port}: {log.read_text()}")


def serve(argv: list[str], port: int, log: Path):
    handle = log.open("w")
    process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)
        handle.close()


@pytest.fixture
def redis(tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed (scripts/test installs it)")
    port = free_port()
    yield from (f"redis://127.0.0.1:{port}" for _ in serve(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)], port, tmp_path / "redis.log"))


@pytest.fixture
def distccd(tmp_path):
    if not shutil.which("distccd"):
        pytest.skip("distcc is not installed (scripts/test installs it)")
    port = free_port()
    log = tmp_path / "distccd.log"
    for _ in serve(["distccd", "--no-detach", "--daemon", "--allow", "127.0.0.1", "--listen", "127.0.0.1",
                    "--port", str(port), "--jobs", "2", "--log-stderr", "--log-level", "info"], port, log):
        yield f"127.0.0.1:{port}/2", log


def build_json(root: Path, build_dir: str = "build") -> dict:
    return json.loads((root.parent / build_dir / "6.1.1" / "x86_64-micro" / "build.json").read_text())


@pytest.mark.skipif(not shutil.which("ccache"), reason="ccache is not installed (scripts/setup installs it)")
def test_a_second_machine_gets_remote_hits_from_the_farms_shared_cache(two_kernels, redis, monkeypatch):
    root = two_kernels.root
    monkeypatch.setenv(REMOTE_ENV, redis)
    monkeypatch.setenv("KTAILOR_CCACHE_DIR", str(root.parent / "machine-a-cache"))
    code, ran, err = run_doit(root, "build:x86_64-micro")
    assert code == 0, err
    a = build_json(root)
    assert a["ccache"]["misses"] >= 1 and a["ccache"]["remote_hits"] == 0 and a["ccache"]["remote"] == redis, a

    # Machine B: its own (empty) local cache and build dir; the compiles come from redis.
    monkeypatch.setenv("KTAILOR_CCACHE_DIR", str(root.parent / "machine-b-cache"))
    monkeypatch.setenv("KTAILOR_BUILD_DIR", str(root.parent / "machine-b"))
    code, ran, err = run_doit(root, "build:x86_64-micro")
    assert code == 0, err
    b = build_json(root, "machine-b")
    assert b["ccache"]["remote_hits"] >= 1 and b["ccache"]["misses"] == 0, b["ccache"]
    assert ran == ["download:6.1.1", "extract:6.1.1", "config:x86_64-micro", "build:x86_64-micro"]

    # Switching the shared cache off reruns nothing: it never changes what is built.
    monkeypatch.delenv(REMOTE_ENV)
    code, ran, err = run_doit(root, "build:x86_64-micro")
    assert code == 0 and ran == [], (ran, err)


@pytest.mark.parametrize("ccache", ["1", "0"], ids=["behind-ccache", "distcc-alone"])
def test_distcc_compiles_on_the_farms_hosts_and_gives_the_same_objects(two_kernels, distccd, monkeypatch, ccache):
    if ccache == "1" and not shutil.which("ccache"):
        pytest.skip("ccache is not installed")
    root = two_kernels.root
    monkeypatch.setenv("KTAILOR_CCACHE", ccache)
    monkeypatch.setenv("KTAILOR_CCACHE_DIR", str(root.parent / "empty-cache"))  # a hit would not reach distcc
    assert run_doit(root, "build:x86_64-micro")[0] == 0
    kbuild = root.parent / "build" / "6.1.1" / "x86_64-micro" / "kbuild"
    local_object = (kbuild / "hello-bzImage.o").read_bytes()
    assert build_json(root)["engine"] == {"compile": "local"}

    host, server_log = distccd
    monkeypatch.setenv(DISTCC_HOSTS_ENV, host)
    monkeypatch.setenv("KTAILOR_BUILD_DIR", str(root.parent / "farm"))
    monkeypatch.setenv("KTAILOR_CCACHE_DIR", str(root.parent / "farm-cache"))
    code, _, err = run_doit(root, "build:x86_64-micro")
    assert code == 0, err
    record = build_json(root, "farm")
    assert record["engine"]["compile"] == "distcc" and record["engine"]["objects"] == {host: 2}, record
    assert record["engine"]["local_fallbacks"] == 0
    assert record["jobs"] >= 2
    assert server_log.read_text().count(" COMPILE_OK ") == 2, server_log.read_text()  # the server's side of it
    farm_object = (root.parent / "farm" / "6.1.1" / "x86_64-micro" / "kbuild" / "hello-bzImage.o").read_bytes()
    assert farm_object == local_object


@pytest.mark.parametrize(("value", "slots"), [("127.0.0.1/2", 2), ("localhost buildhost:3632/8", 10),
                                               ("10.0.0.5,lzo", 4), ("buildhost/3,lzo farm-2:4000", 7)],
                         ids=["one-host", "localhost-default-2", "options", "two-hosts"])
def test_distcc_host_lists_give_their_slots_as_make_jobs(value, slots):
    hosts = distcc_hosts({DISTCC_HOSTS_ENV: value})
    assert sum(h.slots for h in hosts) == slots
    assert jobs_from_env({DISTCC_HOSTS_ENV: value}) >= slots
    assert jobs_from_env({DISTCC_HOSTS_ENV: value, "JOBS": "1"}) == 1  # an explicit JOBS wins


@pytest.mark.parametrize("value", ["host:99999", "host/0", "bad host;rm", "host/x"], ids=["port", "zero", "shell", "slots"])
def test_a_bad_distcc_host_list_is_refused_with_the_setting_named(value):
    with pytest.raises(InputError, match=DISTCC_HOSTS_ENV):
        distcc_hosts({DISTCC_HOSTS_ENV: value})


def test_remote_storage_urls_are_checked_and_passwords_kept_out_of_build_json():
    assert remote_storage({REMOTE_ENV: "redis://cache:6379 http://web/cc"}) == "redis://cache:6379 http://web/cc"
    with pytest.raises(InputError, match=REMOTE_ENV):
        remote_storage({REMOTE_ENV: "cachehost:6379"})
    assert redacted("redis://:s3cret@cache:6379") == "redis://***@cache:6379"
    assert redacted("http://user:pw@web/cc redis://cache") == "http://***@web/cc redis://cache"


def test_the_engine_record_counts_objects_per_host_from_distccs_log(tmp_path):
    log = tmp_path / "distcc.log"
    log.write_text("distcc[1] compile a.c on 127.0.0.1:3632/2 completed ok\ndistcc[2] cpp b.c on localhost completed ok\n"
                   "distcc[2] compile b.c on buildhost/8 completed ok\ndistcc[3] compile c.c on 127.0.0.1:3632/2 completed ok\n"
                   "distcc[4] (dcc_build_somewhere) Warning: failed to distribute d.c to buildhost, running locally instead\n")
    record = engine_record({DISTCC_HOSTS_ENV: "127.0.0.1:3632/2 buildhost/8"}, log)
    assert record["objects"] == {"127.0.0.1:3632/2": 2, "buildhost/8": 1} and record["local_fallbacks"] == 1
    assert engine_record({}, log) == {"compile": "local"}


# --- reproduce ------------------------------------------------------------------------------------
def reproduce_json(root: Path) -> dict:
    return json.loads((root.parent / "build" / "6.1.1" / "x86_64-micro" / "reproduce.json").read_text())


def test_reproduce_rebuilds_elsewhere_without_the_cache_and_finds_identical_images(two_kernels, monkeypatch):
    root = two_kernels.root
    monkeypatch.setenv("FAKE_REPRODUCIBLE", "1")
    code, ran, err = run_doit(root, "reproduce:x86_64-micro")
    assert code == 0, err
    assert ran[-2:] == ["build:x86_64-micro", "reproduce:x86_64-micro"]
    record = reproduce_json(root)
    assert record["identical"] is True and set(record["images"]) == {"vmlinux", "bzImage"}
    for entry in record["images"].values():
        assert entry["first"] == entry["second"] and len(entry["first"]) == 64
    target_dir = root.parent / "build" / "6.1.1" / "x86_64-micro"
    assert not (target_dir / "reproduce").exists()  # removed once identical
    assert run_doit(root, "reproduce:x86_64-micro")[1] == []  # nothing changed: nothing reruns
    assert "reproduce:x86_64-micro" not in run_doit(root)[1]  # not part of the default run (it doubles build time)


def test_a_build_that_leaks_its_directory_is_caught_with_the_elf_section_named(two_kernels, monkeypatch):
    root = two_kernels.root
    monkeypatch.setenv("FAKE_REPRODUCIBLE", "leak")
    code, _, err = run_doit(root, "reproduce:x86_64-micro")
    assert code != 0
    assert "x86_64-micro 6.1.1 is not reproducible: vmlinux differs (first differing ELF section .rodata" in err, err
    assert "Traceback" not in err
    record = reproduce_json(root)
    assert record["identical"] is False
    assert record["images"]["vmlinux"]["first_difference"]["section"] == ".rodata"
    assert record["images"]["bzImage"]["first_difference"] == {"offset": 0x400, "sizes": [0x420, 0x420]}
    assert (root.parent / "build" / "6.1.1" / "x86_64-micro" / "reproduce" / "kbuild-again" / "vmlinux").is_file()


def test_first_difference_reads_real_elf_objects(tmp_path):
    sources = {"a": "int x = 1; const char s[] = \"same\";\n", "b": "int x = 2; const char s[] = \"same\";\n"}
    for name, text in sources.items():
        (tmp_path / f"{name}.c").write_text(text)
        subprocess.run(["gcc", "-c", str(tmp_path / f"{name}.c"), "-o", str(tmp_path / f"{name}.o")], check=True)
    from ktailor.stages.reproduce import elf_sections, first_difference

    names = [name for name, _ in elf_sections((tmp_path / "a.o").read_bytes())]
    assert ".data" in names and ".rodata" in names and ".symtab" in names
    difference = first_difference(tmp_path / "a.o", tmp_path / "b.o")
    assert difference["section"] == ".data" and ".rodata" not in difference["differing_sections"]
    (tmp_path / "plain").write_bytes(b"abcdef")
    (tmp_path / "plain2").write_bytes(b"abcXef")
    assert first_difference(tmp_path / "plain", tmp_path / "plain2") == {"offset": 3, "sizes": [6, 6]}


def test_the_install_provenance_carries_the_reproduce_verdict_on_its_own_images(two_kernels, monkeypatch):
    root = two_kernels.root
    monkeypatch.setenv("FAKE_REPRODUCIBLE", "1")
    monkeypatch.setenv("KTAILOR_ALLOW_UNBOOTED", "1")  # the fake kernel cannot boot
    code, _, err = run_doit(root, "reproduce:x86_64-micro", "install:x86_64-micro")
    assert code == 0, err
    manifest = json.loads((root.parent / "prefix" / "6.1.1" / "x86_64-micro" / "manifest.json").read_text())
    verdict = manifest["provenance"]["predicate"]["runDetails"]["byproducts"][0]["annotations"]["reproduce"]
    assert verdict["status"] == "identical"
    assert verdict["images"]["vmlinux"]["second"] == manifest["sha256"]["vmlinux"]


@pytest.mark.skipif(not shutil.which("ccache"), reason="ccache is not installed (scripts/setup installs it)")
def test_switching_distcc_on_behind_ccache_reruns_nothing(two_kernels, monkeypatch):
    root = two_kernels.root
    assert run_doit(root, "build:x86_64-micro")[0] == 0
    monkeypatch.setenv(DISTCC_HOSTS_ENV, "127.0.0.1:1/2")  # never contacted: nothing is stale
    code, ran, err = run_doit(root, "build:x86_64-micro")
    assert code == 0 and ran == [], (ran, err)


def test_a_required_reproduce_verdict_is_part_of_the_graph_and_the_gate(two_kernels, monkeypatch):
    root = two_kernels.root
    monkeypatch.setenv("KTAILOR_ALLOW_UNBOOTED", "1")  # the fake kernel cannot boot
    monkeypatch.setenv("KTAILOR_REQUIRE_REPRODUCIBLE", "1")
    monkeypatch.setenv("FAKE_REPRODUCIBLE", "leak")  # a build that differs in a second build dir
    code, ran, err = run_doit(root, "install:x86_64-micro")
    assert code != 0 and "reproduce:x86_64-micro" in ran  # install asked for the verdict, doit ran it
    assert not (root.parent / "prefix").exists()
    monkeypatch.setenv("FAKE_REPRODUCIBLE", "1")
    (root.parent / "build" / "6.1.1" / "x86_64-micro" / "kbuild" / "vmlinux").unlink()  # build again, reproducibly
    code, ran, err = run_doit(root, "install:x86_64-micro")
    assert code == 0, err
    assert (root.parent / "prefix" / "x86_64-micro" / "manifest.json").is_file()
