"""`./just bench-storage`: hidden-state storage on the real verifier (SmolLM2) — size, speed, and τ.

    python -m tools.bench_storage [--records N] [--train-steps N] [--speed-steps N] [--tau-prompts N] [--work DIR] [--json]

Time on a 2-core Xeon at the defaults: 1–2 hours (2 h shared with other benchmarks), most of it the two τ drafts'
training; a rerun with --work reuses the captures and the τ drafts (31 min).

The samples are SmolLM2's own answers (greedy, as `./just demo` makes them) to the training
prompts of tools.instruction_prompts (disjoint from both benchmark sets), captured once with
--regenerate and then recaptured from their tokens in each storage variant, so every variant
holds the same samples. One table, every figure measured in this run on them:
- bytes per token on disk for raw and zstd tensor shards, in bf16 and fp8, against upstream
  speculators' layout (one uncompressed safetensors file per sample, hidden states in bf16 plus
  int64 token ids, written here the way its ExampleHiddenStatesConnector writes them);
- encode MB/s of the zstd tensor encoding (one core), and spec-gen-hidden's time per token with
  each encoding against a bare verifier forward over the same batches;
- training: spec-train's tokens/s on zstd vs raw shards of the same data (alternating runs), and the
  decode cost per step as a share of the step (the step's batches loaded from each, timed apart);
- τ on MT-Bench and HumanEval of the same draft trained (same samples, seed and steps) on bf16
  and on fp8 data (skipped with --tau-prompts 0).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

import torch  # noqa: E402
from rich.table import Table  # noqa: E402

from libspec.capture.gen_hidden import GenHiddenConfig, generate_hidden_states  # noqa: E402
from libspec.capture.hooks import BatchLimits  # noqa: E402
from libspec.bench.benchmarks import humaneval_function_names  # noqa: E402
from libspec.demo.corpus import write_jsonl  # noqa: E402
from libspec.demo.instructions import instruction_prompts  # noqa: E402
from libspec.demo.tiny_verifier import stdlib_sources  # noqa: E402
from libspec.format.dataset import Dataset  # noqa: E402
from libspec.format.tensors import write_tensor_shard  # noqa: E402
from libspec.verifier import load_model, load_verifier  # noqa: E402
from tools._cli import EXIT_OK, make_parser, print_json, run, stdout  # noqa: E402
from tools.bench_gen_hidden import batches_as_gen_hidden_makes_them, data_bytes, padded, time_forward, upstream_layout_bytes  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MACHINE_NOTE = "2-core Intel Xeon (AVX512+AMX), shared/loaded"


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("bench-storage", "Hidden-state storage on SmolLM2: bytes per token, encode/decode cost, τ on bf16 vs fp8 data.")
    parser.add_argument("--verifier", help="a verifier folder (default: SmolLM2-135M-Instruct, built and cached on first use)")
    parser.add_argument("--records", type=int, default=320, help="training prompts the verifier answers (default: 320)")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="longest answer (default: 96)")
    parser.add_argument("--max-len", type=int, default=768, help="truncate records to N tokens (default: 768)")
    parser.add_argument("--train-steps", type=int, default=200, help="optimizer steps of each draft trained for τ (default: 200, about three epochs)")
    parser.add_argument("--speed-steps", type=int, default=8, help="optimizer steps of each timed training run, raw vs zstd (default: 8)")
    parser.add_argument("--speed-repeats", type=int, default=2, help="alternating timed runs per variant (default: 2)")
    parser.add_argument("--tau-prompts", type=int, default=16, help="prompts per set (MT-Bench, HumanEval) for τ; 0 skips τ (default: 16)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, the steadiest on a shared machine)")
    parser.add_argument("--work", help="keep captures, drafts and report.json here (reused when present); default: a temporary folder")
    parser.add_argument("--show", metavar="REPORT", help="print the table of a report.json an earlier run saved, measuring nothing")
    args = parser.parse_args(argv)
    if args.show:
        show(json.loads(Path(args.show).read_text()))
        return EXIT_OK
    torch.set_num_threads(args.threads)
    verifier = args.verifier or subprocess.run([sys.executable, "-m", "tools.build_smollm2"], check=True, capture_output=True, text=True, cwd=REPO).stdout.strip()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-storage-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    try:
        report = bench(args, verifier, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    report["machine"] = {"note": MACHINE_NOTE, "cpus": os.cpu_count(), "threads": args.threads, "load_avg_before": load_before, "load_avg_after": os.getloadavg()}
    if args.work:
        (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print_json(report) if args.json else show(report)
    return EXIT_OK


def bench(args, verifier: str, work: Path) -> dict:
    inputs = on_policy_tokens(verifier, args, work)
    base = GenHiddenConfig(verifier=verifier, inputs=(str(inputs),), output="", device="cpu", max_len=args.max_len)
    data = {name: work / name for name in ("bf16-raw", "bf16-zstd", "fp8-raw", "fp8-zstd")}
    gen_s, bare_s = capture_all(base, data, args.speed_repeats, work)
    dataset = Dataset(data["bf16-raw"])
    report = {"verifier": verifier, "records": dataset.num_records, "tokens": dataset.num_tokens, "layer_ids": dataset.layer_ids,
              "hidden_size": dataset.verifier.hidden_size, "gen_hidden_s": gen_s, "bare_forward_s": bare_s}  # fmt: skip
    report["lossless"] = same_values(Dataset(data["bf16-raw"]), Dataset(data["bf16-zstd"])) and same_values(Dataset(data["fp8-raw"]), Dataset(data["fp8-zstd"]))
    report["bytes_per_token"] = {name: data_bytes(path) / dataset.num_tokens for name, path in data.items()}
    upstream_dir = work / "upstream"
    shutil.rmtree(upstream_dir, ignore_errors=True)
    report["bytes_per_token"]["upstream"] = upstream_layout_bytes(dataset, upstream_dir) / dataset.num_tokens
    shutil.rmtree(upstream_dir)
    report["encode_mb_per_s"] = {name: encode_mb_per_s(Dataset(data[f"{name}-raw"])) for name in ("bf16", "fp8")}
    report["training"] = training_speed(data["bf16-raw"], data["bf16-zstd"], verifier, args, work)
    if args.tau_prompts:
        report["tau"] = {name: tau_after_training(data[f"{name}-zstd"], verifier, args, work / f"tau-{name}") for name in ("bf16", "fp8")}
    return report


def on_policy_tokens(verifier: str, args, work: Path) -> Path:
    """JSONL of input_ids + loss_mask: the verifier's own answers to --records training prompts (made once, then reused)."""
    tokens = work / "on-policy-tokens.jsonl"
    if tokens.exists():
        return tokens
    prompts = work / "prompts.jsonl"
    root, files = stdlib_sources()
    write_jsonl(prompts, instruction_prompts(root, files, excluded_names=humaneval_function_names()), args.records)
    answered = work / "answered"
    generate_hidden_states(GenHiddenConfig(verifier=verifier, inputs=(str(prompts),), output=str(answered), device="cpu", max_len=args.max_len,
                                           regenerate=True, max_new_tokens=args.max_new_tokens))  # fmt: skip
    scratch = tokens.with_suffix(".tmp")
    with open(scratch, "w") as out:
        for sample in Dataset(answered):
            out.write(json.dumps({"input_ids": sample.record["input_ids"], "loss_mask": sample.record["loss_mask"]}) + "\n")
    scratch.replace(tokens)
    shutil.rmtree(answered)
    return tokens


def capture_all(base: GenHiddenConfig, data: dict[str, Path], repeats: int, work: Path) -> tuple[dict[str, list[float]], list[float]]:
    """Capture each variant once to keep, then time spec-gen-hidden raw vs zstd (bf16) and the bare
    forward over the same batches in alternating repeats (so a shared machine's load hits all three)."""
    variants = {
        "bf16-raw": {"storage_dtype": "bfloat16", "tensor_encoding": "raw"},
        "bf16-zstd": {"storage_dtype": "bfloat16", "tensor_encoding": "zstd"},
        "fp8-raw": {"storage_dtype": "float8_e4m3fn", "tensor_encoding": "raw"},
        "fp8-zstd": {"storage_dtype": "float8_e4m3fn", "tensor_encoding": "zstd"},
    }
    for name, options in variants.items():
        if not (data[name] / "manifest.json").exists():
            generate_hidden_states(GenHiddenConfig(**{**base.__dict__, "output": str(data[name]), **options}))
    seconds: dict[str, list[float]] = {"bf16-raw": [], "bf16-zstd": []}
    bare: list[float] = []
    forward = bare_forward(base.verifier, Dataset(data["bf16-raw"]), base)
    for repeat in range(max(1, repeats)):
        for name in (("bf16-zstd", "bf16-raw") if repeat % 2 == 0 else ("bf16-raw", "bf16-zstd")):
            scratch = work / f"timing-{name}"
            shutil.rmtree(scratch, ignore_errors=True)
            seconds[name].append(generate_hidden_states(GenHiddenConfig(**{**base.__dict__, "output": str(scratch), **variants[name]}))["capture_s"])
            shutil.rmtree(scratch)
        bare.append(forward())
    return seconds, bare


def bare_forward(verifier_dir: str, dataset: Dataset, base: GenHiddenConfig):
    """A call that times the verifier's plain forward (logits included) over the batches spec-gen-hidden ran."""
    verifier = load_verifier(verifier_dir)
    model = load_model(verifier, "cpu", base.dtype)
    batches = [padded(b, verifier.pad_token_id) for b in batches_as_gen_hidden_makes_them(dataset, base.window, BatchLimits(base.batch_tokens, base.batch_size))]
    return lambda: time_forward(model, batches)


def same_values(raw: Dataset, packed: Dataset) -> bool:
    """Whether two data sets hold bit-identical stored hidden states and scales, record by record."""
    for a, b in zip(raw, packed, strict=True):
        if not torch.equal(a.hidden.view(torch.uint8), b.hidden.view(torch.uint8)):
            return False
        if (a.scales is None) != (b.scales is None) or (a.scales is not None and not torch.equal(a.scales, b.scales)):
            return False
    return True


def encode_mb_per_s(dataset: Dataset) -> float:
    """MB/s of writing the data set's tensor shards in the zstd encoding (planes, zstd, checksum), one core."""
    scratch = Path(tempfile.mkdtemp(prefix="encode-"))
    total_bytes, seconds = 0, 0.0
    try:
        for index in range(dataset.num_shards):
            shard = dataset.shard_tensors(index)
            hidden = shard.stored_hidden().clone()
            started = time.perf_counter()
            write_tensor_shard(scratch / "shard.safetensors", hidden, shard.offsets.tolist(), shard.layer_ids, shard.scales, "zstd")
            seconds += time.perf_counter() - started
            total_bytes += hidden.nbytes
    finally:
        shutil.rmtree(scratch)
    return total_bytes / 1e6 / max(seconds, 1e-9)


def training_speed(raw_dir: Path, zstd_dir: Path, verifier: str, args, work: Path) -> dict:
    """spec-train tokens/s on raw vs zstd shards (alternating runs), and per-step batch-loading seconds of each."""
    from libspec.train.config import TrainConfig
    from libspec.train.loop import epoch_plan, load_batch, prepare, train, train_query_counts

    tokens_per_s: dict[str, list[float]] = {"raw": [], "zstd": []}
    for repeat in range(max(1, args.speed_repeats)):
        for name in (("raw", "zstd") if repeat % 2 == 0 else ("zstd", "raw")):
            out = work / f"speed-{name}"
            shutil.rmtree(out, ignore_errors=True)
            config = TrainConfig(data=str(raw_dir if name == "raw" else zstd_dir), verifier=verifier, output=str(out), draft_vocab_size=8192, max_steps=args.speed_steps, epochs=100, keep=1, device="cpu")
            steps: list[float] = []
            train(config, on_event=lambda kind, payload: steps.append(payload["tokens_per_s"]) if kind == "step" else None)
            tokens_per_s[name].append(statistics.median(steps[1:] or steps))  # the first step pays one-off warm-up
            shutil.rmtree(out)
    load_s = {}
    for name, directory in (("raw", raw_dir), ("zstd", zstd_dir)):
        run_ = prepare(TrainConfig(data=str(directory), verifier=verifier, output=str(work / "unused"), draft_vocab_size=8192, device="cpu"))
        plan = epoch_plan(run_, train_query_counts(run_), 0)
        started = time.perf_counter()
        for batch in plan:
            load_batch(run_, batch)
        load_s[name] = (time.perf_counter() - started) / max(1, len(plan))
    return {"tokens_per_s": tokens_per_s, "load_batch_s": load_s, "tokens_per_batch": TrainConfig.tokens_per_batch}


def tau_after_training(data: Path, verifier: str, args, out: Path) -> dict:
    """Train a draft on `data` for --train-steps (seed 0), then τ at k=3 on MT-Bench and HumanEval with spec-bench."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    report_path = out / "report.json"
    if not report_path.exists():
        shutil.rmtree(out, ignore_errors=True)
        train_cmd = [sys.executable, "-m", "tools.spec_train", "--data", str(data), "--verifier", verifier, "-o", str(out / "train"),
                     "--draft-vocab-size", "8192", "--max-steps", str(args.train_steps), "--epochs", "100", "--seed", "0"]  # fmt: skip
        subprocess.run(train_cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
        bench_cmd = [sys.executable, "-m", "tools.spec_bench", "--verifier", verifier, "--speculator", str(out / "train" / "best"),
                     "--prompts", f"mt-bench:{args.tau_prompts}", f"humaneval:{args.tau_prompts}", "--k", "3", "--max-new-tokens", "64", "-o", str(report_path)]  # fmt: skip
        subprocess.run(bench_cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    report = json.loads(report_path.read_text())
    return {s["name"]: next(r["derived"]["tau"] for r in s["runs"] if r["k"] == 3) for s in report["prompt_sets"]}


def show(report: dict) -> None:
    sizes, upstream = report["bytes_per_token"], report["bytes_per_token"]["upstream"]
    gen, bare = report["gen_hidden_s"], statistics.median(report["bare_forward_s"])
    training = report["training"]
    speed = {name: statistics.median(values) for name, values in training["tokens_per_s"].items()}
    step_s = training["tokens_per_batch"] / speed["zstd"]
    decode_share = (training["load_batch_s"]["zstd"] - training["load_batch_s"]["raw"]) / step_s
    table = Table(title=f"hidden-state storage — {report['records']} records, {report['tokens']} tokens, layers {report['layer_ids']}, hidden {report['hidden_size']}, lossless round trip: {report['lossless']}")
    for column in ("what", "value", "ratio", "target"):
        table.add_column(column, justify="left" if column in ("what", "target") else "right")
    table.add_row("upstream layout (bf16, file per sample)", f"{upstream:,.0f} B/token", "1.000", "")
    for name, target in (("bf16-raw", ""), ("bf16-zstd", "≤ 0.70 (lossless)"), ("fp8-raw", ""), ("fp8-zstd", "≤ 0.45")):
        table.add_row(f"ours, {name}", f"{sizes[name]:,.0f} B/token", f"{sizes[name] / upstream:.3f}", target)
    for name, value in report["encode_mb_per_s"].items():
        table.add_row(f"zstd encode, {name} (one core)", f"{value:,.0f} MB/s", "", "")
    for name in ("bf16-raw", "bf16-zstd"):
        seconds = statistics.median(gen[name])
        table.add_row(f"spec-gen-hidden {name} vs bare forward", f"{1e6 * seconds / report['tokens']:,.0f} µs/token", f"{seconds / bare:.3f}", "≤ 1.10")
    runs = {name: f"{min(v):,.0f}–{max(v):,.0f}" for name, v in training["tokens_per_s"].items()}  # the spread shows the machine's noise
    table.add_row(f"spec-train tokens/s, zstd vs raw shards (runs {runs['zstd']} vs {runs['raw']})", f"{speed['zstd']:,.0f} vs {speed['raw']:,.0f}", f"{speed['zstd'] / speed['raw']:.3f}", "≥ 0.97")
    table.add_row("decode cost per step (zstd − raw batch load) / step", f"{1e3 * (training['load_batch_s']['zstd'] - training['load_batch_s']['raw']):.1f} ms", f"{decode_share:.3f}", "")
    for set_name in (report.get("tau") or {}).get("bf16", {}):
        bf16, fp8 = report["tau"]["bf16"][set_name], report["tau"]["fp8"][set_name]
        table.add_row(f"τ (k=3) {set_name}: fp8 vs bf16 data", f"{fp8:.3f} vs {bf16:.3f}", f"{fp8 / bf16:.3f}", "within 2%")
    stdout.print(table)
    machine = report["machine"]
    stdout.print(f"machine: {machine['note']}; {machine['cpus']} CPUs, torch threads {machine['threads']}, load average before {machine['load_avg_before'][0]:.2f}, after {machine['load_avg_after'][0]:.2f}")


if __name__ == "__main__":
    run(main)
