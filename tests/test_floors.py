"""Issue 12 item 8: per-domain floors, checked at the best k, per prompt set or category."""

from __future__ import annotations

import pytest

from libspec.bench.floors import check_floors, parse_floor
from libspec.errors import SpecError


def rows(*values):  # (k, tau, speedup)
    return [{"k": k, "derived": {"tau": tau, "speedup": speedup}} for k, tau, speedup in values]


REPORT = {"prompt_sets": [
    {"name": "humaneval", "best_k": 2, "runs": rows((1, 1.8, 1.3), (2, 2.6, 1.5), (3, 3.0, 1.4))},
    {"name": "mt-bench", "best_k": 1, "runs": rows((1, 1.7, 1.2), (2, 2.1, 1.1)),
     "categories": [{"name": "math", "best_k": 2, "runs": rows((1, 1.5, 1.05), (2, 1.9, 1.0))},
                    {"name": "coding", "best_k": 1, "runs": rows((1, 2.2, 1.4), (2, 2.9, 1.6))}]},
]}  # fmt: skip


def test_parse():
    floor = parse_floor("mt-bench/math:tau>=1.8")
    assert (floor.prompt_set, floor.category, floor.metric, floor.minimum) == ("mt-bench", "math", "tau", 1.8)
    assert parse_floor("humaneval:speedup>=1.5").text == "humaneval:speedup>=1.5"
    for bad in ("humaneval:tau>2", "humaneval:acc>=0.5", "tau>=2", "humaneval:tau>=x"):
        with pytest.raises(SpecError, match="expected SET"):
            parse_floor(bad)


def test_floors_are_checked_at_the_sets_best_k():
    results = check_floors([parse_floor(t) for t in ("humaneval:tau>=2.5", "humaneval:tau>=2.7", "mt-bench:speedup>=1.2")], [("r.json", REPORT)])
    assert [(r.met, r.value, r.k) for r in results] == [(True, 2.6, 2), (False, 2.6, 2), (True, 1.2, 1)]
    assert "NOT met: tau 2.600 at k=2 (r.json)" in results[1].describe()


def test_a_category_regression_is_caught_while_the_pooled_figure_passes():
    # pooled mt-bench at its best k (1): τ 1.7 passes 1.6; math at that same k: 1.5 misses 1.6
    pooled, math, coding = check_floors([parse_floor(t) for t in ("mt-bench:tau>=1.6", "mt-bench/math:tau>=1.6", "mt-bench/coding:tau>=1.6")], [("r", REPORT)])
    assert pooled.met and not math.met and math.value == 1.5 and coding.met and coding.value == 2.2


def test_unmeasured_sets_and_categories_miss():
    missing_set, missing_category = check_floors([parse_floor("gsm8k:tau>=1"), parse_floor("mt-bench/poetry:tau>=1")], [("r", REPORT)])
    assert not missing_set.met and "measured: humaneval, mt-bench" in missing_set.describe()
    assert not missing_category.met and "no category 'poetry'" in missing_category.describe()
