"""Sampling at a temperature: the one softmax behind the drafts' q and the decoding engine's p.

It lives with the algorithms because the drafts need it and may not import from bench/.
"""

from __future__ import annotations

import torch


def temperature_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / temperature) over the last dimension, in the logits' own dtype (cast them first for float32)."""
    return torch.softmax(logits / temperature, dim=-1)
