"""HASS's harmonized objective distillation (arXiv 2408.15766, HArmonizedSS/HASS): a loss on the
verifier's top-K tokens, offered by EAGLE-1 and EAGLE-3 training (`--hass-topk K`).

Drafting only ever proposes the head of the draft's distribution (greedy takes the argmax, EAGLE-2's
tree the top few), so HASS adds, per position, the cross-entropy restricted to the verifier's K most
likely tokens: -sum_{v in topK(p)} p_v log q_v, with p the verifier's full distribution (not
renormalised over the K) and q the draft's. HASS's other half, harmonized context alignment (later
steps read the draft's own features, as at inference), is EAGLE-3's test-time training (--ttt-steps)
and EAGLE-1's --hass-align-steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def topk_distillation_loss(draft_logits: torch.Tensor, teacher_probs: torch.Tensor, k: int) -> torch.Tensor:
    """Per-row loss [N]: -sum over the teacher's top-k tokens of p log q (draft_logits, teacher_probs: [N, V])."""
    log_q = F.log_softmax(draft_logits.float(), dim=-1)
    top = teacher_probs.topk(min(k, teacher_probs.shape[-1]), dim=-1)
    return -(top.values * log_q.gather(-1, top.indices)).sum(-1)
