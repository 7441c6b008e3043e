"""spec-gen-hidden: capture a verifier's hidden states on conversation data, for draft training."""

from __future__ import annotations

import os

# Before torch is imported: spinning OpenMP threads make a shared machine ~5x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
from typing import Sequence  # noqa: E402

from rich.markup import escape  # noqa: E402
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn  # noqa: E402

from libspec.format.dataset import DEFAULT_SHARD_BYTES  # noqa: E402
from libspec.capture.gen_hidden import CAPTURE, SCALE, GenHiddenConfig  # noqa: E402
from tools._cli import EXIT_OK, add_options, make_parser, options_from_args, print_json, run, stderr  # noqa: E402

DESCRIPTION = """\
Capture the verifier's hidden states on training conversations, for draft (speculator) training.

Reads conversations (OpenAI `messages`, ShareGPT `conversations`, `text`, `prompt`+`completion`,
or pre-tokenized `input_ids`+`loss_mask`; JSONL/JSON files, directories of them, or - for
stdin), renders them with the verifier's chat template, supervises exactly the tokens the
verifier produces (every assistant turn), optionally regenerates the replies with the verifier
itself (--regenerate, recommended; it also answers prompt-only inputs: conversations ending in a
user turn, a prompt without completion), and records the residual stream at --layers (default:
EAGLE-3's [2, n//2, n-3] plus the last layer n, SPEC.md §4) into a data set directory (SPEC.md
§9) or a stream on stdout (-o -).

A rerun of the same command resumes an interrupted run: committed shards are kept, the rest is
redone, and the result is identical to an uninterrupted run. --shard-index/--num-shards split the
inputs round-robin for array jobs; --merge joins the shard outputs into one data set.

Exit status: 0 done, 1 failure (bad input, mismatched resume, no record written, ...), 2 usage error."""

EPILOG = """\
examples:
  spec-gen-hidden --verifier Qwen/Qwen3-8B --data chats.jsonl -o data/
  spec-gen-hidden --verifier ./verifier --data prompts/ --regenerate --temperature 0.7 --seed 1 -o data/
  spec-gen-hidden --verifier ./verifier --data chats.jsonl -o - | spec-validate -
  for i in 0 1 2 3; do spec-gen-hidden ... --shard-index $i --num-shards 4 -o part-$i; done
  spec-gen-hidden --merge part-0 part-1 part-2 part-3 -o data/

The JSON summary (counts read / dropped by reason / written, tokens, bytes) goes to stderr, or to
stdout with --json (to stderr as JSON when stdout carries the stream)."""


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("spec-gen-hidden", DESCRIPTION, EPILOG)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", nargs="+", metavar="INPUT", help="input files or directories (.jsonl/.json, optionally .gz/.zst); - for stdin")
    what.add_argument("--merge", nargs="+", metavar="DATASET", help="join complete data sets (the --shard-index outputs of one run) into -o")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="data set directory to create or resume; - streams to stdout")
    parser.add_argument("--verifier", metavar="PATH_OR_ID", help="the verifier: a model folder or a Hub id in the local cache")

    sections = add_options(parser, GenHiddenConfig)
    sections[CAPTURE].add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    scale = sections[SCALE]
    scale.add_argument("--shard-mb", type=float, default=DEFAULT_SHARD_BYTES / 2**20, metavar="MB", help="stored hidden states per data set shard (the resume granularity; default: 256)")
    scale.add_argument("--allow-partial", action="store_true", help="with --merge: allow shard outputs of a run to be missing")
    scale.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    streaming = args.output == "-"
    if args.merge:
        from libspec.capture.merge import merge_datasets

        if streaming:
            parser.error("--merge writes a data set directory; -o - is not allowed")
        manifest = merge_datasets(args.merge, args.output, allow_partial=args.allow_partial)
        summary = {"output": args.output, "merged": args.merge, "num_records": manifest["num_records"], "num_tokens": manifest["num_tokens"], "num_shards": len(manifest["shards"])}
        return _report(summary, args.json, streaming=False)
    if not args.verifier:
        parser.error("--verifier is required with --data")

    import torch

    from libspec.capture.gen_hidden import EmptyDataSet, generate_hidden_states

    if args.threads:
        torch.set_num_threads(args.threads)
    config = options_from_args(
        GenHiddenConfig, args, verifier=args.verifier, inputs=tuple(args.data), output=args.output, shard_bytes=max(1, int(args.shard_mb * 2**20))
    )
    try:
        with _progress(args.quiet) as (progress, update):
            summary = generate_hidden_states(config, on_progress=update)
    except EmptyDataSet as error:
        _report(error.summary, args.json, streaming)  # the counts say what was dropped; then exit 1 saying why
        raise
    return _report(summary, args.json, streaming)


class _progress:
    """A rich progress bar on stderr with inputs, records, samples/s and tokens/s."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("[bold]capturing"),
            BarColumn(),
            TextColumn("{task.completed}/{task.fields[of]} inputs"),
            TextColumn("{task.fields[records]} records · {task.fields[tokens]} tokens"),
            TextColumn("[cyan]{task.fields[samples_s]:.1f} samples/s · {task.fields[tokens_s]:,.0f} tokens/s"),
            TimeElapsedColumn(),
            console=stderr,
            transient=False,
            disable=quiet,
        )
        self.task = None

    def update(self, event) -> None:
        elapsed = max(event.elapsed_s, 1e-9)
        fields = dict(records=event.records, tokens=event.tokens, samples_s=event.records / elapsed, tokens_s=event.tokens / elapsed)
        if self.task is None:
            self.task = self.bar.add_task("capture", total=event.inputs_total, of=event.inputs_total or "?", **fields)
        self.bar.update(self.task, completed=event.inputs_done, **fields)

    def __enter__(self):
        self.bar.__enter__()
        return self.bar, self.update

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)


def _report(summary: dict, as_json: bool, streaming: bool) -> int:
    """The JSON summary: stdout with --json (unless stdout carries the stream), else stderr."""
    if as_json and not streaming:
        print_json(summary)
    elif as_json:
        stderr.print(json.dumps(summary), soft_wrap=True, markup=False, highlight=False)
    else:
        _print_summary(summary)
    return EXIT_OK


def _print_summary(summary: dict) -> None:
    """A few human lines on stderr (stdout may carry the stream); --json has every field."""
    output = escape(summary["output"])
    if "merged" in summary:
        stderr.print(f"[green]✓[/] merged {len(summary['merged'])} data sets → {output}: "
                     f"{summary['num_records']:,} records, {summary['num_tokens']:,} tokens, {summary['num_shards']} shards")  # fmt: skip
        return
    mark = "[green]✓[/]" if summary["records_written"] else "[red]✗[/]"  # an empty data set fails the run
    if summary.get("already_complete"):
        stderr.print(f"{mark} {output} was already complete; nothing to do")
    else:
        stderr.print(f"{mark} {summary['records_written']:,} records, {summary['tokens_written']:,} tokens "
                     f"({summary['supervised_tokens']:,} supervised) → {output}")  # fmt: skip
    speed = f", {summary['tokens_per_s']:,.0f} tokens/s" if summary.get("tokens_per_s") else ""
    stderr.print(f"    layers {summary['layer_ids']}, {summary['storage_dtype']}, {summary['bytes_written'] / 1e6:,.1f} MB"
                 f", {summary['elapsed_s']:.1f} s{speed}")  # fmt: skip
    if summary.get("dropped"):
        stderr.print("    dropped: " + ", ".join(f"{reason} {count:,}" for reason, count in summary["dropped"].items()))
    for error in summary.get("first_errors") or []:
        stderr.print(f"    [yellow]skipped:[/] {escape(str(error))}")


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()
