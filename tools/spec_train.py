"""spec-train: train an EAGLE-3 or DFlash draft for a verifier from a spec-tools data set or stream."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Sequence

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from libspec.algorithms import trainable_algorithms, training_for
from libspec.train.config import TrainConfig
from libspec.train.loop import TrainResult, train
from tools._cli import EXIT_OK, add_options, make_parser, options_from_args, print_json, run, stderr, stdout

DESCRIPTION = """\
Train an EAGLE-3 (default) or DFlash draft (speculator) for VERIFIER on hidden states captured
by spec-gen-hidden.

Checks first that the data was made by this verifier (fingerprint), has its hidden size, and
captured the aux layers and the last layer the teacher needs. Then trains against the verifier's
own head (EAGLE-3: test-time-training steps; DFlash: anchored blocks of mask tokens, one pass per
block), writing SPEC.md checkpoints that `vllm serve` runs as they are:

  OUT/checkpoint-epoch-E/   after every epoch         OUT/best -> the best one (validation tau_sim)
  OUT/checkpoint-step-N/    every --save-every steps  OUT/metrics.jsonl  one line per step

Rerunning the same command resumes from OUT/state/ (bit-identical on CPU); a changed command is
refused. The same command runs data-parallel under `torchrun --nproc-per-node N` (DDP; add
--fsdp to shard the draft).

Exit status: 0 trained, 1 bad input (message says which file/field), 2 usage error."""

EPILOG = """\
examples:
  spec-train --data data/ --verifier Qwen/Qwen3-8B -o runs/qwen3-eagle3 --epochs 3
  spec-gen-hidden ... -o - | spec-train --data - --verifier V -o runs/x
  torchrun --standalone --nproc-per-node 2 -m tools.spec_train --data data/ --verifier V -o runs/x
  spec-train --algorithm dflash --data data/ --verifier Qwen/Qwen3-8B -o runs/qwen3-dflash --aux-layer-ids 2,10,18,26,34
  spec-train --algorithm eagle --data data/ --verifier V -o runs/x-hass --hass-topk 10 --hass-align-steps 3   (data with layer n)
  vllm serve V --speculative-config '{"method": "eagle3", "model": "runs/x/best", "num_speculative_tokens": 3}'"""


def main(argv: Sequence[str] | None = None) -> int:
    algorithm = _algorithm_of(argv)
    options_class = training_for(algorithm).Options
    parser = make_parser("spec-train", DESCRIPTION, EPILOG)
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--data", required=True, metavar="DATASET", help="data set directory, stream file, or - for a stream on stdin")
    io.add_argument("--verifier", required=True, metavar="PATH", help="the verifier: a model folder or a Hub id in the local cache")
    io.add_argument("-o", "--output", required=True, metavar="OUT", help="run directory (created; rerun to resume)")
    add_options(parser, TrainConfig, "the run (any algorithm)")
    add_options(parser, options_class, f"the draft and how it is trained ({algorithm}; other --algorithm values have their own)")
    args = parser.parse_args(argv)

    draft = options_from_args(options_class, args)
    config = options_from_args(TrainConfig, args, data=args.data, verifier=args.verifier, output=args.output, draft=draft)
    main_rank = os.environ.get("RANK", "0") == "0"
    display = LiveDisplay(enabled=main_rank and not args.json, warnings=main_rank)
    with display:
        result = train(config, on_event=display.event, command=shlex.join(["spec-train", *(sys.argv[1:] if argv is None else argv)]))
    if main_rank:
        if args.json:
            print_json(summary(result))
        else:
            print_summary(result)
    return EXIT_OK


def _algorithm_of(argv: Sequence[str] | None) -> str:
    """--algorithm, read before the full parser is built (the algorithm decides the other options)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--algorithm", default=TrainConfig.__dataclass_fields__["algorithm"].default)
    algorithm = early.parse_known_args(argv)[0].algorithm
    return algorithm if algorithm in trainable_algorithms() else early.get_default("algorithm")


class LiveDisplay:
    """A progress bar on stderr whose line shows the latest loss, accuracies and tau_sim."""

    def __init__(self, enabled: bool, warnings: bool = True):
        self.enabled = enabled
        self.warnings = warnings  # shown on stderr even with --json (one rank only)
        self.progress = Progress(
            TextColumn("[bold]spec-train[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            TextColumn("{task.description}"), console=stderr, transient=False,
        )  # fmt: skip
        self.task = None

    def __enter__(self):
        if self.enabled:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.__exit__(*exc)

    def event(self, kind: str, payload: dict) -> None:
        if kind == "warning" and self.warnings:
            stderr.print(f"[bold yellow]spec-train: warning:[/] {escape(payload['message'])}", soft_wrap=True)
        if not self.enabled:
            return
        if kind == "start":
            resumed = f", resumed at step {payload['resumed_at_step']}" if payload["resumed_at_step"] else ""
            self.progress.console.print(
                f"training {payload['train_records']} records ({payload['val_records']} held out) on {payload['device']}"
                f" x{payload['world_size']}: aux layers {payload['aux_layer_ids']}, draft vocab {payload['draft_vocab_size']},"
                f" {payload['trainable_parameters']:,} trainable parameters{resumed}"
            )
            self.task = self.progress.add_task("", total=payload["total_steps"], completed=payload["resumed_at_step"])
        elif kind == "step":
            accs = " ".join(f"{payload[f'cond_acc_{i}']:.2f}" for i in range(_steps(payload)))
            self.progress.update(
                self.task, completed=payload["step"],
                description=f"loss {payload['loss']:.3f}  cond acc {accs}  τ_sim {payload['tau_sim']:.2f}  {payload['tokens_per_s']:,.0f} tok/s",
            )  # fmt: skip
        elif kind == "validation":
            self.progress.console.print(
                f"epoch {payload['epoch']} step {payload['step']}: {payload['source']} loss {payload['loss']:.3f}, τ_sim {payload['tau_sim']:.3f}"
            )
        elif kind == "checkpoint":
            best = payload.get("best") or {}
            mark = " (best)" if best.get("step") == payload["step"] else ""
            self.progress.console.print(f"wrote {payload['path']}{mark}", style="dim")


def _steps(metrics: dict) -> int:
    return sum(1 for key in metrics if key.startswith("cond_acc_"))


def summary(result: TrainResult) -> dict:
    return {
        "output": str(result.output),
        "steps": result.progress.step,
        "epochs_completed": result.progress.epoch,
        "tokens": result.progress.tokens,
        "best": result.best,
        "checkpoints": result.checkpoints,
        "last_step": result.last_metrics,
    }


def print_summary(result: TrainResult) -> None:
    best = result.best or {}
    stdout.print(f"[green]✓ trained[/] {result.progress.step} steps, {result.progress.tokens:,} tokens → [bold]{result.output}[/]")
    if best:
        stdout.print(f"    best: {result.output}/best → {best['checkpoint']} (τ_sim {best['value']:.3f} on {best['source']} data)")
    stdout.print(f"    metrics: {result.output}/metrics.jsonl")


def entry() -> None:
    run(main)


if __name__ == "__main__":
    entry()
