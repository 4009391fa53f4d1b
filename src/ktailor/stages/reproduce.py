"""The reproduce stage: build the same inputs again in a second, differently named build dir, and compare.

The second build compiles everything afresh (CCACHE_DISABLE=1: a cache hit would hand back the first
build's object and prove nothing), with the same make variables and the same .config. Every image is
compared by sha256; when one differs, reproduce.json names where: for an ELF image (vmlinux) the first
section whose bytes differ, for the others the first differing byte offset. The second build dir is kept
on a mismatch (for diffoscope), removed when every image is identical.
"""

from __future__ import annotations

import shutil
import struct
import time
from pathlib import Path

from ktailor.core.errors import VerificationFailed
from ktailor.core.progress import info
from ktailor.core.records import sha256_of, write_json_atomically
from ktailor.farm.modules import carry_signing_key
from ktailor.farm.toolchain import jobs_from_env
from ktailor.project.layout import Artifacts
from ktailor.stages.base import Context, Stage, removes
from ktailor.stages.build import MODULES_LOG, make_modules, run_make, stamped

SHT_NOBITS = 8  # .bss and friends: no bytes in the file


def elf_sections(data: bytes) -> list[tuple[str, bytes]] | None:
    """(name, contents) of every section with contents, in section-header order; None if not ELF."""
    if data[:4] != b"\x7fELF" or len(data) < 64:
        return None
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    try:
        if wide:
            shoff, = struct.unpack_from(order + "Q", data, 0x28)
            entsize, count, strndx = struct.unpack_from(order + "HHH", data, 0x3A)
            layout = order + "IIQQQQ"
        else:
            shoff, = struct.unpack_from(order + "I", data, 0x20)
            entsize, count, strndx = struct.unpack_from(order + "HHH", data, 0x2E)
            layout = order + "IIIIII"
        headers = [struct.unpack_from(layout, data, shoff + i * entsize) for i in range(count)]
        names = headers[strndx][4], headers[strndx][5]
        strtab = data[names[0]:names[0] + names[1]]
    except (struct.error, IndexError):
        return None
    sections = []
    for name_at, kind, _flags, _addr, offset, size in headers:
        name = strtab[name_at:strtab.find(b"\0", name_at)].decode(errors="replace")
        sections.append((name, b"" if kind == SHT_NOBITS else data[offset:offset + size]))
    return sections


def first_difference(first: Path, second: Path) -> dict:
    """Where two builds of one image part: the ELF section, or the byte offset."""
    a, b = first.read_bytes(), second.read_bytes()
    sections_a, sections_b = elf_sections(a), elf_sections(b)
    if sections_a is not None and sections_b is not None:
        names_a, names_b = dict(sections_a), dict(sections_b)
        differing = [name for name, contents in sections_a if names_b.get(name) != contents]
        differing += [name for name, _ in sections_b if name not in names_a]
        if differing:
            first = differing[0]
            why = ("only in the first build" if first not in names_b else "only in the second build"
                   if first not in names_a else f"contents differ ({len(names_a[first])} vs {len(names_b[first])} bytes)")
            # the first is often .text, shifted by a change elsewhere: the whole list points at the cause
            return {"section": first, "why": why, "differing_sections": differing[:12]}
    offset = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return {"offset": offset, "sizes": [len(a), len(b)]}


def reproduce_target(*, srctree: Path, files: Artifacts, variables: dict[str, str], goals: list[str], jobs: int,
                     label: str, env: dict[str, str]) -> dict:
    """Rebuild in files.rebuild_kbuild from the same .config and make variables; write reproduce.json."""
    files.reproduce.unlink(missing_ok=True)
    shutil.rmtree(files.rebuild_dir, ignore_errors=True)
    files.rebuild_kbuild.mkdir(parents=True)
    shutil.copy2(files.config, files.rebuild_kbuild / ".config")
    carried = carry_signing_key(files.kbuild, files.rebuild_kbuild)  # the same certificate in both images
    started = time.monotonic()
    variables = stamped(variables, srctree, env)
    run_make(srctree, files.rebuild_kbuild, variables, goals, jobs, files.rebuild_log, f"{label} again",
             {"CCACHE_DISABLE": "1"})
    if "modules" in goals:
        make_modules(srctree, files.rebuild_kbuild, variables, jobs,
                     files.rebuild_dir / MODULES_LOG, f"{label} again", {"CCACHE_DISABLE": "1"}, env)
    images = {}
    for name, path in files.images.items():
        again = files.rebuild_kbuild / path.relative_to(files.kbuild)
        entry = {"first": sha256_of(path), "second": sha256_of(again) if again.is_file() else None}
        entry["identical"] = entry["first"] == entry["second"]
        if not entry["identical"] and again.is_file():
            entry["first_difference"] = first_difference(path, again)
        images[name] = entry
    identical = all(entry["identical"] for entry in images.values())
    record = {"identical": identical, "images": images, "first_build": str(files.kbuild),
              "second_build": str(files.rebuild_kbuild), "seconds": round(time.monotonic() - started, 1),
              "ccache": "disabled for the second build", "signing_key_carried": carried,
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if identical:
        shutil.rmtree(files.rebuild_dir, ignore_errors=True)
        record["second_build"] += " (removed: identical)"
    write_json_atomically(files.reproduce, record)
    if not identical:
        parts = [f"{name} differs ({_where(entry.get('first_difference'))})" for name, entry in images.items()
                 if not entry["identical"]]
        raise VerificationFailed(f"{label} is not reproducible: {'; '.join(parts)}. Both builds are kept "
                                 f"({files.kbuild} and {files.rebuild_kbuild}); compare them with diffoscope, and see "
                                 f"{files.reproduce}.")
    info(f"reproduced {label}: {len(images)} image(s) identical in a second build dir "
         f"({record['seconds']:.0f}s without the compile cache)")
    return record


def _where(difference: dict | None) -> str:
    if not difference:
        return "missing from the second build"
    if "section" in difference:
        others = [name for name in difference.get("differing_sections", []) if name != difference["section"]]
        also = f"; also {', '.join(others)}" if others else ""
        return f"first differing ELF section {difference['section']}: {difference['why']}{also}"
    return f"first differing byte at offset {difference['offset']}"


# --- the stage ---------------------------------------------------------------------------------
def run(ctx: Context) -> None:
    from ktailor.stages.build import build_env

    reproduce_target(srctree=ctx.source_tree, files=ctx.files, variables=ctx.checked_make_vars(),
                     goals=ctx.the_target.make_goals, jobs=jobs_from_env(ctx.project.env), label=ctx.label,
                     env=build_env(ctx))


STAGE = Stage(
    "reproduce", "build each target again in a second build dir, without the compile cache, and compare images",
    doc=lambda ctx: f"rebuild {ctx.label} elsewhere and compare every image's sha256 (reproduce.json)",
    run=run,
    inputs=lambda ctx: [*ctx.files.images.values(), ctx.files.config, ctx.source_stamp],
    outputs=lambda ctx: [ctx.files.reproduce],
    state=Context.toolchain_state,
    clean=lambda ctx: removes(ctx.files.rebuild_dir),
)
