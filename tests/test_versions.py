"""versions.toml and targets.toml: loading and every validation error, with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ktailor.core.errors import InputError
from ktailor.project.targets import load_catalog
from ktailor.project.versions import DEFAULT_MIRROR, load_versions

SHA = "131e75eb14da6fd683b3882bcd856085cfca47cc1aa89cd2deb1b48d22d29d9f"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(project_factory):
    return project_factory()


def load(project, text: str, env: dict | None = None):
    path = project.root / "versions.toml"
    path.write_text(text)
    catalog = load_catalog(project.root / "targets.toml")
    return load_versions(path, catalog, project.root / "fragments", env or {})


def test_shipped_versions_file_pins_5_10_245_on_kernel_org():
    catalog = load_catalog(REPO / "targets.toml")
    versions = load_versions(REPO / "versions.toml", catalog, REPO / "fragments", {})
    kernel = versions.default
    assert (kernel.version, kernel.sha256) == ("5.10.245", SHA)
    assert kernel.url == "https://cdn.kernel.org/pub/linux/kernel/v5.x/linux-5.10.245.tar.xz"
    assert set(kernel.targets) == {"x86_64-micro", "x86_64-mini", "aarch64-micro", "aarch64-mini"}


def test_mirror_env_overrides_the_file(project):
    versions = load(project, f'[[kernel]]\nversion = "6.1.5"\nsha256 = "{SHA}"\n', {"KTAILOR_MIRROR": "file:///srv/m"})
    assert versions.default.url == "file:///srv/m/v6.x/linux-6.1.5.tar.xz"
    assert load(project, f'[[kernel]]\nversion = "6.1.5"\nsha256 = "{SHA}"\n').default.mirror == DEFAULT_MIRROR


def test_default_kernel_is_the_named_one(project):
    text = 'default = "6.1.6"\n' + "".join(f'[[kernel]]\nversion = "{v}"\nsha256 = "{SHA}"\n' for v in ("6.1.5", "6.1.6"))
    assert load(project, text).default.version == "6.1.6"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        pytest.param(f'[[kernel]]\nversion = "6.1.x"\nsha256 = "{SHA}"\n', 2, ["6.1.x", "6.1.192"], id="malformed-version"),
        pytest.param(f'[[kernel]]\nversion = "6.1.5"\nsha256 = "{SHA}"\n[[kernel]]\nversion = "6.1.5"\nsha256 = "{SHA}"\n',
                     5, ["listed twice (first at line 2)"], id="duplicate-kernel"),
        pytest.param('kernel = ["6.1"]\n', 1, ["kernel entry #1 is '6.1', not a table", "[[kernel]]"],
                     id="kernel-not-a-table"),
        pytest.param(f'[[kernel]]\nversion = "6.1.5"\nsha256 = "{SHA}"\ntargets = "x86_64-micro"\n', 4,
                     ["is not a list of target names", '["x86_64-micro", "aarch64-micro"]'], id="targets-a-string"),
        pytest.param(f'[[kernel]]\nversion = "6.1.5"\nsha256 = "{SHA}"\ntargets = []\n', 4,
                     ["targets = [] builds nothing"], id="targets-empty"),
        pytest.param(f'default = 6.1\n[[kernel]]\nversion = "6.1.5"\nsha256 = "{SHA}"\n', 1,
                     ["is not a version string"], id="default-not-a-string"),
        pytest.param('[[kernel]]\nversion = "6.1.5"\nsha256 = "ABC123"\n', 3, ["64 lowercase hex", "sha256sums.asc"],
                     id="bad-sha256"),
        pytest.param(f'mirror = "ftp//nowhere"\n[[kernel]]\nversion = "6.1.5"\nsha256 = "{SHA}"\n', 1,
                     ["ftp//nowhere", "file://"], id="bad-url"),
        pytest.param(f'[[kernel]]\nversion = "6.1.5"\nsha256 = "{SHA}"\ntargets = ["riscv-micro"]\n', 4,
                     ["unknown target 'riscv-micro'", "x86_64-micro"], id="unknown-target"),
        pytest.param(f'default = "9.9"\n[[kernel]]\nversion = "6.1.5"\nsha256 = "{SHA}"\n', 1, ["names no listed kernel"],
                     id="bad-default"),
        pytest.param('[[kernel]\nversion = "6.1.5"\n', None, ["not valid TOML"], id="toml-syntax"),
    ],
)
def test_bad_versions_file_names_file_line_and_fix(project, text, line, words):
    with pytest.raises(InputError) as caught:
        load(project, text)
    message = str(caught.value)
    assert message.startswith(f"{project.root / 'versions.toml'}:{line}:" if line else str(project.root / "versions.toml"))
    for word in words:
        assert word in message


def test_missing_list_file_for_a_target(project):
    (project.root / "fragments" / "mini-aarch64.list").unlink()
    with pytest.raises(InputError, match=r"versions.toml:2: .*mini-aarch64.list does not exist"):
        load(project, f'[[kernel]]\nversion = "6.1.5"\nsha256 = "{SHA}"\n')


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        pytest.param(("[target.x86_64-micro]", "[target.riscv-micro]"), ["'riscv' is not an arch"], id="unknown-arch"),
        pytest.param(("[target.x86_64-mini]", "[target.x86_64-maxi]"), ["'maxi' is not a type"], id="unknown-type"),
        pytest.param(('kernel_arch = "x86"', 'kernel_arch = "x86"\nimages = { vmlinux = "pe" }'), ["not valid TOML"],
                     id="duplicate-key"),
        pytest.param(('"arch/x86/boot/bzImage" = "bzimage"', '"arch/x86/boot/bzImage" = "zip"'), ["check 'zip'"],
                     id="unknown-image-check"),
    ],
)
def test_bad_targets_file(project, edit, words):
    path = project.root / "targets.toml"
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(InputError) as caught:
        load_catalog(path)
    for word in words:
        assert word in str(caught.value)
