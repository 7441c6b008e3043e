"""A PNG of a bench report: speedup (measured and predicted) and τ against k, and per-position acceptance.

The prediction drawn is the one from the isolated costs; reports from before them show the in-run one.
"""

from __future__ import annotations

from pathlib import Path

from libspec.format.atomic import atomic_path
from libspec.errors import SpecError


def plot_report(report: dict, path: str | Path) -> Path:
    """Draw one row of two panels per prompt set; needs the optional matplotlib (`pip install spec-tools[plot]`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise SpecError("--plot needs matplotlib: pip install 'spec-tools[plot]'") from None
    sets = [s for s in report["prompt_sets"] if s["runs"]]
    if not sets:
        raise SpecError("--plot: the report has no speculative runs to draw (no --speculator?)")
    figure, axes = plt.subplots(len(sets), 2, figsize=(11, 3.6 * len(sets)), squeeze=False)
    for row, prompt_set in zip(axes, sets):
        _draw_speedup(row[0], prompt_set)
        _draw_acceptance(row[1], prompt_set)
    figure.suptitle(f"spec-bench: {report['verifier']['name_or_path']} + {(report.get('speculator') or {}).get('path', '')}", fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return Path(path)


def _draw_speedup(axis, prompt_set: dict) -> None:
    ks = [r["k"] for r in prompt_set["runs"]]
    derived = [r["derived"] for r in prompt_set["runs"]]
    axis.plot(ks, [d["speedup"] for d in derived], "o-", label="speedup (measured)")
    if all("isolated" in d for d in derived):
        axis.plot(ks, [d["isolated"]["predicted_speedup"] for d in derived], "s--", label="speedup (predicted from isolated costs)")
    else:
        axis.plot(ks, [d["predicted_speedup"] for d in derived], "s--", label="speedup (predicted from in-run costs)")
    axis.plot(ks, [d["tau"] for d in derived], "^:", label="τ (tokens / verifier step)")
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.set_xlabel("k (drafted tokens per step)")
    axis.set_title(f"{prompt_set['name']}: best k = {prompt_set['best_k']}")
    axis.legend(fontsize=8)


def _draw_acceptance(axis, prompt_set: dict) -> None:
    for run in prompt_set["runs"]:
        positions = list(range(1, run["k"] + 1))
        axis.plot(positions, run["derived"]["per_position_acceptance"], "o-", label=f"k={run['k']}")
    axis.set_ylim(0, 1)
    axis.set_xlabel("draft position")
    axis.set_ylabel("P(accepted)")
    axis.set_title("per-position acceptance")
    axis.legend(fontsize=7, ncol=2)
