"""The reference configs of bench/reference.py, fetched at pinned commits and checked by sha256.

bench/anchors.toml pins, per project, a repository, a commit and each file's sha256. `fetch_anchors`
downloads them (raw.githubusercontent.com, or KTAILOR_ANCHORS_URL for a farm's own mirror of the same
layout) into <cache>/anchors/<project>/<file> through ktailor's downloader, which refuses a file whose
sha256 is not the pinned one; `check_local` compares a local copy (`--anchors DIR`) with the pins.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from ktailor.core.records import sha256_of
from ktailor.stages.download import fetch

PINS = Path(__file__).resolve().parent / "anchors.toml"
URL_ENV = "KTAILOR_ANCHORS_URL"
DEFAULT_URL = "https://raw.githubusercontent.com"


def pins(path: Path = PINS) -> dict[str, dict]:
    with path.open("rb") as handle:
        return tomllib.load(handle)


def url_of(base_url: str, project: dict, name: str) -> str:
    return f"{base_url.rstrip('/')}/{project['repo']}/{project['commit']}/{project['base']}/{name}"


def fetch_anchors(cache_dir: Path, env: dict[str, str] | None = None, pinned: dict[str, dict] | None = None) -> Path:
    """Every pinned file under <cache>/anchors (kept between runs: a verified file is not fetched again)."""
    env = os.environ if env is None else env
    base_url = env.get(URL_ENV) or DEFAULT_URL
    root = cache_dir / "anchors"
    for project_name, project in (pinned or pins()).items():
        for name, sha256 in project["files"].items():
            fetch(url_of(base_url, project, name), root / project_name / name, sha256)
    return root


def check_local(directory: Path, pinned: dict[str, dict] | None = None) -> list[str]:
    """How a local anchors dir differs from the pins (missing or other files); empty when it matches."""
    problems = []
    for project_name, project in (pinned or pins()).items():
        for name, sha256 in project["files"].items():
            path = directory / project_name / name
            if not path.is_file():
                problems.append(f"{path} is missing")
            elif sha256_of(path) != sha256:
                problems.append(f"{path} is not {project['repo']}@{project['commit'][:12]}'s {name}")
    return problems
