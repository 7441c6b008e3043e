"""`./just bench-kernels`: the verifier's forward of n = 1..8 new tokens, plain kernels vs spec-bench's
`--kernels auto` plan (libspec/bench/kernels.py), side by side in one run.

    python -m tools.bench_kernels [--verifier DIR] [--context 300] [--repeats 12] [--json]

v(n) is a forward of n tokens over a single decoding step of the same engine: the verify cost of
k = n − 1 drafts. Both engines are timed in alternation (plain, then planned, each n in turn) with the
same cache of --context tokens, so drift of a shared machine hits both alike; medians are printed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

import torch  # noqa: E402
from rich.table import Table  # noqa: E402

from libspec.bench.decoding import DecodingVerifier  # noqa: E402
from libspec.bench.kernels import plan_small_batch_linears, verifier_forward_timer  # noqa: E402
from libspec.bench.measure import hardware_description  # noqa: E402
from libspec.verifier import load_causal_lm  # noqa: E402
from tools._cli import EXIT_OK, make_parser, print_json, run, stderr, stdout  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SIZES = tuple(range(1, 9))


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("bench-kernels", "The verifier's forward of 1..8 tokens: plain kernels vs the --kernels auto plan, side by side.")
    parser.add_argument("--verifier", help="a verifier folder (default: SmolLM2-135M-Instruct, built and cached on first use)")
    parser.add_argument("--context", type=int, default=300, help="cached tokens before each timed forward (default 300)")
    parser.add_argument("--repeats", type=int, default=12, help="alternating timing rounds (default 12)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as spec-bench)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    verifier_dir = args.verifier or subprocess.run([sys.executable, "-m", "tools.build_smollm2"], check=True, capture_output=True, text=True, cwd=REPO).stdout.strip()
    model = load_causal_lm(verifier_dir, torch.device("cpu"), torch.float32)
    verifier = DecodingVerifier(model)
    with stderr.status("planning kernels (timing the verifier's forwards each way)"):
        plan = plan_small_batch_linears(model, list(SIZES), verifier_forward_timer(verifier))
    time_forward = verifier_forward_timer(verifier, args.context)
    seconds: dict[str, dict[int, list[float]]] = {"plain": {n: [] for n in SIZES}, "auto": {n: [] for n in SIZES}}
    for index in range(args.repeats):
        stderr.print(f"round {index + 1}/{args.repeats}", end="\r")
        for engine in ("plain", "auto"):
            if engine == "auto":
                plan.install(model)
            for n in SIZES:
                seconds[engine][n].append(time_forward(n))
            plan.remove()
    report = {
        "verifier": verifier_dir, "hardware": hardware_description(torch.device("cpu")), "threads": args.threads, "context": args.context,
        "repeats": args.repeats, "load_average": os.getloadavg(), "plan": plan.describe(),
        "median_ms": {engine: {str(n): 1e3 * statistics.median(values) for n, values in by_n.items()} for engine, by_n in seconds.items()},
    }  # fmt: skip
    print_json(report) if args.json else show(report)
    return EXIT_OK


def show(report: dict) -> None:
    plain, auto = report["median_ms"]["plain"], report["median_ms"]["auto"]
    table = Table(title=f"verifier forward of n new tokens after {report['context']} cached — {report['hardware']}, "
                        f"{report['repeats']} alternating rounds, load average {report['load_average'][0]:.1f}")  # fmt: skip
    for column in ("n", "plain ms", "v plain", "auto ms", "v auto", "auto / plain"):
        table.add_column(column, justify="right")
    for n in map(str, SIZES):
        table.add_row(n, f"{plain[n]:.1f}", f"{plain[n] / plain['1']:.2f}", f"{auto[n]:.1f}", f"{auto[n] / auto['1']:.2f}", f"{auto[n] / plain[n]:.2f}")
    stdout.print(table)
    stdout.print(f"plan: {report['plan']['note']}")


if __name__ == "__main__":
    run(main)
