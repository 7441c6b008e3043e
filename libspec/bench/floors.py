"""Per-domain floors: a release gate on a bench report, per prompt set or per category.

A floor reads `SET[/CATEGORY]:METRIC>=VALUE`, e.g. `humaneval:tau>=2.5` or
`mt-bench/math:speedup>=1.1`; METRIC is `tau` or `speedup`. It is checked at the k the draft would
be served with: the prompt set's best k (the highest measured speedup without a sanity flag, the
one `--write-best-k` stores), also for the set's categories. A pooled figure can look fine while
one domain regressed; floors name the domain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from libspec.errors import SpecError

METRICS = ("tau", "speedup")
SYNTAX = re.compile(r"^(?P<set>[^/:\s]+)(?:/(?P<category>[^:\s]+))?:(?P<metric>\w+)>=(?P<value>[0-9.]+)$")


@dataclass(frozen=True)
class Floor:
    """One required minimum: `metric` of a prompt set (or of one of its categories) at its best k."""

    prompt_set: str
    category: str | None
    metric: str
    minimum: float

    @property
    def text(self) -> str:
        where = self.prompt_set + (f"/{self.category}" if self.category else "")
        return f"{where}:{self.metric}>={self.minimum:g}"


@dataclass(frozen=True)
class FloorResult:
    floor: Floor
    value: float | None  # None: not measured
    k: int | None
    source: str  # which report

    @property
    def met(self) -> bool:
        return self.value is not None and self.value >= self.floor.minimum

    def describe(self) -> str:
        if self.value is None:
            return f"floor {self.floor.text} not met: {self.source}"
        verdict = "met" if self.met else "NOT met"
        return f"floor {self.floor.text} {verdict}: {self.floor.metric} {self.value:.3f} at k={self.k} ({self.source})"


def parse_floor(text: str) -> Floor:
    """A Floor from `SET[/CATEGORY]:METRIC>=VALUE`; SpecError naming the expected form otherwise."""
    match = SYNTAX.match(text.strip())
    if not match or match["metric"] not in METRICS:
        raise SpecError(f"--require {text!r}: expected SET[/CATEGORY]:METRIC>=VALUE with METRIC one of {', '.join(METRICS)}, e.g. humaneval:tau>=2.5")
    try:
        minimum = float(match["value"])
    except ValueError:
        raise SpecError(f"--require {text!r}: {match['value']!r} is not a number") from None
    return Floor(match["set"], match["category"], match["metric"], minimum)


def check_floors(floors: list[Floor], reports: list[tuple[str, dict]]) -> list[FloorResult]:
    """Each floor against the first report (name, report) that measured its prompt set."""
    return [_check(floor, reports) for floor in floors]


def _check(floor: Floor, reports: list[tuple[str, dict]]) -> FloorResult:
    for name, report in reports:
        for entry in report.get("prompt_sets", []):
            if entry.get("name") != floor.prompt_set:
                continue
            k = entry.get("best_k")
            scope = entry if floor.category is None else _category(entry, floor.category)
            if scope is None:
                return FloorResult(floor, None, k, f"{name} has no category {floor.category!r} in {floor.prompt_set}")
            row = next((r for r in scope.get("runs", []) if r.get("k") == k), None)
            value = None if row is None else row["derived"].get(floor.metric)
            return FloorResult(floor, value, k, name if value is not None else f"{name} measured no {floor.metric} at k={k}")
    measured = sorted({e.get("name") for _, r in reports for e in r.get("prompt_sets", [])})
    return FloorResult(floor, None, None, f"no report measured {floor.prompt_set!r} (measured: {', '.join(measured) or 'nothing'})")


def _category(entry: dict, name: str) -> dict | None:
    return next((c for c in entry.get("categories") or [] if c.get("name") == name), None)
