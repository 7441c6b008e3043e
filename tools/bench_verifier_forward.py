"""bench-verifier-forward: KV-cached forward latency of a verifier for 1 vs k new tokens.

A speculative round pays one verifier forward over k tokens where plain decoding pays one forward
per token, so the ratio latency(k) / latency(1) bounds the speedup any draft can give.

    python -m tools.bench_verifier_forward                      # the cached full built-in verifier
    python -m tools.bench_verifier_forward --threads 1 --new-tokens 1 2 4 8 16 --json
"""

from __future__ import annotations

import os

# Must be set before torch starts its OpenMP threads: spinning threads are ~5x slower on a busy core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

import torch  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from libspec.demo import tiny_verifier  # noqa: E402
from libspec.errors import SpecError  # noqa: E402
from tools._cli import EXIT_OK, make_parser, print_json, run, stdout  # noqa: E402


def forward_latencies_ms(model, token_ids: torch.Tensor, prefix_len: int, new_tokens: Sequence[int],
                         repeats: int, warmup: int = 10) -> dict[int, list[float]]:
    """Per k in `new_tokens`, `repeats` timings of one forward of k tokens after a cached prefix.

    The k values are interleaved within each repeat so that load changes on a shared machine hit
    them alike; the cache is cropped back to the prefix after every forward.
    """
    with torch.inference_mode():
        cache = model(token_ids[:, :prefix_len], use_cache=True).past_key_values
        timings: dict[int, list[float]] = {k: [] for k in new_tokens}
        for repeat in range(warmup + repeats):
            for k in new_tokens:
                started = time.perf_counter()
                model(token_ids[:, prefix_len : prefix_len + k], past_key_values=cache, use_cache=True)
                elapsed_ms = (time.perf_counter() - started) * 1000
                cache.crop(-k)  # negative: drop the last k tokens (the API of transformers 5)
                assert cache.get_seq_length() == prefix_len
                if repeat >= warmup:
                    timings[k].append(elapsed_ms)
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    """Load the verifier, time KV-cached forwards per thread count, print medians and ratios."""
    parser = make_parser("bench-verifier-forward", __doc__.split("\n\n")[0])
    parser.add_argument("--verifier", type=Path, help="verifier folder (default: the cached full built-in one)")
    parser.add_argument("--prefix-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args(argv)

    folder = args.verifier or tiny_verifier.verifier_folder("full")
    if not (folder / "config.json").is_file():
        raise SpecError(f"{folder}: no verifier here; build it with `python -m tools.build_verifier`")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype)).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # Real code as input: the first held-out stdlib file, never seen in training.
    text = tiny_verifier.corpus_split("full").validation[0].read_text(encoding="utf-8")
    needed = args.prefix_tokens + max(args.new_tokens)
    token_ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=needed)["input_ids"]
    if token_ids.shape[1] < needed:
        raise SpecError(f"{folder}: held-out text gives {token_ids.shape[1]} tokens, need {needed}")

    load_at_start = [round(load, 2) for load in os.getloadavg()]  # other work skews every timing
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        timings = forward_latencies_ms(model, token_ids, args.prefix_tokens, args.new_tokens, args.repeats)
        base = statistics.median(timings[args.new_tokens[0]])
        for k, values in timings.items():
            quartiles = statistics.quantiles(values, n=4)
            rows.append({"threads": threads, "new_tokens": k, "median_ms": round(statistics.median(values), 3),
                         "p25_ms": round(quartiles[0], 3), "p75_ms": round(quartiles[2], 3),
                         "ratio_to_first": round(statistics.median(values) / base, 2)})
    setting = {"verifier": str(folder), "prefix_tokens": args.prefix_tokens, "repeats": args.repeats,
               "dtype": args.dtype, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
               "load_average_1_5_15min": {"start": load_at_start, "end": [round(v, 2) for v in os.getloadavg()]}}
    if args.json:
        print_json({"setting": setting, "results": rows})
        return EXIT_OK
    table = Table(title=f"KV-cached forward after {args.prefix_tokens} tokens ({args.dtype}, {args.repeats} runs)")
    for column in ("threads", "new tokens", "median ms", "p25 ms", "p75 ms", f"× k={args.new_tokens[0]}"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    stdout.print(table)
    stdout.print(f"load average (1, 5, 15 min): {setting['load_average_1_5_15min']}")
    return EXIT_OK


if __name__ == "__main__":
    run(main)
