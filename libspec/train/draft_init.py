"""How a fresh draft starts: the same for every algorithm, so that one seed gives one draft."""

from __future__ import annotations

import torch
from torch import nn


def initialise_draft(draft: nn.Module, head, vocab=None, std: float = 0.02) -> None:
    """Normal(0, std) for every Linear weight and zero biases (call after torch.manual_seed), then the
    verifier's embedding copied in and frozen; with `vocab`, also the verifier's lm_head rows of the
    draft vocabulary (and its d2t/t2d maps when the draft has them), frozen too. The tables stay the
    verifier's: training them would only let the draft drift from the tokens it must predict."""
    with torch.no_grad():
        for module in draft.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
        draft.embed_tokens.weight.copy_(head.embed_tokens)
        if vocab is not None:
            draft.lm_head.weight.copy_(head.teacher.lm_head.weight[vocab.draft_to_verifier])
            if draft.d2t is not None:
                draft.d2t.copy_(vocab.d2t)
                draft.t2d.copy_(vocab.t2d)
    draft.embed_tokens.weight.requires_grad_(False)
    if vocab is not None:
        draft.lm_head.weight.requires_grad_(False)
