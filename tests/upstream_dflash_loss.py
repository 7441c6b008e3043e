"""Upstream speculators' DFlash training loss on given blocks (run with the gate venv's python).

    .venv-gates/bin/python tests/upstream_dflash_loss.py CHECKPOINT VERIFIER INPUTS.pt

INPUTS.pt (tensors only, written by tests/test_dflash_train.py) holds, per record r, the unshifted
record as upstream's trainer reads it (`r.input_ids`, `r.loss_mask`, `r.hidden_states` = the aux
layers concatenated, `r.verifier_last_hidden_states`) and `r.anchors`, the anchor positions to
train. Upstream picks anchors at random; here its `select_anchors` is replaced by those, and its
attention runs eagerly (CPU, no flex attention). Prints one JSON object: {"dpace": [loss per
record], "decay": [...]}, from `DFlashDraftModel.forward` with loss `ce` and each position weighting.
"""

from __future__ import annotations

import json
import sys

import speculators.models.dflash.core as core
import torch
from speculators import SpeculatorModel, SpeculatorModelConfig
from speculators.losses import resolve_loss_config
from speculators.models.attention import create_float_mask

WEIGHTINGS = {"dpace": "dpace", "decay": "fixed-exp-decay"}


def main(checkpoint: str, verifier: str, inputs: str) -> None:
    config = SpeculatorModelConfig.from_pretrained(checkpoint)
    config.speculators_config.verifier.name_or_path = verifier
    config.transformer_layer_config._attn_implementation = "eager"
    model = SpeculatorModel.from_pretrained(checkpoint, config=config).float().eval()
    model._create_mask_fn = create_float_mask
    data = torch.load(inputs, weights_only=True)
    records = sorted({key.split(".")[0] for key in data}, key=int)
    losses: dict[str, list[float]] = {name: [] for name in WEIGHTINGS}
    for record in records:
        anchors = data[f"{record}.anchors"]
        core.select_anchors = lambda loss_mask, count, block_size: (anchors, torch.ones(len(anchors), dtype=torch.bool))
        length = data[f"{record}.input_ids"].shape[1]
        for name, weighting in WEIGHTINGS.items():
            with torch.no_grad():
                _, loss, _ = model(
                    hidden_states=data[f"{record}.hidden_states"], input_ids=data[f"{record}.input_ids"],
                    loss_mask=data[f"{record}.loss_mask"], verifier_last_hidden_states=data[f"{record}.verifier_last_hidden_states"],
                    document_ids=torch.zeros(1, length, dtype=torch.long), loss_config=resolve_loss_config("ce", "eager"),
                    max_anchors=len(anchors), per_position_loss_weight=weighting, gamma=4.0, dpace_alpha=0.5,
                )  # fmt: skip
            losses[name].append(float(loss))
    print(json.dumps(losses))


if __name__ == "__main__":
    main(*sys.argv[1:4])
