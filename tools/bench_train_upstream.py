"""Worker for `./just bench-train`: upstream speculators 0.9.0's EAGLE-3 training, driven on our batches.

Run with a Python that has upstream installed (e.g. `pip install --no-deps speculators==0.9.0` plus
openai, datasets, hs-connectors, loguru) and this checkout on PYTHONPATH. It reproduces the step of
upstream's `Trainer.train_epoch` with upstream's own pieces and defaults for eagle3:
`create_transformer_layer_config` + `Eagle3DraftModel.from_training_args` (1 layer; norm_before_residual, norm_before_fc and norm_output on, as
its train CLI sets them), `build_optimizers` (Muon on 2-D weights + AdamW, lr 1e-3), a linear
schedule with 1% warmup, grad-norm clip 1.0, its forward with `ttt_steps` and the kl_div loss.
Two CPU-only settings, as upstream documents for hardware without them: `draft_attn_impl="sdpa"`
(flex attention has no CPU backward) and the eager loss (the fused one needs Triton). Batches are
the very ones spec-train builds (libspec.train.packing, same seed), converted to upstream's keys.

Prints one JSON line: tokens/s, peak memory, the loss curve, and where the draft was saved.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from types import SimpleNamespace

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--verifier", required=True)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--tokens-per-batch", type=int, default=2048)
    parser.add_argument("--ttt-steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--optimizer", default="muon", choices=["muon", "adamw"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--draft-vocab-size", type=int, help="as spec-train's (default: its choice)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from loguru import logger

    logger.remove()
    from speculators.losses import resolve_loss_config
    from speculators.models.eagle3.core import Eagle3DraftModel
    from speculators.train.optimizers import build_optimizers
    from speculators.train.cli import create_transformer_layer_config
    from transformers import get_linear_schedule_with_warmup

    from libspec.train.config import TrainConfig
    from libspec.train.loop import prepare
    from tools.bench_train import planned_batches

    ours = TrainConfig.from_dict({"data": args.data, "verifier": args.verifier, "output": args.output, "tokens_per_batch": args.tokens_per_batch,
                                  "ttt_steps": args.ttt_steps, "seed": args.seed, "max_steps": args.steps,
                                  **({"draft_vocab_size": args.draft_vocab_size} if args.draft_vocab_size else {})})  # fmt: skip
    run = prepare(ours)  # the same checks, split, layers and vocabulary as spec-train
    # The draft decoder config exactly as upstream's train CLI builds it (1 llama layer, sliding window 2048).
    layer_config = create_transformer_layer_config(args.verifier, num_layers=1, draft_arch="llama", hidden_act=None,
                                                   sliding_window=2048, full_attention_indices=[])  # fmt: skip
    torch.manual_seed(args.seed)
    full_vocab = run.vocab.is_full
    model = Eagle3DraftModel.from_training_args(
        layer_config,
        t2d=None if full_vocab else run.vocab.t2d,
        d2t=None if full_vocab else run.vocab.d2t,
        verifier_name_or_path=args.verifier,
        draft_vocab_size=run.vocab.draft_vocab_size,
        norm_before_residual=True,
        norm_before_fc=True,
        norm_output=True,
        ttt_steps=args.ttt_steps,
        target_layer_ids=run.aux_layer_ids,
        draft_attn_impl="sdpa",
    )
    model.train()
    settings = SimpleNamespace(optimizer=args.optimizer, lr=args.lr, weight_decay=0.01, muon_lr=args.lr, muon_momentum=0.95,
                               muon_weight_decay=0.1, muon_ns_steps=5, muon_adjust_lr_fn="match_rms_adamw")  # fmt: skip
    optimizers = build_optimizers(model, settings)
    schedulers = [get_linear_schedule_with_warmup(o, max(args.steps // 100, 0), args.steps) for o in optimizers]
    loss_config = resolve_loss_config("kl_div", "eager")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    baseline_rss = _rss_bytes()
    losses, seconds, tokens = [], 0.0, 0
    for step, batch in enumerate(planned_batches(run, args.steps)):
        started = time.perf_counter()
        with autocast:
            _, loss, metrics = model(
                hidden_states=batch.aux_hidden,
                input_ids=batch.tokens,
                document_ids=batch.document_ids,
                loss_mask=batch.loss_mask,
                position_ids=batch.positions,
                verifier_last_hidden_states=batch.last_hidden,
                ttt_steps=args.ttt_steps,
                ttt_step_loss_decay=1.0,
                loss_config=loss_config,
            )
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for optimizer in optimizers:
            optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
        seconds += time.perf_counter() - started
        tokens += batch.num_queries
        losses.append(float(loss))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model.save_pretrained(args.output)
    print(json.dumps({"trainer": "upstream speculators 0.9.0", "steps": len(losses), "tokens": tokens, "train_seconds": seconds,
                      "tokens_per_s": tokens / seconds, "peak_rss_bytes": peak, "baseline_rss_bytes": baseline_rss,
                      "losses": losses, "checkpoint": args.output}))  # fmt: skip


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


if __name__ == "__main__":
    sys.exit(main())
