"""Worker for `./just bench-algorithms --upstream-dflash`: upstream speculators 0.9.0's DFlash training,
driven on the batches spec-train builds for the same DFlash run.

Run with a Python that has upstream installed (the interop-gates venv) and this checkout on
PYTHONPATH. It reproduces upstream's DFlash training step with upstream's own pieces and its
dflash defaults (`speculators.train` config: cross-entropy loss, D-PACE position weights,
dpace_alpha 0.5, max_anchors 512; Muon on 2-D weights + AdamW at lr 1e-3; a linear schedule with 1%
warmup; grad-norm clip 1.0): `create_transformer_layer_config` (qwen3 layers, sliding window
2048) + `DFlashDraftModel.from_training_args` with upstream's own mask-token choice. The draft's
size (--num-layers, --block-size) and aux layers are the ones given, as for spec-train's run. Two
CPU-only settings, as for bench_train_upstream: `draft_attn_impl="sdpa"` (flex attention has no
CPU backward) and the eager loss (the fused one needs Triton).

Prints one JSON line: tokens/s (supervised positions of the batches, as spec-train counts them),
peak memory, the loss curve, and where the draft was saved (upstream's save_pretrained).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from types import SimpleNamespace

import torch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--verifier", required=True)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--tokens-per-batch", type=int, default=2048)
    parser.add_argument("--num-layers", type=int, default=5)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--aux-layer-ids", default=None, help="I,J,...: as spec-train's --aux-layer-ids (default: spec-train's choice)")
    parser.add_argument("--draft-vocab-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def build_model(args: argparse.Namespace, run):
    """Upstream's DFlash draft as its train CLI builds it, over spec-train's draft vocabulary and aux layers."""
    from speculators.models.dflash.core import DFlashDraftModel
    from speculators.train.cli import create_transformer_layer_config
    from speculators.train.utils import resolve_mask_token_id

    layer_config = create_transformer_layer_config(args.verifier, num_layers=args.num_layers, draft_arch="qwen3", hidden_act=None,
                                                   sliding_window=2048, full_attention_indices=[])  # fmt: skip
    mask_token_id = resolve_mask_token_id(args.verifier, layer_config.vocab_size)
    full_vocab = run.vocab.is_full
    torch.manual_seed(args.seed)
    model = DFlashDraftModel.from_training_args(
        layer_config, t2d=None if full_vocab else run.vocab.t2d, d2t=None if full_vocab else run.vocab.d2t,
        verifier_name_or_path=args.verifier, draft_vocab_size=run.vocab.draft_vocab_size, block_size=args.block_size,
        target_layer_ids=run.aux_layer_ids, mask_token_id=mask_token_id, draft_attn_impl="sdpa",
    )  # fmt: skip
    model.train()
    return model


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from loguru import logger

    logger.remove()
    from speculators.losses import resolve_loss_config
    from speculators.train.optimizers import build_optimizers
    from transformers import get_linear_schedule_with_warmup

    from libspec.train.config import TrainConfig
    from libspec.train.loop import prepare
    from tools.bench_train import planned_batches

    ours = {"data": args.data, "verifier": args.verifier, "output": args.output, "algorithm": "dflash", "tokens_per_batch": args.tokens_per_batch,
            "num_layers": args.num_layers, "block_size": args.block_size, "seed": args.seed, "max_steps": args.steps}  # fmt: skip
    if args.aux_layer_ids:
        ours["aux_layer_ids"] = [int(part) for part in args.aux_layer_ids.split(",")]
    if args.draft_vocab_size:
        ours["draft_vocab_size"] = args.draft_vocab_size
    run = prepare(TrainConfig.from_dict(ours))  # the same checks, split, layers and vocabulary as spec-train
    model = build_model(args, run)
    settings = SimpleNamespace(optimizer="muon", lr=args.lr, weight_decay=0.01, muon_lr=args.lr, muon_momentum=0.95,
                               muon_weight_decay=0.1, muon_ns_steps=5, muon_adjust_lr_fn="match_rms_adamw")  # fmt: skip
    optimizers = build_optimizers(model, settings)
    schedulers = [get_linear_schedule_with_warmup(o, max(args.steps // 100, 0), args.steps) for o in optimizers]
    step_kwargs = {"loss_config": resolve_loss_config("ce", "eager"), "gamma": 4.0, "max_anchors": 512,
                   "per_position_loss_weight": "dpace", "dpace_alpha": 0.5}  # fmt: skip
    losses, seconds, tokens = [], 0.0, 0
    for batch in planned_batches(run, args.steps):
        started = time.perf_counter()
        _, loss, _ = model(hidden_states=batch.aux_hidden, input_ids=batch.tokens, loss_mask=batch.loss_mask,
                           verifier_last_hidden_states=batch.last_hidden, document_ids=batch.document_ids,
                           position_ids=batch.positions, **step_kwargs)  # fmt: skip
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
    model.save_pretrained(args.output)
    print(json.dumps({"trainer": "upstream speculators 0.9.0 (dflash)", "steps": len(losses), "tokens": tokens, "train_seconds": seconds,
                      "tokens_per_s": tokens / seconds, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "losses": losses, "checkpoint": args.output}))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
