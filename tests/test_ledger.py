"""The static cost ledger: kbuild Makefile lines to options, object sizes from the ELF itself."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ktailor.stages.ledger import CORE, UNATTRIBUTED, Attributor, elf_sizes, parse_makefile

MAKEFILE = """\
# SPDX-License-Identifier: GPL-2.0
obj-y := core_a.o core_b.o \\
         core_c.o
obj-$(CONFIG_FEATURE) += feature.o sub/
obj-y += always/
page-alloc-y := page_alloc.o
page-alloc-$(CONFIG_SHUFFLE) += shuffle.o
obj-y += page-alloc.o
dm-mod-y += dm.o dm-table.o
obj-$(CONFIG_BLK_DEV_DM) += dm-mod.o
ifdef CONFIG_GUARDED
obj-y += guarded.o
else
obj-y += unguarded.o
endif
ifeq ($(CONFIG_EQ),y)
obj-y += eq.o
endif
obj-y += entry_$(BITS).o
"""


def test_makefile_lines_give_each_object_its_condition():
    makefile = parse_makefile(MAKEFILE)
    assert makefile.conditions["core_c.o"] == "y"  # a continued line
    assert makefile.conditions["feature.o"] == "FEATURE" and makefile.conditions["sub/"] == "FEATURE"
    assert makefile.parts["page_alloc.o"] == ("page-alloc.o", "y")
    assert makefile.parts["shuffle.o"] == ("page-alloc.o", "SHUFFLE")
    assert makefile.parts["dm-table.o"] == ("dm-mod.o", "y")
    assert makefile.conditions["guarded.o"] == "GUARDED" and makefile.conditions["unguarded.o"] == "y"
    assert makefile.conditions["eq.o"] == "EQ" and makefile.conditions["entry_64.o"] == "y"


def test_objects_are_charged_to_the_option_that_pulled_them_or_their_directory_in(tmp_path):
    tree = tmp_path / "linux"
    (tree / "mm" / "sub" / "deeper").mkdir(parents=True)
    (tree / "mm" / "always").mkdir()
    (tree / "mm" / "Makefile").write_text(MAKEFILE)
    (tree / "mm" / "sub" / "Makefile").write_text("obj-y += inner.o deeper/\nobj-$(CONFIG_OWN) += own.o\n")
    (tree / "mm" / "sub" / "deeper" / "Makefile").write_text("obj-y += deepest.o\n")
    (tree / "mm" / "always" / "Makefile").write_text("obj-y += plain.o\n")
    attribute = Attributor(tree).option_of
    assert attribute("mm/core_a.o") == CORE  # top-level directory, unconditional line
    assert attribute("mm/feature.o") == "FEATURE"
    assert attribute("mm/page_alloc.o") == CORE and attribute("mm/shuffle.o") == "SHUFFLE"
    assert attribute("mm/dm.o") == "BLK_DEV_DM"  # a composite's part: the composite's option
    assert attribute("mm/sub/inner.o") == "FEATURE"  # obj-y inside a directory entered under FEATURE
    assert attribute("mm/sub/deeper/deepest.o") == "FEATURE"  # …however deep
    assert attribute("mm/sub/own.o") == "OWN"  # its own line is more specific
    assert attribute("mm/always/plain.o") == CORE
    assert attribute("mm/generated.o") == UNATTRIBUTED


@pytest.mark.skipif(not shutil.which("gcc") or not shutil.which("size"), reason="needs gcc and binutils")
def test_object_sizes_come_from_its_allocated_sections_as_binutils_counts_them(tmp_path):
    source = tmp_path / "sized.c"
    source.write_text("char zeroed[4096];\nint table[256] = {1};\nint twice(int x) { return x * 2; }\n")
    obj = tmp_path / "sized.o"
    subprocess.run(["gcc", "-O2", "-c", str(source), "-o", str(obj)], check=True)
    sizes = elf_sizes(obj)
    assert sizes.bss >= 4096 and sizes.data >= 1024 and sizes.text > 0
    berkeley = subprocess.run(["size", str(obj)], capture_output=True, text=True, check=True).stdout.splitlines()[1]
    assert int(re.split(r"\s+", berkeley.strip())[3]) == sizes.total  # `dec`: every allocated byte
    with pytest.raises(Exception, match="not a 64-bit ELF object"):
        elf_sizes(Path(__file__))
