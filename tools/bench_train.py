"""`./just bench-train`: spec-train against upstream speculators 0.9.0's EAGLE-3 trainer, side by side.

Both train on the same data set from the small verifier, the same batches in the same order, the
same number of steps and seed; each in its own process (so peak memory is its own). Then both
drafts (and the untrained draft, as a floor) are measured on held-out prompts with the real
drafting loop (libspec.bench.decoding: greedy chain drafting, lossless greedy verification), where tau
= 1 + accepted drafts / verifier forwards. Prints training tokens/s, peak memory and tau, with the
ratios ours/upstream, measured in this one run.

    python -m tools.bench_train [--steps N] [--variant NAME=OPTIONS ...] [--json]
    python -m tools.bench_train --real [--steps N] [--sets mt-bench:16 humaneval:16]

--real runs it on the real verifier instead: SmolLM2-135M-Instruct (tools.build_smollm2), trained on
its own greedy answers to the training prompts of tools.instruction_prompts (disjoint from both
benchmark sets), τ measured on MT-Bench and HumanEval prompts. With upstream present, ours also
trains for upstream's wall-clock (as many steps as fit in the seconds upstream's run took), so τ is
compared at equal steps and at equal time.

Upstream runs in the Python given by --upstream-python or $SPEC_UPSTREAM_PYTHON (a venv with
`speculators` 0.9.0); without one only our side runs. `worker` is the internal entry that trains
ours in a child process.
"""

from __future__ import annotations

import argparse
import hashlib
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
from tools.child_memory import MeasuredChild

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


# ---- the data and the prompts: the project's own pipeline -----------------------------------


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


def build_real_data(verifier_dir: Path, out: Path, samples: int, seed: int, max_new_tokens: int, env: dict) -> Path:
    """The verifier's own greedy answers to `samples` training prompts, captured at EAGLE-3's default layers (bf16)."""
    prompts = out.with_name(out.name + ".prompts.jsonl")
    subprocess.run([sys.executable, "-m", "tools.instruction_prompts", "--limit", str(samples), "--seed", str(seed), "-o", str(prompts)],
                   cwd=REPO, env=env, check=True, capture_output=True)  # fmt: skip
    command = [sys.executable, "-m", "tools.spec_gen_hidden", "--data", str(prompts), "--verifier", str(verifier_dir), "-o", str(out),
               "--regenerate", "--max-new-tokens", str(max_new_tokens), "--storage-dtype", "bfloat16", "--threads", "1", "--quiet"]  # fmt: skip
    _say(f"spec-gen-hidden --regenerate on {samples} training prompts -> {out}")
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
    # Under the launcher of tools/child_memory.py, so that the peak RSS the worker reports of itself
    # does not start from this process's (Linux carries it across exec).
    child = MeasuredChild(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout_text, stderr_text = child.process.communicate()
    returncode, _ = child.wait()
    if returncode != 0:
        raise SystemExit(f"bench-train: {' '.join(command[:3])} failed:\n{stderr_text[-4000:]}")
    document = json.loads(stdout_text.strip().splitlines()[-1])
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
    parser.add_argument("--real", action="store_true", help="SmolLM2-135M-Instruct, on-policy training prompts, MT-Bench and HumanEval (see above)")
    parser.add_argument("--verifier", help="verifier folder (default: the built-in small verifier, built on first use; SmolLM2 with --real)")
    parser.add_argument("--data", help="data set from that verifier (default: built once under the cache)")
    parser.add_argument("--samples", type=int, default=None, help="conversations in the default data set (default 2500; --real: 640 prompts)")
    parser.add_argument("--capture-new-tokens", type=int, default=96, help="--real: longest on-policy answer captured (default 96)")
    parser.add_argument("--sets", nargs="+", metavar="SET", help="spec-bench prompt sets for τ (default: held-out chat and code; --real: mt-bench:16 humaneval:16)")
    parser.add_argument("--draft-vocab-size", type=int, help="reduced draft vocabulary for both trainers (default: spec-train's choice; --real: 8192)")
    parser.add_argument("--upstream-optimizers", default="muon,adamw", help="upstream runs to train, comma-separated (default muon,adamw)")
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
    parser.add_argument("--show", metavar="REPORT", help="print the table of a report.json an earlier run saved, measuring nothing")
    args = parser.parse_args(argv)
    if args.show:
        return print_report(read_json_object(Path(args.show)))
    torch.set_num_threads(args.threads)

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    if args.real:
        args.draft_vocab_size = args.draft_vocab_size or 8192
        args.sets = args.sets or ["mt-bench:16", "humaneval:16"]
    verifier_dir = Path(args.verifier) if args.verifier else (smollm2_verifier(env) if args.real else small_verifier())
    work = Path(args.work) if args.work else CACHE / "bench-train" / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    samples = args.samples or (640 if args.real else 2500)
    data = Path(args.data) if args.data else default_data(verifier_dir, samples, args.seed, args.regenerate, env, args.capture_new_tokens if args.real else None)
    # Each algorithm reads the fields it has: EAGLE-3 ttt_steps, EAGLE-1 speculative_tokens (--variant x='{"algorithm": "eagle"}').
    common = {"tokens_per_batch": args.tokens_per_batch, "seed": args.seed, "ttt_steps": args.k, "speculative_tokens": args.k}
    if args.draft_vocab_size:
        common["draft_vocab_size"] = args.draft_vocab_size
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
        for optimizer in args.upstream_optimizers.split(","):
            name = "upstream" if optimizer == "muon" else f"upstream-{optimizer}"
            _say(f"training {name} for {args.steps} steps")
            command = upstream_command(args, data, verifier_dir, work / name, args.steps) + ["--optimizer", optimizer]
            results.append({"name": name, "options": {"optimizer": optimizer}, **run_child(command, env, work / name)})
        if not args.no_default:
            results += equal_wall_clock(args, results, data, verifier_dir, work, env, common)
    else:
        _say("no --upstream-python / SPEC_UPSTREAM_PYTHON: upstream side skipped")

    speed = None
    if args.speed_rounds and args.upstream_python and not args.no_default:
        speed = interleaved_speed(args, data, verifier_dir, work, env, common)
    _say("measuring acceptance on held-out prompts")
    report = acceptance_report(verifier_dir, data, results, args)
    report["interleaved_speed"] = speed
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _say(f"report: {work / 'report.json'}")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


def upstream_command(args, data: Path, verifier_dir: Path, output: Path, steps: int) -> list[str]:
    command = [args.upstream_python, "-m", "tools.bench_train_upstream", "--data", str(data), "--verifier", str(verifier_dir),
               "-o", str(output), "--steps", str(steps), "--tokens-per-batch", str(args.tokens_per_batch),
               "--seed", str(args.seed), "--ttt-steps", str(args.k), "--threads", str(args.threads)]  # fmt: skip
    return command + (["--draft-vocab-size", str(args.draft_vocab_size)] if args.draft_vocab_size else [])


def equal_wall_clock(args, results: list[dict], data: Path, verifier_dir: Path, work: Path, env: dict, common: dict) -> list[dict]:
    """Ours again, for as many steps as its measured step time fits into each upstream run's training seconds."""
    ours = next(r for r in results if r["name"] == "spec-train")
    seconds_per_step = ours["train_seconds"] / ours["steps"]
    extra = []
    for upstream in [r for r in results if r["name"].startswith("upstream")]:
        steps = int(upstream["train_seconds"] / seconds_per_step)
        if steps <= ours["steps"]:
            continue  # ours is not faster: equal time is at most equal steps
        name = f"spec-train ({upstream['name']}'s time)"
        _say(f"training {name}: {steps} steps in ≈{upstream['train_seconds']:.0f} s")
        command = [sys.executable, "-m", "tools.bench_train", "worker", "--data", str(data), "--verifier", str(verifier_dir),
                   "-o", str(work / f"equal-time-{upstream['name']}"), "--steps", str(steps), "--threads", str(args.threads),
                   "--options", json.dumps(common)]  # fmt: skip
        extra.append({"name": name, "options": {"steps": steps, "upstream_seconds": upstream["train_seconds"]},
                      **run_child(command, env, work / f"equal-time-{upstream['name']}")})  # fmt: skip
    return extra


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
        optimizer = args.upstream_optimizers.split(",")[-1]
        theirs.append(run_child(upstream_command(args, data, verifier_dir, out / "upstream", args.speed_steps) + ["--optimizer", optimizer], env)["tokens_per_s"])
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


def smollm2_verifier(env: dict) -> Path:
    result = subprocess.run([sys.executable, "-m", "tools.build_smollm2"], cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench-train: the SmolLM2 verifier could not be built (./just real-extra installs what it needs):\n{result.stderr[-2000:]}")
    return Path(result.stdout.strip())


def default_data(verifier_dir: Path, samples: int, seed: int, regenerate: bool, env: dict, on_policy_tokens: int | None = None) -> Path:
    """Built once per verifier and recipe under the cache: corpus conversations, or (on_policy_tokens) on-policy training prompts."""
    from libspec.verifier import fingerprint_verifier

    fingerprint = fingerprint_verifier(str(verifier_dir))
    if on_policy_tokens:
        key = f"{fingerprint.config_sha256[:12]}-{hashlib.sha256(json.dumps(fingerprint.weights, sort_keys=True).encode()).hexdigest()[:8]}-instructions-{samples}-{seed}-{on_policy_tokens}"
    else:
        key = f"{fingerprint.config_sha256[:12]}-corpus-{samples}-{seed}{'-regen' if regenerate else ''}"
    out = CACHE / "bench-train-data" / key
    if not (out / "manifest.json").is_file() or not read_json_object(out / "manifest.json")["complete"]:
        if on_policy_tokens:
            build_real_data(verifier_dir, out, samples, seed, on_policy_tokens, env)
        else:
            build_data(verifier_dir, out, samples, seed, regenerate, env)
    return out


def acceptance_report(verifier_dir: Path, data: Path, results: list[dict], args) -> dict:
    from transformers import AutoTokenizer

    from libspec.algorithms import load_proposer
    from libspec.algorithms.eagle3.model import Eagle3Proposer
    from libspec.train.config import TrainConfig
    from libspec.train.loop import build_draft, prepare

    from libspec.verifier import load_causal_lm
    from libspec.bench.prompts import encode_prompt, load_prompt_set

    model = load_causal_lm(str(verifier_dir), torch.device("cpu"), torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(verifier_dir)
    if args.sets:
        chosen = [load_prompt_set(name) for name in args.sets]
        prompt_sets = {chosen_set.name: [encode_prompt(tokenizer, item).tolist() for item in chosen_set.items] for chosen_set in chosen}
    else:
        prompt_sets = {kind: [encode_prompt(tokenizer, item).tolist() for item in held_out_prompts(kind, args.prompts, args.seed)]
                       for kind in ("chat", "code")}  # fmt: skip
    eos = {t for t in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")) if isinstance(t, int) and t >= 0}
    run = prepare(TrainConfig.from_dict({"data": str(data), "verifier": str(verifier_dir), "output": str(Path(args.work or CACHE) / "unused"),
                                         "ttt_steps": args.k, "seed": args.seed,
                                         **({"draft_vocab_size": args.draft_vocab_size} if args.draft_vocab_size else {})}))  # fmt: skip
    drafts = [({"name": "untrained draft"}, Eagle3Proposer(build_draft(run), run.aux_layer_ids))]
    drafts += [(result, load_proposer(result["checkpoint"], model)) for result in results]
    rows = []
    first = next(iter(prompt_sets))
    for result, proposer in drafts:
        _say(f"tau of {result['name']}")
        row = {**result, "sets": {name: measure_tau(model, proposer, prompts, args.k, args.max_new_tokens, eos) for name, prompts in prompt_sets.items()}}
        row["sampled"] = measure_tau(model, proposer, prompt_sets[first], args.k, args.max_new_tokens, eos, args.temperature)
        rows.append(row)
    prompts = prompt_sets[first]
    return {
        "machine": {"threads": args.threads, "load_average": os.getloadavg(), "torch": torch.__version__},
        "settings": {"steps": args.steps, "tokens_per_batch": args.tokens_per_batch, "seed": args.seed, "k": args.k,
                     "prompts_per_set": len(prompts), "sets": list(prompt_sets), "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "data": str(data), "verifier": str(verifier_dir)},
        "rows": [{k: v for k, v in row.items() if k != "losses"} | {"final_loss": (row.get("losses") or [None])[-1]} for row in rows],
    }  # fmt: skip


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 240)  # a log file keeps the whole table
    rows, settings = report["rows"], report["settings"]
    sets = settings["sets"]
    # Ratios are against the stronger upstream run (by greedy τ on the first set), so an optimizer choice cannot flatter us.
    upstream = max((r for r in rows if r["name"].startswith("upstream")), key=lambda r: r["sets"][sets[0]]["tau"], default=None)
    table = Table(title=f"bench-train: {settings['steps']} steps of {settings['tokens_per_batch']} tokens, k={settings['k']}, "
                        f"{settings['prompts_per_set']} prompts per set, {settings['max_new_tokens']} new tokens"
                        + (f"; ratios against {upstream['name']}" if upstream else ""))  # fmt: skip
    temperature = settings["temperature"]
    columns = ["trainer", "steps", "tokens/s", "peak RSS", "final loss"]
    for name in sets:
        columns += [f"τ {name}", f"accept/pos {name}"] + ([f"τ {name} / upstream"] if upstream else [])
    columns += [f"τ {sets[0]} T={temperature}"] + ([f"τ T={temperature} / upstream"] if upstream else [])
    for column in columns:
        table.add_column(column, justify="left" if column == "trainer" else "right")
    for row in rows:
        tokens_per_s = row.get("tokens_per_s")
        cells = [row["name"], str(row.get("steps", "")), f"{tokens_per_s:,.0f}" if tokens_per_s else "",
                 f"{row['peak_rss_bytes'] / 2**20:,.0f} MiB" if row.get("peak_rss_bytes") else "",
                 f"{row['final_loss']:.3f}" if row.get("final_loss") is not None else ""]  # fmt: skip
        for name in sets:
            measured = row["sets"][name]
            cells += [f"{measured['tau']:.3f}", " ".join(f"{p:.2f}" for p in measured["per_position"])]
            cells += [f"{measured['tau'] / upstream['sets'][name]['tau']:.3f}×"] if upstream else []
        cells += [f"{row['sampled']['tau']:.3f}"] + ([f"{row['sampled']['tau'] / upstream['sampled']['tau']:.3f}×"] if upstream else [])
        table.add_row(*cells)
    console.print(table)
    speed = report.get("interleaved_speed")
    if speed:
        console.print(f"interleaved tokens/s (alternating runs, same load): ours {speed['ours_tokens_per_s']}, upstream "
                        f"{speed['upstream_tokens_per_s']} → ratio of medians {speed['ratio_of_medians']:.2f}×")  # fmt: skip


if __name__ == "__main__":
    main()
