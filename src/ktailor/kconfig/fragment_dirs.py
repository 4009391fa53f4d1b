"""Where fragments come from: the project's fragments/, overlaid by a site's own directory.

`KTAILOR_FRAGMENTS=<dir>` names a directory of the user's own fragments, lists and tables (a site
fragment adding nftables to micro, a vendor's list). A name is looked up there first, then in the
project's fragments/: a user's `micro-x86_64.list` replaces the project's, a user's `crypto.conf`
replaces the project's everywhere it is listed, and new names add to them. `ktailor:<name>` in a
list names the project's own file even where the user's directory has one of that name, so a user's
list can extend the project's list of the same name (`ktailor:micro-x86_64.list` plus a site
fragment). Everything that reads fragments (lint, config, reports, audit, explain) goes through
this one lookup, so a user's fragment is linted, scoped, audited and traced like the project's.
"""

from __future__ import annotations

import os
from pathlib import Path

from ktailor.core.errors import InputError

FRAGMENTS_ENV = "KTAILOR_FRAGMENTS"
PROJECT_PREFIX = "ktailor:"  # in a list: the project's own file of that name


class FragmentDirs:
    """The fragment directory as ktailor reads it: `dirs / name` finds a file, `glob` lists them.

    Without a user directory it behaves as the project's fragments/ Path it stands for."""

    def __init__(self, project: Path, user: Path | None = None) -> None:
        self.project = project
        self.user = user

    @classmethod
    def from_env(cls, project: Path, env: dict[str, str]) -> FragmentDirs | Path:
        value = env.get(FRAGMENTS_ENV, "").strip()
        if not value:
            return project
        user = Path(value).expanduser().resolve()
        if not user.is_dir():
            raise InputError(f"{FRAGMENTS_ENV}={value}: no such directory. Point it at the directory of your own "
                             "fragments and lists (see README, 'Your own fragments'), or unset it.")
        return cls(project, user)

    def __truediv__(self, name: str | os.PathLike) -> Path:
        name = str(name)
        if name.startswith(PROJECT_PREFIX):
            return self.project / name.removeprefix(PROJECT_PREFIX)
        mine = self.user / name if self.user else None
        return mine if mine is not None and mine.exists() else self.project / name

    def glob(self, pattern: str) -> list[Path]:
        """The files matching `pattern` as ktailor sees them: the user's, and the project's not replaced by one."""
        mine = sorted(self.user.glob(pattern)) if self.user else []
        taken = {path.name for path in mine}
        return mine + [path for path in sorted(self.project.glob(pattern)) if path.name not in taken]

    # What callers that print or compare the directory use: the project's fragments/.
    @property
    def name(self) -> str:
        return self.project.name

    def resolve(self) -> Path:
        return self.project.resolve()

    def is_relative_to(self, other: Path) -> bool:
        return self.project.is_relative_to(other)

    def relative_to(self, other: Path) -> Path:
        return self.project.relative_to(other)

    def __fspath__(self) -> str:
        return str(self.project)

    def __str__(self) -> str:
        return f"{self.user} (over {self.project})" if self.user else str(self.project)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FragmentDirs) and (self.project, self.user) == (other.project, other.user)

    def __hash__(self) -> int:
        return hash((self.project, self.user))


def entry_name(entry: str) -> str:
    """A list entry's file name (`ktailor:net.conf` -> `net.conf`)."""
    return entry.removeprefix(PROJECT_PREFIX)


def locate(fragments_dir: FragmentDirs | Path, entry: str) -> Path:
    """The file a list entry names (`net.conf`, `ktailor:micro-x86_64.list`)."""
    return fragments_dir / (entry if isinstance(fragments_dir, FragmentDirs) else entry_name(entry))
