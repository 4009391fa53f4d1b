"""bench/cache.py's perfect-cache bound: what no compile cache can beat for a real release pair."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from cache import perfect_cache_bound  # noqa: E402


@pytest.mark.parametrize(("clean", "again", "hits", "misses", "bound"), [
    (400.0, 70.0, 0, 1000, 400.0),  # nothing unchanged: the bound is a clean build
    (400.0, 70.0, 1000, 0, 70.0),  # nothing changed: the bound is the fully warm rebuild
    (393.0, 68.0, 94, 1047, 68.0 + 325.0 * 1047 / 1141),  # the 6.1.187 → 6.1.192 run in README
    (400.0, 70.0, 0, 0, 70.0),  # no compile went through the cache
], ids=["all-changed", "none-changed", "6.1.187-to-6.1.192", "no-compiles"])
def test_the_bound_charges_only_the_changed_objects_beyond_what_no_cache_removes(clean, again, hits, misses, bound):
    assert perfect_cache_bound(clean, again, hits, misses) == pytest.approx(bound)
