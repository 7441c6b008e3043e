"""spec-train: train an EAGLE-3 draft for a verifier from a spec-tools data set or stream."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from libspec.algorithms.eagle3.train import LOSSES, TTT_INPUTS, TTT_WEIGHTINGS
from libspec.train.loop import TrainConfig, TrainResult, train
from tools._cli import EXIT_OK, make_parser, print_json, run, stderr, stdout

DESCRIPTION = """\
Train an EAGLE-3 draft (speculator) for VERIFIER on hidden states captured by spec-gen-hidden.

Checks first that the data was made by this verifier (fingerprint), has its hidden size, and
captured the aux layers and the last layer the teacher needs. Then trains with test-time-training
steps against the verifier's own distribution, writing SPEC.md checkpoints that `vllm serve`
runs as they are:

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
  torchrun --nproc-per-node 2 -m tools.spec_train --data data/ --verifier V -o runs/x
  vllm serve V --speculative-config '{"method": "eagle3", "model": "runs/x/best", "num_speculative_tokens": 3}'"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("spec-train", DESCRIPTION, EPILOG)
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--data", required=True, metavar="DATASET", help="data set directory, stream file, or - for a stream on stdin")
    io.add_argument("--verifier", required=True, metavar="PATH", help="the verifier: a model folder or a Hub id in the local cache")
    io.add_argument("-o", "--output", required=True, metavar="OUT", help="run directory (created; rerun to resume)")
    io.add_argument("--algorithm", default="eagle3", choices=["eagle3"], help="draft algorithm (default eagle3)")
    io.add_argument("--save-every", type=int, default=0, metavar="N", help="also checkpoint every N optimizer steps (default: epoch ends only)")
    io.add_argument("--save-dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"], help="dtype of checkpoint weights (default bfloat16)")

    draft = parser.add_argument_group("the draft")
    draft.add_argument("--num-layers", type=int, default=1, help="decoder layers (default 1)")
    draft.add_argument("--layer-style", default="llama", choices=["llama", "qwen3"], help="decoder layer type vLLM builds (default llama)")
    draft.add_argument("--aux-layer-ids", type=_int_list, default=None, metavar="I,J,K",
                       help="verifier layers fed to fc (default EAGLE-3's 2,n/2,n-3); must be captured in the data")  # fmt: skip
    draft.add_argument("--draft-vocab-size", type=int, default=None, metavar="D",
                       help="predict over the D most frequent supervised tokens (default: full vocabulary up to 32k, else 32000)")  # fmt: skip
    for flag, default, text in (
        ("norm-before-residual", True, "layer 0 takes its residual after hidden_norm"),
        ("norm-before-fc", False, "one RMSNorm over the concatenated aux states (gpt-oss style)"),
        ("fc-norm", False, "an RMSNorm per aux layer before fc (EAGLE 3.1)"),
        ("norm-output", False, "feed the post-norm state back across steps (EAGLE 3.1)"),
    ):
        draft.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=default, help=f"{text} (default {'on' if default else 'off'})")

    ttt = parser.add_argument_group("test-time training")
    ttt.add_argument("--ttt-steps", type=int, default=3, help="drafted positions trained per query; also the checkpoint's speculative_tokens (default 3)")
    ttt.add_argument("--loss", default="kl", choices=LOSSES, help="kl: forward KL to the verifier; tv: total variation; lk: LK hybrid (default kl)")
    ttt.add_argument("--step-decay", type=float, default=1.0, metavar="G", help="TTT step s weighs G**s (default 1.0)")
    ttt.add_argument("--ttt-inputs", default="data", choices=TTT_INPUTS, help="tokens fed to later steps: the data's or the draft's own argmax (default data)")
    ttt.add_argument("--ttt-weighting", default="uniform", choices=TTT_WEIGHTINGS,
                     help="reach: weigh each later step by the chance the draft's chain gets there (default uniform)")  # fmt: skip

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--tokens-per-batch", type=int, default=2048, metavar="T", help="draft queries packed per batch and process (default 2048)")
    opt.add_argument("--grad-accum", type=int, default=1, metavar="K", help="batches per optimizer step and process (default 1)")
    opt.add_argument("--epochs", type=int, default=1, help="passes over the training data (default 1)")
    opt.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    opt.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default 1e-3)")
    opt.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    opt.add_argument("--schedule", default="cosine", choices=["cosine", "linear", "constant"], help="after warmup (default cosine)")
    opt.add_argument("--warmup-steps", type=int, default=None, help="linear warmup steps (default 1%% of the steps)")
    opt.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, 0 for none (default 1.0)")
    opt.add_argument("--seed", type=int, default=0, help="initialisation and data order (default 0)")
    opt.add_argument("--val-fraction", type=float, default=0.05, help="records held out for validation and best (default 0.05)")
    opt.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="auto: fp32 on CPU, bf16 autocast on CUDA")
    opt.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    opt.add_argument("--fsdp", action="store_true", help="shard the draft with FSDP2 (under torchrun)")
    args = parser.parse_args(argv)

    config = TrainConfig(
        data=args.data, verifier=args.verifier, output=args.output, algorithm=args.algorithm,
        num_layers=args.num_layers, layer_style=args.layer_style,
        aux_layer_ids=None if args.aux_layer_ids is None else tuple(args.aux_layer_ids),
        draft_vocab_size=args.draft_vocab_size, norm_before_residual=args.norm_before_residual,
        norm_before_fc=args.norm_before_fc, fc_norm=args.fc_norm, norm_output=args.norm_output,
        ttt_steps=args.ttt_steps, loss=args.loss, step_decay=args.step_decay, ttt_inputs=args.ttt_inputs, ttt_weighting=args.ttt_weighting,
        tokens_per_batch=args.tokens_per_batch, grad_accum=args.grad_accum, epochs=args.epochs,
        max_steps=args.max_steps, lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
        warmup_steps=args.warmup_steps, grad_clip=args.grad_clip, seed=args.seed, val_fraction=args.val_fraction,
        precision=args.precision, device=args.device, fsdp=args.fsdp, save_every=args.save_every, save_dtype=args.save_dtype,
    )  # fmt: skip
    main_rank = os.environ.get("RANK", "0") == "0"
    display = LiveDisplay(enabled=main_rank and not args.json)
    with display:
        result = train(config, on_event=display.event, command=shlex.join(["spec-train", *(sys.argv[1:] if argv is None else argv)]))
    if main_rank:
        if args.json:
            print_json(summary(result))
        else:
            print_summary(result)
    return EXIT_OK


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


class LiveDisplay:
    """A progress bar on stderr whose line shows the latest loss, accuracies and tau_sim."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
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
