"""Acceptance of a draft measured with a real drafting loop: greedy chain drafting, lossless greedy verification.

Each round the draft proposes k tokens one after another (its KV cache holding every committed
position), the verifier scores the last committed token plus the k drafts in one forward, the
longest prefix equal to the verifier's own greedy choices is kept, and the verifier's next choice
is added as the bonus token. The output is exactly the verifier's greedy output; the number of
tokens each round adds (accepted + 1) averages to tau, the mean acceptance length vLLM reports
as `1 + accepted / drafts`.

Raw counts come out (a histogram of accepted drafts per round); tau is derived from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from transformers import DynamicCache

from libspec.algorithms.eagle3_model import DraftCache, Eagle3Draft
from libspec.teacher import find_final_norm


@dataclass
class AcceptanceCounts:
    """How many rounds accepted 0, 1, ..., k drafted tokens; tau and rates derive from it."""

    histogram: list[int]
    new_tokens: int = 0
    outputs: list[list[int]] = field(default_factory=list)

    @property
    def rounds(self) -> int:
        return sum(self.histogram)

    @property
    def tau(self) -> float:
        """Mean tokens per verifier forward: 1 + accepted drafts / rounds."""
        accepted = sum(count * index for index, count in enumerate(self.histogram))
        return 1.0 + accepted / max(self.rounds, 1)

    def acceptance_per_position(self) -> list[float]:
        """P(the first j drafts of a round are all accepted), j = 1..k (vLLM's per-position rate)."""
        rounds = max(self.rounds, 1)
        return [sum(self.histogram[j:]) / rounds for j in range(1, len(self.histogram))]

    def to_dict(self) -> dict:
        return {"tau": self.tau, "rounds": self.rounds, "new_tokens": self.new_tokens, "accepted_histogram": self.histogram,
                "acceptance_per_position": self.acceptance_per_position()}  # fmt: skip


class AuxCapture:
    """Run the verifier and return its logits plus the draft's aux hidden states [1, T, A*H]."""

    def __init__(self, verifier, aux_layer_ids: Sequence[int]):
        self.verifier = verifier
        self.aux_layer_ids = list(aux_layer_ids)
        self.depth = verifier.config.get_text_config().num_hidden_layers
        self.final_norm = find_final_norm(verifier)

    def __call__(self, input_ids: torch.Tensor, cache: DynamicCache) -> tuple[torch.Tensor, torch.Tensor]:
        last = {}
        hook = self.final_norm.register_forward_pre_hook(lambda module, args: last.__setitem__("pre_norm", args[0]))
        try:
            out = self.verifier(input_ids=input_ids, past_key_values=cache, use_cache=True, output_hidden_states=True)
        finally:
            hook.remove()
        layers = [last["pre_norm"] if i == self.depth else out.hidden_states[i] for i in self.aux_layer_ids]
        return out.logits, torch.cat(layers, dim=-1)


@torch.no_grad()
def speculative_greedy(verifier, draft: Eagle3Draft, prompt: Sequence[int], draft_tokens: int, max_new_tokens: int,
                       stop_ids: Sequence[int] = ()) -> tuple[list[int], list[int]]:  # fmt: skip
    """Generate greedily with drafting; returns (new tokens, accepted drafts per round)."""
    capture = AuxCapture(verifier, draft.config["eagle_aux_hidden_state_layer_ids"])
    device = next(draft.parameters()).device
    cache = DynamicCache()
    logits, aux = capture(torch.tensor([list(prompt)], device=device), cache)
    generated = [int(logits[0, -1].argmax())]
    accepted_per_round: list[int] = []
    draft_cache = DraftCache.empty(len(draft.layers))
    # Draft queries waiting to enter the draft's cache: query i reads the verifier's state at token
    # i and token i+1, at position i+1 (the alignment it was trained with).
    pending_tokens = list(prompt[1:]) + generated
    pending_aux = aux
    next_position = 1
    while len(generated) < max_new_tokens and generated[-1] not in stop_ids:
        # 1. draft k tokens: first the pending queries, then a chain on the draft's own outputs
        count = len(pending_tokens)
        positions = torch.arange(next_position, next_position + count, device=device)[None]
        draft_logits, hidden = draft(torch.tensor([pending_tokens], device=device), draft.project(pending_aux), positions, cache=draft_cache)
        committed = draft_cache.length
        proposal = [int(draft.to_verifier_ids(draft_logits[0, -1].argmax()))]
        hidden, position = hidden[:, -1:], next_position + count - 1
        for _ in range(draft_tokens - 1):
            position += 1
            step_ids = torch.tensor([[proposal[-1]]], device=device)
            draft_logits, hidden = draft(step_ids, hidden, torch.tensor([[position]], device=device), cache=draft_cache)
            proposal.append(int(draft.to_verifier_ids(draft_logits[0, -1].argmax())))
        draft_cache.crop(committed)

        # 2. verify the last committed token and the k drafts in one verifier forward
        block = [generated[-1]] + proposal
        logits, aux = capture(torch.tensor([block], device=device), cache)
        choices = logits[0].argmax(-1).tolist()  # the verifier's greedy token after each block position
        accepted = 0
        while accepted < draft_tokens and proposal[accepted] == choices[accepted]:
            accepted += 1
        new_tokens = proposal[:accepted] + [choices[accepted]]
        rejected = draft_tokens - accepted
        if rejected:
            cache.crop(-rejected)
        accepted_per_round.append(accepted)

        # 3. the verifier states of the kept block positions become the next pending draft queries
        next_position += count
        pending_tokens, pending_aux = new_tokens, aux[:, : accepted + 1]
        for token in new_tokens:
            generated.append(token)
            if token in stop_ids:
                break
    return generated[:max_new_tokens], accepted_per_round


@torch.no_grad()
def measure_acceptance(verifier, draft: Eagle3Draft, prompts: Sequence[Sequence[int]], draft_tokens: int = 3,
                       max_new_tokens: int = 64, stop_ids: Sequence[int] = ()) -> AcceptanceCounts:  # fmt: skip
    """Run speculative_greedy over `prompts`; the accepted-length histogram over all rounds."""
    counts = AcceptanceCounts([0] * (draft_tokens + 1))
    for prompt in prompts:
        tokens, per_round = speculative_greedy(verifier, draft, prompt, draft_tokens, max_new_tokens, stop_ids)
        for accepted in per_round:
            counts.histogram[accepted] += 1
        counts.new_tokens += len(tokens)
        counts.outputs.append(tokens)
    return counts
