"""Files as records: the one sha256 of a file, and the one way to read and write a stage's JSON result
and to read a TOML data file.

The lowest layer of the house: every module that hashes a file or reads a report comes here, so a file is
hashed one way and a damaged report gives the same one-paragraph answer wherever it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path

from ktailor.core.errors import InputError, VerificationFailed

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def read_toml(path: Path, missing: str) -> tuple[str, dict]:
    """(text, data) of one of the project's TOML data files; a missing file is an InputError saying `missing`,
    a syntax error one naming the file and what tomllib found (line and column)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(missing, path=path) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"not valid TOML ({exc}); fix the syntax.", path=path) from None


def read_report(path: Path, stage: str) -> dict:
    """A stage's JSON result; a truncated or hand-broken one is a one-paragraph error, not a traceback."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise VerificationFailed(f"{path} does not exist: the {stage} stage has not run for this build; "
                                 "run `doit` first.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"is not valid JSON ({exc}); it was truncated or edited. Delete it and run `doit` again "
                         f"to redo the {stage} stage.", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror}).", path=path) from None
    if not isinstance(data, dict):
        raise InputError(f"is not a {stage} report (a JSON object was expected); delete it and run `doit` again.",
                         path=path)
    return data


def read_optional(path: Path) -> dict | None:
    """A stage's JSON result where its absence or damage is an answer, not an error (up-to-date checks,
    "is it installed?"): the object, or None when it is missing, unreadable or not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_text_atomically(path: Path, text: str, mode: int | None = None) -> None:
    """Write `text` to a temp file beside `path` (with `mode` if given) and rename it over `path`."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(text)
    if mode is not None:
        temp.chmod(mode)
    temp.replace(path)


def write_json_atomically(path: Path, data: dict) -> None:
    write_text_atomically(path, json.dumps(data, indent=2) + "\n")
