"""bench/ablation.py --options: a variant is the target with one request (and its reason) taken out."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ktailor.kconfig.fragment_dirs import FragmentDirs
from ktailor.kconfig.fragments import load_fragments, requested_options, resolve_list
from ktailor.project.layout import Project

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from ablation import option_variant_env  # noqa: E402


def test_an_option_variant_drops_the_requests_and_their_reasons_and_nothing_else(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("KTAILOR_FRAGMENTS", raising=False)
    monkeypatch.setenv("KTAILOR_BUILD_DIR", str(tmp_path / "build"))
    project = Project.from_env(REPO)
    kernel = project.versions.get_or_default(None)
    target = project.catalog.target("x86_64-micro")
    env = option_variant_env(project, kernel, target, ["INIT_ON_FREE_DEFAULT_ON", "SECURITY_LOCKDOWN_LSM_EARLY"],
                             tmp_path / "variant")
    overlay = Path(env["KTAILOR_FRAGMENTS"])
    assert sorted(p.name for p in overlay.iterdir()) == ["hardening.conf", "lockdown.conf"]
    full = (REPO / "fragments" / "hardening.conf").read_text().splitlines()
    cut = (overlay / "hardening.conf").read_text().splitlines()
    gone = [line for line in full if line not in cut]
    assert gone[-1] == "CONFIG_INIT_ON_FREE_DEFAULT_ON=y" and all(line.startswith("# ") for line in gone[:-1])
    dirs = FragmentDirs(REPO / "fragments", overlay)
    paths = resolve_list(dirs, target.list_name)
    before = requested_options(load_fragments(resolve_list(REPO / "fragments", target.list_name), REPO), "x86_64",
                               kernel.version_tuple)
    after = requested_options(load_fragments(paths, REPO), "x86_64", kernel.version_tuple)
    assert set(before) - set(after) == {"INIT_ON_FREE_DEFAULT_ON", "SECURITY_LOCKDOWN_LSM_EARLY"}
    assert env["KTAILOR_VERSIONS"] == str(tmp_path / "variant" / "versions.toml")
    assert f'source = "{project.source_tree(kernel)}"' in Path(env["KTAILOR_VERSIONS"]).read_text()


def test_an_option_the_target_does_not_request_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("KTAILOR_FRAGMENTS", raising=False)
    project = Project.from_env(REPO)
    target = project.catalog.target("x86_64-micro")
    with pytest.raises(SystemExit, match="x86_64-micro requests no CONFIG_MODULE_SIG_FORCE"):
        option_variant_env(project, project.versions.get_or_default(None), target, ["MODULE_SIG_FORCE"], tmp_path)
