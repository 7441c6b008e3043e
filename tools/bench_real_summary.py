"""`./just bench-real`'s summary: its spec-bench reports as Markdown, and what the speedup targets would need.

    python -m tools.bench_real_summary out/bench-real/report-t0.json out/bench-real/report-t0.7.json
        [--target humaneval=1.8 --target mt-bench=1.4]

For each report: every prompt set and k, and each category at its set's best k (the model card's
table), then the costs timed alone. For each target: at every k, the acceptance α a draft would need
for S = E(α) / (k·c + v) to reach it with this engine's isolated c and v (none when even α = 1
falls short), beside the α and τ the draft measured — why a target is or is not reached follows
from these costs and τ, not from the engine (whose efficiency the table shows).
"""

from __future__ import annotations

from typing import Sequence

from libspec.bench.measure import acceptance_needed, expected_tokens_per_step
from libspec.bench.report_check import load_report
from libspec.errors import SpecError
from libspec.publish.model_card import measured_table, number
from tools._cli import EXIT_OK, make_parser, run, stdout

DEFAULT_TARGETS = ("humaneval=1.8", "mt-bench=1.4")  # issue 12's speedup targets, batch 1, greedy


def parse_target(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name, float(value)
    except ValueError:
        raise SpecError(f"--target {text!r}: expected SET=SPEEDUP, e.g. humaneval=1.8") from None


def read_report(path: str) -> dict:
    report = load_report(path)
    if report.get("format") != "spec-tools/bench-report":
        raise SpecError(f"{path}: not a spec-bench report (format spec-tools/bench-report)")
    return report


def report_section(path: str, report: dict) -> str:
    settings = report["settings"]
    mode = "greedy" if settings["temperature"] == 0 else f"temperature {settings['temperature']}"
    lines = [
        f"#### `{path}`: {mode}, {settings['max_new_tokens']} new tokens per prompt",
        "",
        f"{report['hardware']}, {report['dtype']}; kernels: {report.get('kernels', {}).get('note', 'not recorded')}.",
        "",
        measured_table(report),
        "",
    ]
    for prompt_set in report["prompt_sets"]:
        lines.append(f"- {prompt_set['name']}: {isolated_costs_text(prompt_set)}")
    return "\n".join(lines)


def isolated_costs_text(prompt_set: dict) -> str:
    costs = prompt_set.get("isolated_costs")
    if not costs:
        return "no isolated costs"
    d = costs["derived"]
    v = ", ".join(f"{n}: {number(value)}" for n, value in sorted(d["verify_cost_v"].items(), key=lambda item: int(item[0])))
    step = "—" if d["step_1_s"] is None else f"{d['step_1_s'] * 1000:.1f} ms"
    return f"costs timed alone ({len(costs['context_tokens'])} passes): 1-token step {step}, draft step c = {number(d['draft_cost_c'])}, v(k+1) = {v}"


def targets_section(report: dict, targets: list[tuple[str, float]]) -> str:
    """At each k: the α a target needs with these costs, and what the draft measured."""
    lines = [
        "| prompt set | target | k | c | v(k+1) | α needed | τ that gives | α measured | τ measured | speedup measured |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    sets = {s["name"]: s for s in report["prompt_sets"]}
    for name, target in targets:
        if name not in sets or not sets[name].get("isolated_costs"):
            continue
        for run in sets[name]["runs"]:
            d, k = run["derived"], run["k"]
            c, v = d["isolated"]["draft_cost_c"], d["isolated"]["verify_cost_v"]
            if c is None or v is None:
                continue
            alpha = acceptance_needed(target, k, c, v)
            needed = ("> 1 (out of reach at this k)", "—") if alpha is None else (number(alpha), number(expected_tokens_per_step(alpha, k)))
            lines.append(
                f"| {name} | {target:.2f}× | {k} | {number(c)} | {number(v)} | {needed[0]} | {needed[1]} | "
                f"{number(d['alpha'])} | {number(d['tau'])} | {number(d['speedup'], '×')} |"
            )
    return "\n".join(lines)


def report_sections(path: str, report: dict, targets: list[tuple[str, float]]) -> list[str]:
    """The report's tables, and for a greedy one what the targets need; one line if its fields are not a report's."""
    try:
        sections = [report_section(path, report)]
        if report["settings"]["temperature"] == 0:
            sections.append("What the speedup targets need with these costs (S = E(α) / (k·c + v), c and v timed alone):\n\n" + targets_section(report, targets))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise SpecError(f"{path}: a spec-bench report without the fields of SPEC.md §12 (at {error!s:.60})") from None
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("bench-real-summary", "spec-bench reports as Markdown, and the acceptance the speedup targets would need.")
    parser.add_argument("reports", nargs="+", help="spec-bench JSON reports")
    parser.add_argument("--target", action="append", metavar="SET=SPEEDUP",
                        help=f"a speedup target for a prompt set, batch 1 greedy (default: {' '.join(DEFAULT_TARGETS)})")  # fmt: skip
    args = parser.parse_args(argv)
    targets = [parse_target(t) for t in (args.target or DEFAULT_TARGETS)]
    sections = []
    for path in args.reports:
        sections += report_sections(path, read_report(path), targets)
    stdout.print("\n\n".join(sections), markup=False, highlight=False)
    return EXIT_OK


if __name__ == "__main__":
    run(main)
