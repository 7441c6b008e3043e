"""`./just bench-train`: spec-train against upstream speculators 0.9.0's EAGLE-3 trainer, side by side.

Both train on the same data set from the small verifier, the same batches in the same order, the
same number of steps and seed; each in its own process (so peak memory is its own). Then both
drafts (and the untrained draft, as a floor) are measured on held-out prompts with the real
drafting loop (libspec.bench.decoding: greedy chain drafting, lossless greedy verification), where tau
= 1 + accepted drafts / verifier forwards. Prints training tokens/s, peak memory and tau, with the
ratios ours/upstream, measured in this one run.

    python -m tools.bench_train [--steps N] [--variant NAME=OPTIONS ...] [--json]

Upstream runs in the Python given by --upstream-python or $SPEC_UPSTREAM_PYTHON (a venv with
`speculators` 0.9.0); without one only our side runs. `worker` is the internal entry that trains
ours in a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import torch

from libspec.train.packing import PackedBatch
from libspec.format.json_files import read_json_object

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SPEC_TOOLS_CACHE", Path.home() / ".cache" / "spec-tools"))


def planned_batches(run, steps: int) -> Iterator[PackedBatch]:
    """The batches spec-train trains on, in its order (one process, no accumulation), for `steps` steps."""
    from libspec.train.loop import epoch_plan, load_batch, train_query_counts

    counts = train_query_counts(run)
    produced, epoch = 0, 0
    while produced < steps:
        for indices in epoch_plan(run, counts, epoch):
            yield load_batch(run, indices)
            produced += 1
            if produced == steps:
                return
        epoch += 1


# ---- the data and the prompts: the project's own pipeline on the built-in verifier's corpus -----


def build_data(verifier_dir: Path, out: Path, samples: int, seed: int, regenerate: bool, env: dict) -> Path:
    """Training conversations from the verifier's training files (corpus_conversations), captured by
    spec-gen-hidden at EAGLE-3's default layers, stored bf16."""
    from libspec.demo.corpus import CorpusOptions, verifier_training_files, write_corpus_conversations

    root, files = verifier_training_files("full", "train")
    conversations = out.with_name(out.name + ".conversations.jsonl")
    written = write_corpus_conversations(conversations, files, root, limit=samples, options=CorpusOptions(seed=seed))
    command = [sys.executable, "-m", "tools.spec_gen_hidden", "--data", str(conversations), "--verifier", str(verifier_dir),
               "-o", str(out), "--storage-dtype", "bfloat16", "--threads", "1", "--quiet"]  # fmt: skip
    if regenerate:
        command += ["--regenerate", "--seed", str(seed)]
    _say(f"spec-gen-hidden on {written} conversations -> {out}")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench-train: spec-gen-hidden failed:\n{result.stderr[-3000:]}")
    return out


def held_out_prompts(kind: str, count: int, seed: int) -> list[dict]:
    """Benchmark prompts (code completion or one chat turn) from the files the verifier never saw."""
    from libspec.demo.corpus import CorpusOptions, corpus_prompts, verifier_training_files

    root, files = verifier_training_files("full", "validation")
    prompts = list(corpus_prompts(files, kind, root, CorpusOptions(seed=seed)))
    return prompts[:count]


# ---- training workers -------------------------------------------------------------------------


def worker(argv: list[str]) -> None:
    """Train ours for --steps steps in this process and print one JSON line (run as a child process)."""
    parser = argparse.ArgumentParser(prog="bench_train worker")
    parser.add_argument("--data", required=True)
    parser.add_argument("--verifier", required=True)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--options", default="{}", help="JSON of TrainConfig fields")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from libspec.train.config import TrainConfig
    from libspec.train.loop import train

    options = json.loads(args.options)
    config = TrainConfig.from_dict({"data": args.data, "verifier": args.verifier, "output": args.output, "max_steps": args.steps,
                                    "epochs": 10_000, "save_dtype": "float32", **options})  # fmt: skip
    result = train(config)
    steps = [json.loads(line) for line in (Path(args.output) / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s["kind"] == "train"]
    seconds = sum(s["queries"] / s["tokens_per_s"] for s in steps)
    tokens = sum(s["queries"] for s in steps)
    print(json.dumps({"trainer": "spec-train", "steps": len(steps), "tokens": tokens, "train_seconds": seconds,
                      "tokens_per_s": tokens / seconds, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "losses": [s["loss"] for s in steps], "checkpoint": result.checkpoints[-1]}))  # fmt: skip


def run_child(command: list[str], env: dict, output: Path | None = None) -> dict:
    """Run a training worker; its JSON result is kept in OUTPUT/result.json and reused by a rerun with the same --work."""
    saved = None if output is None else output / "result.json"
    if saved is not None and saved.is_file():
        _say(f"reusing {saved}")
        return read_json_object(saved)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench-train: {' '.join(command[:3])} failed:\n{result.stderr[-4000:]}")
    document = json.loads(result.stdout.strip().splitlines()[-1])
    if saved is not None:
        saved.write_text(json.dumps(document))
    return document


# ---- acceptance -------------------------------------------------------------------------------


@torch.no_grad()
def measure_tau(model, proposer, prompts: list[list[int]], k: int, max_new_tokens: int, eos_ids: set[int], temperature: float = 0.0) -> dict:
    """tau and per-position acceptance of a proposer over prompts, from the accepted-drafts histogram."""
    from libspec.bench.decoding import DecodingVerifier, speculative_generate

    verifier = DecodingVerifier(model, proposer.aux_layer_ids)
    generator = torch.Generator().manual_seed(0)
    histogram = [0] * (k + 1)
    for prompt in prompts:
        generation = speculative_generate(verifier, proposer, torch.tensor(prompt), k, max_new_tokens, eos_ids, temperature, generator)
        for accepted in generation.accepted_per_round:
            histogram[accepted] += 1
    rounds = sum(histogram)
    accepted = sum(i * n for i, n in enumerate(histogram))
    return {"tau": 1 + accepted / rounds, "rounds": rounds, "histogram": histogram,
            "per_position": [sum(histogram[j:]) / rounds for j in range(1, k + 1)]}  # fmt: skip


# ---- the benchmark ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker(argv[1:])
    parser = argparse.ArgumentParser(prog="bench-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verifier", help="verifier folder (default: the built-in small verifier, built on first use)")
    parser.add_argument("--data", help="data set from that verifier (default: built once under the cache)")
    parser.add_argument("--samples", type=int, default=2500, help="conversations in the default data set")
    parser.add_argument("--regenerate", action="store_true", help="default data set: the verifier's own greedy replies")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--tokens-per-batch", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=40, help="held-out prompts for tau")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=3, help="drafted tokens per round (= TTT steps)")
    parser.add_argument("--temperature", type=float, default=0.6, help="second tau, with speculative sampling (upstream evaluates at 0.6)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trainer")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help='extra spec-train runs, e.g. tv=\'{"loss": "tv"}\' (repeatable)')  # fmt: skip
    parser.add_argument("--no-default", action="store_true", help="skip spec-train with default options")
    parser.add_argument("--no-upstream", action="store_true", help="skip the upstream runs")
    parser.add_argument("--speed-rounds", type=int, default=3, help="alternating short runs for the tokens/s ratio (0: none)")
    parser.add_argument("--speed-steps", type=int, default=8, help="steps per speed run")
    parser.add_argument("--speed-only", action="store_true", help="only the interleaved tokens/s rounds")
    parser.add_argument("--upstream-python", default=os.environ.get("SPEC_UPSTREAM_PYTHON"))
    parser.add_argument("--work", default=None, help="where runs go (default: a fresh folder under the cache)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    verifier_dir = Path(args.verifier) if args.verifier else small_verifier()
    work = Path(args.work) if args.work else CACHE / "bench-train" / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    data = Path(args.data) if args.data else default_data(verifier_dir, args.samples, args.seed, args.regenerate, env)
    # Each algorithm reads the fields it has: EAGLE-3 ttt_steps, EAGLE-1 speculative_tokens (--variant x='{"algorithm": "eagle"}').
    common = {"tokens_per_batch": args.tokens_per_batch, "seed": args.seed, "ttt_steps": args.k, "speculative_tokens": args.k}
    variants = ([] if args.no_default else [("spec-train", {})]) + [_variant(v) for v in args.variant]

    if args.speed_only:
        print(json.dumps(interleaved_speed(args, data, verifier_dir, work, env, common), indent=2))
        return
    results = []
    for name, options in variants:
        _say(f"training {name} for {args.steps} steps")
        command = [sys.executable, "-m", "tools.bench_train", "worker", "--data", str(data), "--verifier", str(verifier_dir),
                   "-o", str(work / name), "--steps", str(args.steps), "--threads", str(args.threads),
                   "--options", json.dumps({**common, **options})]  # fmt: skip
        results.append({"name": name, "options": options, **run_child(command, env, work / name)})
    if args.upstream_python and not args.no_upstream:
        # Upstream as its CLI runs by default (Muon), and with AdamW (spec-train's optimizer) so the
        # comparison is not only one of optimizers.
        for name, optimizer in (("upstream", "muon"), ("upstream-adamw", "adamw")):
            _say(f"training {name} for {args.steps} steps")
            command = [args.upstream_python, "-m", "tools.bench_train_upstream", "--data", str(data), "--verifier", str(verifier_dir),
                       "-o", str(work / name), "--steps", str(args.steps), "--tokens-per-batch", str(args.tokens_per_batch),
                       "--seed", str(args.seed), "--ttt-steps", str(args.k), "--threads", str(args.threads), "--optimizer", optimizer]  # fmt: skip
            results.append({"name": name, "options": {"optimizer": optimizer}, **run_child(command, env, work / name)})
    else:
        _say("no --upstream-python / SPEC_UPSTREAM_PYTHON: upstream side skipped")

    speed = None
    if args.speed_rounds and args.upstream_python and not args.no_default:
        speed = interleaved_speed(args, data, verifier_dir, work, env, common)
    _say("measuring acceptance on held-out prompts")
    report = acceptance_report(verifier_dir, data, results, args)
    report["interleaved_speed"] = speed
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


def interleaved_speed(args, data: Path, verifier_dir: Path, work: Path, env: dict, common: dict) -> dict:
    """Training tokens/s of ours and upstream (its default, Muon) in alternating short runs, so that
    both see the same background load; the ratio of medians is the figure to quote."""
    ours, theirs = [], []
    for round_index in range(args.speed_rounds):
        _say(f"interleaved speed round {round_index + 1}/{args.speed_rounds}")
        out = work / f"speed-{round_index}"
        command = [sys.executable, "-m", "tools.bench_train", "worker", "--data", str(data), "--verifier", str(verifier_dir),
                   "-o", str(out / "ours"), "--steps", str(args.speed_steps), "--threads", str(args.threads), "--options", json.dumps(common)]  # fmt: skip
        ours.append(run_child(command, env)["tokens_per_s"])
        command = [args.upstream_python, "-m", "tools.bench_train_upstream", "--data", str(data), "--verifier", str(verifier_dir),
                   "-o", str(out / "upstream"), "--steps", str(args.speed_steps), "--tokens-per-batch", str(args.tokens_per_batch),
                   "--seed", str(args.seed), "--ttt-steps", str(args.k), "--threads", str(args.threads)]  # fmt: skip
        theirs.append(run_child(command, env)["tokens_per_s"])
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    return {"ours_tokens_per_s": ours, "upstream_tokens_per_s": theirs, "ratio_of_medians": median(ours) / median(theirs)}


def _variant(text: str) -> tuple[str, dict]:
    name, _, options = text.partition("=")
    return name, json.loads(options or "{}")


def _say(message: str) -> None:
    print(f"bench-train: {message}", file=sys.stderr, flush=True)


def small_verifier() -> Path:
    try:
        from libspec.demo.tiny_verifier import build_verifier
    except ImportError:
        raise SystemExit("bench-train: the built-in small verifier is not available here; pass --verifier DIR") from None
    return Path(build_verifier("full"))


def default_data(verifier_dir: Path, samples: int, seed: int, regenerate: bool, env: dict) -> Path:
    from libspec.verifier import fingerprint_verifier

    key = f"{fingerprint_verifier(str(verifier_dir)).config_sha256[:12]}-corpus-{samples}-{seed}{'-regen' if regenerate else ''}"
    out = CACHE / "bench-train-data" / key
    if not (out / "manifest.json").is_file() or not read_json_object(out / "manifest.json")["complete"]:
        build_data(verifier_dir, out, samples, seed, regenerate, env)
    return out


def acceptance_report(verifier_dir: Path, data: Path, results: list[dict], args) -> dict:
    from transformers import AutoTokenizer

    from libspec.algorithms import load_proposer
    from libspec.algorithms.eagle3.model import Eagle3Proposer
    from libspec.train.config import TrainConfig
    from libspec.train.loop import build_draft, prepare

    from libspec.verifier import load_causal_lm
    from libspec.bench.prompts import encode_prompt

    model = load_causal_lm(str(verifier_dir), torch.device("cpu"), torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(verifier_dir)
    prompt_sets = {kind: [encode_prompt(tokenizer, item).tolist() for item in held_out_prompts(kind, args.prompts, args.seed)]
                   for kind in ("chat", "code")}  # fmt: skip
    eos = {t for t in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")) if isinstance(t, int) and t >= 0}
    run = prepare(TrainConfig.from_dict({"data": str(data), "verifier": str(verifier_dir), "output": str(Path(args.work or CACHE) / "unused"),
                                         "ttt_steps": args.k, "seed": args.seed}))  # fmt: skip
    drafts = [({"name": "untrained draft"}, Eagle3Proposer(build_draft(run), run.aux_layer_ids))]
    drafts += [(result, load_proposer(result["checkpoint"], model)) for result in results]
    rows = []
    for result, proposer in drafts:
        _say(f"tau of {result['name']}")
        row = {**result, **measure_tau(model, proposer, prompt_sets["chat"], args.k, args.max_new_tokens, eos)}
        row["code"] = measure_tau(model, proposer, prompt_sets["code"], args.k, args.max_new_tokens, eos)
        row["sampled"] = measure_tau(model, proposer, prompt_sets["chat"], args.k, args.max_new_tokens, eos, args.temperature)
        rows.append(row)
    prompts = prompt_sets["chat"]
    return {
        "machine": {"threads": args.threads, "load_average": os.getloadavg(), "torch": torch.__version__},
        "settings": {"steps": args.steps, "tokens_per_batch": args.tokens_per_batch, "seed": args.seed, "k": args.k,
                     "prompts_per_set": len(prompts), "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "data": str(data), "verifier": str(verifier_dir)},
        "rows": [{k: v for k, v in row.items() if k != "losses"} | {"final_loss": (row.get("losses") or [None])[-1]} for row in rows],
    }  # fmt: skip


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    rows, settings = report["rows"], report["settings"]
    # Ratios are against the stronger upstream run (by greedy chat tau), so an optimizer choice cannot flatter us.
    upstream = max((r for r in rows if r["name"].startswith("upstream")), key=lambda r: r["tau"], default=None)
    table = Table(title=f"bench-train: {settings['steps']} steps of {settings['tokens_per_batch']} tokens, k={settings['k']}, "
                        f"{settings['prompts_per_set']} held-out prompts per set, {settings['max_new_tokens']} new tokens")  # fmt: skip
    temperature = settings["temperature"]
    columns = ("trainer", "tokens/s", "peak RSS", "final loss", "τ chat", "accept/pos chat", "τ code", f"τ chat T={temperature}",
               "τ chat / upstream", "τ code / upstream", f"τ T={temperature} / upstream")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "trainer" else "right")

    def ratio(value, reference):
        return f"{value / reference:.3f}×" if upstream else ""

    for row in rows:
        tokens_per_s = row.get("tokens_per_s")
        table.add_row(
            row["name"],
            f"{tokens_per_s:,.0f}" if tokens_per_s else "",
            f"{row['peak_rss_bytes'] / 2**20:,.0f} MiB" if row.get("peak_rss_bytes") else "",
            f"{row['final_loss']:.3f}" if row.get("final_loss") is not None else "",
            f"{row['tau']:.3f}",
            " ".join(f"{p:.2f}" for p in row["per_position"]),
            f"{row['code']['tau']:.3f}",
            f"{row['sampled']['tau']:.3f}",
            ratio(row["tau"], upstream["tau"]) if upstream else "",
            ratio(row["code"]["tau"], upstream["code"]["tau"]) if upstream else "",
            ratio(row["sampled"]["tau"], upstream["sampled"]["tau"]) if upstream else "",
        )
    Console().print(table)
    speed = report.get("interleaved_speed")
    if speed:
        Console().print(f"interleaved tokens/s (alternating runs, same load): ours {speed['ours_tokens_per_s']}, upstream "
                        f"{speed['upstream_tokens_per_s']} → ratio of medians {speed['ratio_of_medians']:.2f}×")  # fmt: skip


if __name__ == "__main__":
    main()
