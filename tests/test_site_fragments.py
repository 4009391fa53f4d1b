"""A user's own fragment directory (KTAILOR_FRAGMENTS): looked up first, linted, audited and traced like ours."""

from __future__ import annotations

import json

import pytest

from ktailor.core.errors import InputError
from ktailor.kconfig.fragment_dirs import FragmentDirs
from ktailor.kconfig.fragments import resolve_list
from ktailor.project.layout import Project
from test_dag import run_doit

SITE_FRAGMENT = """\
# requirement: firewall
# Site policy: our micro guests filter their own traffic with nftables.

# The site's firewall rules are nftables rules, so the guest kernel needs nf_tables.
CONFIG_NFT_SITE=y
"""


def test_the_users_names_come_first_and_ktailor_prefix_names_the_projects(tmp_path):
    project, user = tmp_path / "fragments", tmp_path / "site"
    project.mkdir()
    user.mkdir()
    for name in ("net.conf", "crypto.conf", "micro-x86_64.list"):
        (project / name).write_text("# project\n")
    (user / "crypto.conf").write_text("# site\n")
    (user / "micro-x86_64.list").write_text("ktailor:micro-x86_64.list\n")
    (user / "site.conf").write_text("# site\n")
    dirs = FragmentDirs(project, user)
    assert dirs / "crypto.conf" == user / "crypto.conf"
    assert dirs / "net.conf" == project / "net.conf"
    assert dirs / "ktailor:micro-x86_64.list" == project / "micro-x86_64.list"
    assert [p.name for p in dirs.glob("*.conf")] == ["crypto.conf", "site.conf", "net.conf"]
    assert dirs.glob("*.conf")[0].parent == user
    (project / "micro-x86_64.list").write_text("net.conf\ncrypto.conf\n")
    (user / "micro-x86_64.list").write_text("ktailor:micro-x86_64.list\nsite.conf\n")
    assert resolve_list(dirs, "micro-x86_64.list") == [project / "net.conf", user / "crypto.conf", user / "site.conf"]
    with pytest.raises(InputError, match="KTAILOR_FRAGMENTS=/nowhere: no such directory"):
        FragmentDirs.from_env(project, {"KTAILOR_FRAGMENTS": "/nowhere"})


def test_a_site_fragment_outside_the_checkout_lands_and_is_traced_to_its_own_line(two_kernels, tmp_path, monkeypatch):
    root = two_kernels.root
    site = tmp_path / "site-fragments"
    site.mkdir()
    (site / "micro-x86_64.list").write_text("# the project's micro list, plus our firewall\n"
                                            "ktailor:micro-x86_64.list\nsite-firewall.conf\n")
    (site / "site-firewall.conf").write_text(SITE_FRAGMENT)
    monkeypatch.setenv("KTAILOR_FRAGMENTS", str(site))
    code, _ran, err = run_doit(root, "report:x86_64-micro", "config:aarch64-micro")
    assert code == 0, err
    project = Project.from_env(root)
    kernel = project.versions.default
    files = project.artifacts(kernel, project.catalog.target("x86_64-micro"))
    assert "CONFIG_NFT_SITE=y" in files.config.read_text()
    rows = {row["option"]: row for row in json.loads(files.report_json.read_text())["rows"]}
    assert rows["CONFIG_NFT_SITE"]["where"] == f"{site / 'site-firewall.conf'}:5"
    assert rows["CONFIG_NFT_SITE"]["requirement"] == "firewall" and rows["CONFIG_NFT_SITE"]["status"] == "landed"
    assert "CONFIG_VIRTIO_MMIO" in rows  # the project's list came along
    arm = project.artifacts(kernel, project.catalog.target("aarch64-micro"))
    assert "NFT_SITE" not in arm.config.read_text()  # only the list the site replaced

    # lint judges the site's fragment like ours: a reasonless option fails config, naming its file and line
    (site / "site-firewall.conf").write_text(SITE_FRAGMENT + "CONFIG_NFT_MORE=y\n")
    code, _, err = run_doit(root, "config:x86_64-micro")
    assert code != 0
    assert f"{site / 'site-firewall.conf'}:6" in err and "Traceback" not in err
