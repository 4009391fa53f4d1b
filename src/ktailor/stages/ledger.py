"""The static cost ledger: which Kconfig option put how many bytes into vmlinux, from kbuild's own records.

- What was linked: the members of the thin archives kbuild links vmlinux from (`<dir>/built-in.a`,
  `lib.a`), each an object in the build dir.
- What each object weighs: its allocated ELF sections — text (executable), data (the rest that is loaded,
  rodata included) and bss — read from the object itself.
- Why it was linked: the kbuild Makefile line that names it — `obj-$(CONFIG_X) += f.o` charges X;
  `obj-y` inherits the condition under which its directory was entered (`obj-$(CONFIG_Y) += dir/` in the
  parent, or an `ifdef CONFIG_Z` around the line); a part of a composite object (`foo-y += f.o`) is charged
  like `foo.o` unless its own line is conditional (`foo-$(CONFIG_W) += f.o`). Unconditional all the way up
  is "core". A name no Makefile line explains (generated objects, macros kbuild expands) is "unattributed".

Each option's bytes are then summed per requirement group and fragment line of the target's fragments
(an option no fragment requests is "unrequested": a default or a dependency pulled it in). The share of
vmlinux's own text+data+bss that the objects account for is reported too (the rest: linker-generated
tables, kallsyms, padding).
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ktailor.core.errors import EnvironmentProblem
from ktailor.core.progress import info
from ktailor.core.records import write_text_atomically
from ktailor.stages.base import Context, Stage

CORE = "core"
LINK = "link-time"  # what the final link adds: kallsyms, linker tables, section alignment padding, head objects
UNATTRIBUTED = "unattributed"
UNREQUESTED = "unrequested"
ASSIGN_RE = re.compile(r"^\s*([A-Za-z0-9_.$()/-]+?)\s*(?::=|\+=|=)\s*(.*)$")
COND_RE = re.compile(r"\$\(CONFIG_([A-Za-z0-9_]+)\)")
IFDEF_RE = re.compile(r"^\s*if(n?)(?:def\s+CONFIG_([A-Za-z0-9_]+)|eq\s*\(\s*\$\(CONFIG_([A-Za-z0-9_]+)\)\s*,\s*y\s*\))")

SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
SHT_NOBITS = 8


@dataclass(frozen=True)
class Sizes:
    text: int = 0
    data: int = 0
    bss: int = 0

    @property
    def total(self) -> int:
        return self.text + self.data + self.bss

    def __add__(self, other: Sizes) -> Sizes:
        return Sizes(self.text + other.text, self.data + other.data, self.bss + other.bss)


def elf_sizes(path: Path) -> Sizes:
    """text/data/bss of an ELF64 file's allocated sections (both byte orders; no external tool)."""
    raw = path.read_bytes()
    if raw[:4] != b"\x7fELF" or raw[4] != 2:
        raise EnvironmentProblem(f"{path} is not a 64-bit ELF object; rebuild the target (doit build:…).")
    order = "<" if raw[5] == 1 else ">"
    shoff, = struct.unpack_from(order + "Q", raw, 0x28)
    shentsize, shnum = struct.unpack_from(order + "HH", raw, 0x3A)
    text = data = bss = 0
    for index in range(shnum):
        _name, kind, flags, _addr, _offset, size = struct.unpack_from(order + "IIQQQQ", raw, shoff + index * shentsize)
        if not flags & SHF_ALLOC:
            continue
        if kind == SHT_NOBITS:
            bss += size
        elif flags & SHF_EXECINSTR:
            text += size
        else:
            data += size
    return Sizes(text, data, bss)


def linked_objects(kbuild: Path) -> list[str]:
    """The objects vmlinux was linked from (paths relative to kbuild), from its thin archives."""
    archives = sorted({*kbuild.glob("*/built-in.a"), *kbuild.glob("arch/*/built-in.a"), *kbuild.glob("*/lib.a"),
                       *kbuild.glob("arch/*/lib/lib.a")})
    members: dict[str, None] = {}
    for archive in archives:
        # a thin archive's members, printed relative to ar's working directory: run it in kbuild
        listed = subprocess.run(["ar", "t", str(archive.relative_to(kbuild))], capture_output=True, text=True,
                                check=False, cwd=kbuild)
        if listed.returncode != 0:
            raise EnvironmentProblem(f"`ar t {archive}` failed ({listed.stderr.strip()}); binutils' ar is needed.")
        for member in listed.stdout.split():
            if member.endswith(".o") and not member.endswith("built-in.a"):
                members.setdefault(os.path.normpath(member), None)
    return list(members)


@dataclass
class Makefile:
    """One kbuild Makefile's object lists: name -> the condition of the line naming it, and composite parts."""

    conditions: dict[str, str] = field(default_factory=dict)  # "f.o" / "sub/" -> symbol or "y"
    parts: dict[str, tuple[str, str]] = field(default_factory=dict)  # "f.o" -> (composite "foo.o", symbol or "y")


def parse_makefile(text: str) -> Makefile:
    result = Makefile()
    guards: list[str | None] = []
    text = text.replace("$(BITS)", "64")  # x86's `entry_$(BITS).o`; ktailor's arches are both 64-bit
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.split("#", 1)[0]
        if match := IFDEF_RE.match(line):
            guards.append(None if match[1] else (match[2] or match[3]))
            continue
        if re.match(r"^\s*if", line):
            guards.append(None)
            continue
        if re.match(r"^\s*endif", line):
            if guards:
                guards.pop()
            continue
        if re.match(r"^\s*else", line) and guards:
            guards[-1] = None
            continue
        if not (match := ASSIGN_RE.match(line)):
            continue
        lhs, rhs = match[1], match[2].split()
        guard = next((g for g in reversed(guards) if g), None)
        symbol = (found[0] if (found := COND_RE.findall(lhs)) else None) or guard or "y"
        if lhs.startswith(("obj-", "lib-")):
            for name in rhs:
                result.conditions.setdefault(name, symbol)
            continue
        owner = re.match(r"^([A-Za-z0-9_-]+?)-(?:objs|y|\$\(CONFIG_[A-Za-z0-9_]+\))$", lhs)
        if owner:
            for name in rhs:
                result.parts.setdefault(name, (f"{owner[1]}.o", symbol))
    return result


class Attributor:
    """Why each linked object is there: the option of the Makefile lines that pulled it (and its dirs) in."""

    def __init__(self, srctree: Path) -> None:
        self.srctree = srctree
        self._makefiles: dict[str, Makefile | None] = {}

    def _makefile(self, directory: str) -> Makefile | None:
        if directory not in self._makefiles:
            for name in ("Kbuild", "Makefile"):
                path = self.srctree / directory / name
                if path.is_file():
                    self._makefiles[directory] = parse_makefile(path.read_text(errors="replace"))
                    break
            else:
                self._makefiles[directory] = None
        return self._makefiles[directory]

    def option_of(self, obj: str) -> str:
        directory, name = os.path.split(obj)
        return self._of(directory, name, depth=0)

    def _of(self, directory: str, name: str, depth: int) -> str:
        if depth > 8:
            return UNATTRIBUTED
        makefile = self._makefile(directory)
        if makefile is None:
            return UNATTRIBUTED
        if name in makefile.parts:
            composite, symbol = makefile.parts[name]
            return symbol if symbol != "y" else self._of(directory, composite, depth + 1)
        symbol = makefile.conditions.get(name)
        if symbol is None:
            return UNATTRIBUTED
        return symbol if symbol != "y" else self._dir(directory)

    def _dir(self, directory: str) -> str:
        """The option under which kbuild enters `directory`, or core."""
        if not directory or directory.count("/") == 0 or re.fullmatch(r"arch/[^/]+", directory):
            return CORE  # entered by the top Makefile (core-y, drivers-y…) or the arch Makefile
        parent, base = os.path.split(directory)
        makefile = self._makefile(parent)
        symbol = makefile.conditions.get(base + "/") if makefile else None
        if symbol is None:
            return CORE if makefile is None and parent.startswith("arch/") else UNATTRIBUTED
        return symbol if symbol != "y" else self._dir(parent)


def requests_of(fragments: list, requested: dict) -> dict[str, tuple[str, str]]:
    """symbol -> (requirement group, fragment:line) of each option the target's fragments request."""
    found = {}
    for fragment in fragments:
        for option in fragment.options:
            if requested.get(option.symbol) is option:
                found[option.symbol] = (fragment.requirement or "(no header)", option.where)
    return found


def build_ledger(*, kbuild: Path, srctree: Path, vmlinux: Path, requested: dict[str, tuple[str, str]]) -> dict:
    """`requested`: symbol -> (requirement group, fragment:line) of the target's requests (requests_of)."""
    attributor = Attributor(srctree)
    by_option: dict[str, Sizes] = defaultdict(Sizes)
    objects_of: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for obj in linked_objects(kbuild):
        path = kbuild / obj
        if not path.is_file():
            continue
        sizes = elf_sizes(path)
        option = attributor.option_of(obj)
        by_option[option] = by_option[option] + sizes
        objects_of[option].append((obj, sizes.total))
    image = elf_sizes(vmlinux)
    objects_total = sum(by_option.values(), Sizes())
    counted = objects_total.total
    link = max(0, image.total - counted)
    options = []
    by_group: dict[str, int] = defaultdict(int)
    for option, sizes in sorted(by_option.items(), key=lambda item: -item[1].total):
        wanted = requested.get(option)
        group = (wanted[0] if wanted else UNREQUESTED) if option not in (CORE, UNATTRIBUTED) else option
        by_group[group] += sizes.total
        options.append({"option": option if option in (CORE, UNATTRIBUTED) else f"CONFIG_{option}",
                        "bytes": sizes.total, "text": sizes.text, "data": sizes.data, "bss": sizes.bss,
                        "objects": len(objects_of[option]), "group": group,
                        "where": wanted[1] if wanted else "",
                        "largest": [o for o, _ in sorted(objects_of[option], key=lambda x: -x[1])[:5]]})
    by_group[LINK] = link
    unattributed = by_option.get(UNATTRIBUTED, Sizes()).total
    return {"vmlinux": {"text": image.text, "data": image.data, "bss": image.bss, "total": image.total},
            "objects": sum(len(v) for v in objects_of.values()), "objects_bytes": counted, "link_bytes": link,
            "link": {"text": image.text - objects_total.text, "data": image.data - objects_total.data,
                     "bss": image.bss - objects_total.bss},
            "attributed_share": round(1 - unattributed / image.total, 4) if image.total else 0,
            "groups": dict(sorted(by_group.items(), key=lambda item: -item[1])), "options": options}


def render_ledger(ledger: dict, label: str, top: int = 20) -> str:
    total = ledger["vmlinux"]["total"]
    share = lambda n: f"{100 * n / total:.1f} %" if total else "-"  # noqa: E731 - a one-line formatter
    lines = [f"# What each option costs: {label}", "",
             f"vmlinux text+data+bss: {total:,} B. Its {ledger['objects']} linked objects: "
             f"{ledger['objects_bytes']:,} B, each charged to the option whose kbuild line pulled it in, or to core; "
             f"the final link adds {ledger['link_bytes']:,} B ({LINK}: kallsyms, linker tables, alignment padding). "
             f"Attributed: {100 * ledger['attributed_share']:.1f} % of vmlinux.", "",
             "## By requirement group", "", "| group | bytes | share of vmlinux |", "|---|---:|---:|"]
    lines += [f"| {group} | {size:,} | {share(size)} |" for group, size in ledger["groups"].items()]
    lines += ["", f"## The {top} costliest options", "", "| option | bytes | text | data | bss | objects | group | "
              "fragment:line |", "|---|---:|---:|---:|---:|---:|---|---|"]
    lines += [f"| `{o['option']}` | {o['bytes']:,} | {o['text']:,} | {o['data']:,} | {o['bss']:,} | {o['objects']} | "
              f"{o['group']} | {o['where']} |" for o in ledger["options"][:top]]
    return "\n".join(lines) + "\n"


def write_ledger(ledger: dict, out_json: Path, out_md: Path, label: str) -> None:
    write_text_atomically(out_json, json.dumps(ledger, indent=1) + "\n")
    write_text_atomically(out_md, render_ledger(ledger, label))


def option_cost(ledger: dict, option: str) -> dict | None:
    wanted = option if option.startswith("CONFIG_") or option in (CORE, UNATTRIBUTED) else f"CONFIG_{option}"
    return next((o for o in ledger["options"] if o["option"] == wanted), None)


def cost_text(ledger_path: Path, label: str, option: str | None = None, top: int = 20) -> str:
    """`invoke cost`: the ledger's tables, or one option's bytes and its largest objects."""
    from ktailor.core.records import read_report

    ledger = read_report(ledger_path, "ledger")
    if option is None:
        return render_ledger(ledger, label, top)
    found = option_cost(ledger, option)
    if found is None:
        return (f"{option} puts no object into {label}'s vmlinux (it is off, or its code sits in objects charged "
                "to the option that pulled their directory or file in).\n")
    total = ledger["vmlinux"]["total"]
    return (f"{found['option']} in {label}: {found['bytes']:,} B ({100 * found['bytes'] / total:.2f} % of vmlinux; "
            f"text {found['text']:,}, data {found['data']:,}, bss {found['bss']:,}) in {found['objects']} objects, "
            f"group {found['group']}{', ' + found['where'] if found['where'] else ''}\n"
            f"largest: {', '.join(found['largest'])}\n")


# --- the stage ---------------------------------------------------------------------------------
def run(ctx: Context) -> None:
    from ktailor.kconfig.fragments import load_fragments, requested_options

    project, row, files = ctx.project, ctx.the_target, ctx.files
    fragments = load_fragments(project.fragment_paths(row), project.root)
    wanted = requests_of(fragments, requested_options(fragments, row.arch.name, ctx.the_kernel.version_tuple))
    result = build_ledger(kbuild=files.kbuild, srctree=ctx.source_tree, vmlinux=files.kbuild / "vmlinux",
                          requested=wanted)
    write_ledger(result, files.ledger_json, files.ledger_md, ctx.label)
    costliest = next((o for o in result["options"] if o["option"].startswith("CONFIG_")), None)
    info(f"ledger {ctx.label}: {100 * result['attributed_share']:.1f} % of vmlinux attributed"
         + (f"; costliest option {costliest['option']} {costliest['bytes']:,} B" if costliest else "")
         + f" ({project.display(files.ledger_md)})")


STAGE = Stage(
    "ledger", "attribute each target's vmlinux bytes to the options that pulled them in (ledger.json, ledger.md)",
    doc=lambda ctx: f"what each option costs in {ctx.label}'s vmlinux",
    run=run,
    inputs=lambda ctx: [*ctx.files.images.values(), ctx.files.sources, *ctx.project.fragment_paths(ctx.the_target),
                        *ctx.project.list_paths(ctx.the_target)],
    outputs=lambda ctx: [ctx.files.ledger_json, ctx.files.ledger_md],
)
