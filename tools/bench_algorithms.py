"""`./just bench-algorithms`: EAGLE-3, DFlash, EAGLE-1 and HASS variants trained on one SmolLM2 data
set with one step budget, then measured by spec-bench on the same prompt sets, in one table and plot.

    python -m tools.bench_algorithms [--steps N] [--prompts N] [--sets mt-bench:8 humaneval:8] [--k 1-4]
                                     [--variants 'NAME=SPEC-TRAIN-OPTIONS' ...] [--json]

Every stage keeps its output in --output and is skipped on a rerun when its record is there (the
prompts, the capture, each variant's training and each bench report), so a rerun only re-measures
what is missing; an interrupted training resumes (spec-train's own resume). Training wall-clock is
the whole spec-train process; its tokens/s counts the algorithm's supervised positions per second of
optimizer steps. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from rich.markup import escape
from rich.table import Table

from libspec.bench import algorithm_comparison as comparison
from libspec.bench.algorithm_comparison import ComparisonOptions, Variant
from libspec.errors import SpecError
from libspec.format.atomic import write_text_atomic
from libspec.format.json_files import read_json_object
from tools._cli import EXIT_OK, add_options, make_parser, options_from_args, print_json, run, stderr, stdout
from tools.child_memory import MeasuredChild

REPO = Path(__file__).resolve().parent.parent


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("bench-algorithms", __doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    add_options(parser, ComparisonOptions, "the budget and the measurement")
    defaults = ComparisonOptions()
    parser.add_argument("--sets", nargs="+", default=list(defaults.sets), metavar="SET", help=f"spec-bench prompt sets (default {' '.join(defaults.sets)})")
    parser.add_argument("--variants", nargs="+", default=list(defaults.variants), metavar="VARIANT",
                        help="variants as NAME=SPEC-TRAIN-OPTIONS, each quoted (default: " + "; ".join(defaults.variants) + ")")  # fmt: skip
    parser.add_argument("--plot", default=None, help="PNG of τ against k (default OUTPUT/tau-vs-k.png)")
    args = parser.parse_args(argv)
    options = options_from_args(ComparisonOptions, args, sets=tuple(args.sets), variants=tuple(args.variants))
    variants = comparison.parse_variants(options.variants)
    result = compare(options, variants, Path(args.plot or Path(options.output) / "tau-vs-k.png"))
    if args.json:
        print_json(result)
    else:
        print_table(result)
    return EXIT_OK


def compare(options: ComparisonOptions, variants: list[Variant], plot_path: Path) -> dict:
    """The whole run: prompts, one capture, each variant trained and benched; returns the document."""
    out = Path(options.output)
    out.mkdir(parents=True, exist_ok=True)
    verifier = _python(["tools.build_smollm2"])[0].strip()
    if not (out / "prompts.jsonl").is_file():
        _python(["tools.instruction_prompts", "--limit", str(options.prompts), "-o", str(out / "prompts.jsonl")])
    depth = int(read_json_object(Path(verifier) / "config.json")["num_hidden_layers"])
    _stage(out / "capture.json", comparison.capture_command(options, verifier, comparison.capture_layers(variants, depth)))
    runs = [(v.name, _train(options, verifier, v), out / f"train-{v.name}" / "best") for v in variants]
    if options.upstream_dflash:
        runs.append(_upstream_dflash(options, verifier, variants))
    rows, curves, hardware = [], {}, None
    for name, training, checkpoint in runs:
        report = _bench(options, verifier, name, checkpoint)
        rows += comparison.comparison_rows(name, report, training)
        curves[name] = comparison.tau_curves(report)
        hardware = report["hardware"]
    trainings = {name: training for name, training, _ in runs}
    machine = f"{hardware}; {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f} at the end"
    comparison.plot_tau_curves(curves, plot_path, f"bench-algorithms on SmolLM2-135M-Instruct, {options.steps} steps each — {machine}")
    reference = variants[0].name if variants else None
    document = {"machine": machine, "options": _jsonable(options), "verifier": verifier, "trainings": trainings,
                "rows": rows, "tau_ratios": {"reference": reference, "ratios": comparison.tau_ratios(rows, reference)}, "plot": str(plot_path)}  # fmt: skip
    write_text_atomic(out / "comparison.json", json.dumps(document, indent=2) + "\n")
    return document


def _train(options: ComparisonOptions, verifier: str, variant: Variant) -> dict:
    """Train one variant (skipped when its record is there) and summarise the run."""
    out = Path(options.output)
    record_path = out / f"train-{variant.name}.json"
    record = _stage(record_path, comparison.train_command(options, verifier, variant))
    metrics = [json.loads(line) for line in (out / f"train-{variant.name}" / "metrics.jsonl").read_text("utf-8").splitlines() if line.strip()]
    return {**comparison.training_summary(metrics, record["wall_s"]), "peak_rss_bytes": record["peak_rss_bytes"]}


def _bench(options: ComparisonOptions, verifier: str, name: str, checkpoint: Path) -> dict:
    report_path = Path(options.output) / f"bench-{name}.json"
    _stage(report_path.with_suffix(".record.json"), comparison.bench_command(options, verifier, name, checkpoint))
    return read_json_object(report_path)


def _upstream_dflash(options: ComparisonOptions, verifier: str, variants: list[Variant]) -> tuple[str, dict, Path]:
    """Upstream's DFlash trainer on the first dflash variant's batches: (name, training summary, checkpoint)."""
    from libspec.validate.gates import gate_python

    mirror = next((v for v in variants if v.algorithm == "dflash"), None)
    if mirror is None:
        raise SpecError("--upstream-dflash: no dflash variant among --variants to mirror")
    python = os.environ.get("SPEC_UPSTREAM_PYTHON") or gate_python()
    if not python:
        raise SpecError("--upstream-dflash: no Python with upstream speculators: set SPEC_UPSTREAM_PYTHON or run ./just gates")
    name = f"{mirror.name}-upstream"
    checkpoint = Path(options.output) / f"train-{name}"
    record = _stage(checkpoint.with_suffix(".json"), comparison.upstream_dflash_command(options, verifier, mirror, checkpoint), str(python))
    result = json.loads(record["last_line"])
    training = {"steps": result["steps"], "wall_s": record["wall_s"], "queries": result["tokens"],
                "tokens_per_s": result["tokens_per_s"], "peak_rss_bytes": record["peak_rss_bytes"], "trainer": result["trainer"]}  # fmt: skip
    return name, training, checkpoint


def _stage(record_path: Path, command: list[str], python: str = sys.executable) -> dict:
    """Run `PYTHON -m COMMAND` unless `record_path` records this very command as done; returns the
    record: the command, its wall-clock seconds, its peak resident memory and its last stdout line."""
    if record_path.is_file():
        record = read_json_object(record_path)
        if record.get("command") == command:
            stderr.print(f"bench-algorithms: reusing {escape(str(record_path))}")
            return record
        raise SpecError(f"{record_path}: made by another command ({' '.join(record.get('command', []))}); "
                        f"use another --output or delete it to redo that stage")  # fmt: skip
    started = time.perf_counter()
    last_line, peak_rss_bytes = _python(command, python)
    record = {"command": command, "wall_s": time.perf_counter() - started, "peak_rss_bytes": peak_rss_bytes, "last_line": last_line}
    write_text_atomic(record_path, json.dumps(record, indent=2) + "\n")
    return record


def _python(command: list[str], python: str = sys.executable) -> tuple[str, int]:
    """`python -m ...` in this checkout; returns its last stdout line and its
    own peak RSS (tools/child_memory.py: this child alone). A failure is a one-line error naming the stage."""
    stderr.print(f"bench-algorithms: python -m {escape(' '.join(command))}")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = MeasuredChild([python, "-m", *command], cwd=REPO, stdout=subprocess.PIPE, text=True, env=env)
    last_line = ""
    for line in child.stdout:  # the stage's own report, passed on to stderr as it comes (stdout is for the table)
        sys.stderr.write(line)
        last_line = line.strip() or last_line
    code, peak_rss_bytes = child.wait()
    if code != 0:
        raise SpecError(f"bench-algorithms: {command[0]} failed (exit {code}); its messages are above")
    return last_line, peak_rss_bytes


def _jsonable(options: ComparisonOptions) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()}


def print_table(result: dict) -> None:
    table = Table(title=f"bench-algorithms ({escape(result['machine'])})")
    for column in comparison.TABLE_COLUMNS:
        table.add_column(column, justify="left" if column in ("variant", "set", "per-position acceptance") else "right")
    for row in result["rows"]:
        table.add_row(*(escape(comparison.format_cell(column, row)) for column in comparison.TABLE_COLUMNS))
    stdout.print(table)
    for variant, ratios in result["tau_ratios"]["ratios"].items():
        stdout.print(f"{escape(variant)}: " + ", ".join(f"τ {escape(what)} {value:.2f}×" for what, value in ratios.items()))
    steps = {name: t["steps"] for name, t in result["trainings"].items()}
    stdout.print(f"optimizer steps per variant: {steps}; plot: {escape(result['plot'])}")


if __name__ == "__main__":
    run(main)
