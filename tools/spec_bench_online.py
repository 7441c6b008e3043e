"""spec-bench online: GuideLLM against a baseline and a speculative endpoint, side by side."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Sequence

from rich.markup import escape
from rich.table import Table

from libspec.format.atomic import write_text_atomic
from libspec.errors import SpecError
from libspec.bench.online import INSTALL_HINT, OnlineSettings, run_online_bench
from tools._cli import EXIT_OK, make_parser, print_json, stderr, stdout

DESCRIPTION = f"""\
Benchmark speculative decoding as users see it: GuideLLM sends the same workload at the same
load levels to two OpenAI-compatible endpoints serving the same verifier — a baseline and one
with a speculator (e.g. two `vllm serve` processes, or two `spec-bench serve`) — one after the
other, baseline first. Prints inter-token latency (ITL), time to first token (TTFT) and output
throughput per load level side by side with speedups, and the acceptance each endpoint counted:
vLLM's vllm:spec_decode_* counters at /metrics, read before and after the run
(τ = 1 + Δaccepted / Δdrafts, per-position rates). Rows that cannot be right are flagged.

Load: --sweep N runs GuideLLM's sweep on the baseline (synchronous, throughput, N-2 constant
rates between) and replays exactly those rates on the speculative endpoint; or fix the levels
with --concurrency, --rates or --synchronous. Each level runs --max-seconds / --max-requests.
Nothing else should use the endpoints meanwhile.

Needs guidellm >= 0.8 ({INSTALL_HINT}); it runs as a subprocess."""

EPILOG = """\
examples:
  spec-bench online --baseline http://127.0.0.1:8001 --speculative http://127.0.0.1:8002 --tokenizer V
  spec-bench online --baseline URL1 --speculative URL2 --prompts chat.jsonl --concurrency 1,4,16 --json -o online.json
  spec-bench online --baseline URL1 --speculative URL2 --tokenizer V --rates 1,2,4 --poisson --temperature 0"""


def _levels(text: str, option: str, integer: bool = False) -> tuple[float, ...]:
    try:
        values = tuple((int if integer else float)(part) for part in text.split(","))
    except ValueError:
        raise SpecError(f"{option} {text!r}: expected a comma-separated list of {'integers' if integer else 'numbers'}") from None
    if any(v <= 0 for v in values):
        raise SpecError(f"{option} {text!r}: every level must be positive")
    return values


def build_parser():
    parser = make_parser("spec-bench online", DESCRIPTION, EPILOG)
    parser.add_argument("--baseline", required=True, metavar="URL", help="the verifier alone, e.g. http://127.0.0.1:8001")
    parser.add_argument("--speculative", required=True, metavar="URL", help="the same verifier with a speculator")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--sweep", type=int, metavar="N", help="GuideLLM's rate sweep with N levels (default 6)")
    load.add_argument("--concurrency", metavar="LIST", help="fixed concurrent streams, e.g. 1,4,16")
    load.add_argument("--rates", metavar="LIST", help="fixed request rates (requests/s), e.g. 0.5,1,2")
    load.add_argument("--synchronous", action="store_true", help="one request at a time")
    parser.add_argument("--poisson", action="store_true", help="with --rates: Poisson arrivals instead of evenly spaced")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="per load level (default 30)")
    parser.add_argument("--max-requests", type=int, help="per load level (default: no limit)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--prompts", metavar="FILE", help="JSONL prompt set ({\"prompt\"} or {\"messages\"}); default synthetic text")
    data.add_argument("--prompt-tokens", type=int, default=256, help="synthetic prompt length in tokens (default 256)")
    parser.add_argument("--output-tokens", type=int, default=128, help="tokens generated per request, EOS ignored (default 128)")
    parser.add_argument("--tokenizer", help="tokenizer folder for synthetic prompts (default: the baseline's model root, if a folder)")
    parser.add_argument("--model", help="model id on both endpoints (default: each endpoint's first model)")
    parser.add_argument("--request-format", choices=("chat", "completions"), default="chat", help="endpoint to call (default chat)")
    parser.add_argument("--temperature", type=float, help="sent with every request (default: each server's default)")
    parser.add_argument("--guidellm", metavar="PATH", help="the guidellm executable (default: beside this python, then PATH)")
    parser.add_argument("--keep", metavar="DIR", help="keep GuideLLM's scenarios, logs and raw JSON reports in DIR")
    parser.add_argument("-o", "--output", help="write the JSON report to this file")
    return parser


def settings_from(args) -> OnlineSettings:
    """The frozen settings an argument list asks for."""
    if args.poisson and not args.rates:
        raise SpecError("--poisson needs --rates")
    if args.concurrency:
        load, levels = "concurrent", _levels(args.concurrency, "--concurrency", integer=True)
    elif args.rates:
        load, levels = ("poisson" if args.poisson else "constant"), _levels(args.rates, "--rates")
    elif args.synchronous:
        load, levels = "synchronous", ()
    else:
        load, levels = "sweep", ()
    sweep_size = args.sweep if args.sweep is not None else 6
    if load == "sweep" and sweep_size < 2:
        raise SpecError(f"--sweep {sweep_size}: a sweep has at least 2 levels (synchronous and throughput)")
    for option, value in (("--output-tokens", args.output_tokens), ("--prompt-tokens", args.prompt_tokens), ("--max-requests", args.max_requests)):
        if value is not None and value < 1:
            raise SpecError(f"{option} {value}: expected at least 1")
    return OnlineSettings(
        baseline_url=args.baseline,
        speculative_url=args.speculative,
        load=load,
        levels=levels,
        sweep_size=sweep_size,
        max_seconds=args.max_seconds,
        max_requests=args.max_requests,
        prompts=args.prompts,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        request_format=args.request_format,
        temperature=args.temperature,
        model=args.model,
        tokenizer=args.tokenizer,
        guidellm=args.guidellm,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    command = shlex.join(["spec-bench", "online", *argv])
    with stderr.status("starting guidellm") as status:
        report = run_online_bench(settings, args.keep, command, status.update)
    if args.output:
        write_text_atomic(args.output, json.dumps(report, indent=2) + "\n")
    if args.json:
        print_json(report)
    else:
        print_report(report)
    return EXIT_OK


def _pair(baseline: dict | None, speculative: dict | None, get, digits: int = 1) -> str:
    def one(summary):
        value = get(summary) if summary else None
        return "—" if value is None else f"{value:.{digits}f}"

    return f"{one(baseline)} / {one(speculative)}"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def print_report(report: dict) -> None:
    """The side-by-side table (baseline / speculative per cell), acceptance below it, then every flag."""
    base, spec = report["endpoints"]["baseline"], report["endpoints"]["speculative"]
    stdout.print(f"baseline [bold]{escape(base['url'])}[/] vs speculative [bold]{escape(spec['url'])}[/] "
                 f"(model {escape(str(spec['model']))}), guidellm {report['guidellm_version']}")  # fmt: skip
    table = Table(title="cells: baseline / speculative; × = speedup (latency: base/spec, throughput: spec/base)", title_justify="left")
    for column in ("load", "ITL p50 ms", "×", "ITL p90", "ITL p99", "TTFT p50 ms", "×", "TTFT p99", "out tok/s", "×", "tok/chunk", "requests ok"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in report["rows"]:
        b, s, x = row["baseline"], row["speculative"], row["speedup"]
        table.add_row(
            escape(row["label"]) + (" ⚠" if row["flags"] else ""),
            _pair(b, s, lambda m: m["itl_ms"]["median"], 2), _times(x["itl_median"]),
            _pair(b, s, lambda m: m["itl_ms"]["p90"], 2), _pair(b, s, lambda m: m["itl_ms"]["p99"], 2),
            _pair(b, s, lambda m: m["ttft_ms"]["median"]), _times(x["ttft_median"]), _pair(b, s, lambda m: m["ttft_ms"]["p99"]),
            _pair(b, s, lambda m: m["output_tokens_per_s"], 0), _times(x["output_tokens_per_s"]),
            _pair(b, s, lambda m: m["tokens_per_chunk"], 2), _pair(b, s, lambda m: m["requests"]["successful"], 0),
        )  # fmt: skip
    stdout.print(table)
    for role, endpoint in (("baseline", base), ("speculative", spec)):
        spec_decode = endpoint["spec_decode"]
        acceptance = spec_decode.get("acceptance")
        if acceptance and acceptance["tau"] is not None:
            per_position = " ".join("—" if r is None else f"{r:.2f}" for r in acceptance["per_position_acceptance"])
            stdout.print(f"{role}: τ [bold]{acceptance['tau']:.2f}[/] (k={acceptance['k']}), acceptance rate {acceptance['acceptance_rate']:.2f}, "
                         f"per position {per_position} — /metrics over {spec_decode['delta']['num_drafts']:.0f} verification steps")  # fmt: skip
        elif role == "baseline" and spec_decode.get("missing"):
            stdout.print("baseline: no spec-decode counters (as expected)", style="dim")
    for flag in report["flags"]:
        stdout.print(f"  [yellow]⚠[/] {escape(flag)}")
    for row in report["rows"]:
        for flag in row["flags"]:
            stdout.print(f"  [yellow]⚠ {escape(row['label'])}:[/] {escape(flag)}")
