"""The house as README describes it: the module map equals the tree, no module a newcomer must decode at
length, and no process-wide state changed outside the tests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "ktailor"
MAX_LINES = 420  # "readable in one sitting": a few hundred lines


def readme_map() -> dict[str, set[str]]:
    """folder (relative to the package, "" for its top) -> the modules README's house table names there."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## The house"):]
    section = section[:section.index("\n## ", 1)]
    found = {}
    for folder, modules in re.findall(r"^\| `([^`]+)` \| ((?:`\w+` ?)+) \|", section, re.MULTILINE):
        key = "" if folder == "src/ktailor/" else folder.rstrip("/")
        found[key] = set(re.findall(r"`(\w+)`", modules))
    return found


def tree_map() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" or "__pycache__" in path.parts:
            continue
        found.setdefault(str(path.parent.relative_to(PACKAGE)).replace(".", ""), set()).add(path.stem)
    return found


def test_the_readme_map_of_the_house_is_the_tree():
    assert readme_map() == tree_map()


@pytest.mark.parametrize("module", sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                                          if "__pycache__" not in p.parts))
def test_no_module_is_longer_than_a_sitting(module):
    lines = len((PACKAGE / module).read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it along its natural parts"


PROCESS_WIDE = re.compile(r"os\.environ\[[^\]]+\]\s*=(?!=)|os\.environ\.(clear|update|pop|setdefault)\(|os\.chdir\(|"
                          r"os\.putenv\(|contextlib\.chdir\(")


@pytest.mark.parametrize("source", sorted([*(p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py")
                                            if "__pycache__" not in p.parts), "tasks.py", "dodo.py"]))
def test_no_process_wide_environment_or_directory_change_outside_the_tests(source):
    offending = [f"{source}:{number}: {line.strip()}"
                 for number, line in enumerate((REPO / source).read_text().splitlines(), start=1)
                 if PROCESS_WIDE.search(line)]
    assert offending == []
