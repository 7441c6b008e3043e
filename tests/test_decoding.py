"""Speculative decoding is lossless: greedy output equals the verifier's own, sampling keeps its distribution."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import TINY_LLAMA
from libspec.algorithms.eagle3 import config as eagle3
from libspec.algorithms.eagle3.model import Eagle3Draft, Eagle3Proposer
from libspec.bench.decoding import DecodingVerifier, autoregressive_generate, speculative_generate


def tiny_verifier(seed=0, **changes) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(**{**{k: v for k, v in TINY_LLAMA.items() if k not in ("architectures", "model_type")}, **changes})
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger weights: peaky, varied distributions instead of near-uniform ones
        model.lm_head.weight.mul_(40)
    return model


class OracleProposer:
    """Proposes the reference continuation, wrong at chosen positions: exercises every acceptance length."""

    aux_layer_ids: list[int] = []

    def __init__(self, reference: list[int], wrong_every: int, vocab: int):
        self.reference, self.wrong_every, self.vocab = reference, wrong_every, vocab

    def start(self, context, aux):
        self.produced = 1

    def propose(self, k, temperature, generator):
        drafts = []
        for i in range(k):
            index = self.produced + i
            token = self.reference[index] if index < len(self.reference) else 0
            if (index + 1) % self.wrong_every == 0:
                token = (token + 1) % self.vocab
            drafts.append(token)
        return torch.tensor(drafts), None

    def commit(self, accepted, aux):
        self.produced += len(accepted)


PROMPTS = [torch.tensor([1, 5, 9, 2]), torch.tensor([7]), torch.tensor([3, 3, 3, 3, 3, 3, 3, 3, 3, 11])]


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("wrong_every", [2, 3, 7, 1000])
def test_greedy_output_is_the_verifiers_own_for_any_acceptance_pattern(k, wrong_every):
    verifier = DecodingVerifier(tiny_verifier())
    for prompt in PROMPTS:
        reference = autoregressive_generate(verifier, prompt, 40, eos_ids=set()).tokens
        proposer = OracleProposer(reference, wrong_every, vocab=64)
        result = speculative_generate(verifier, proposer, prompt, k, 40, eos_ids=set())
        assert result.tokens == reference
        assert sum(a + 1 for a in result.accepted_per_round) + 1 >= len(reference)
        if wrong_every == 1000:
            assert all(a == k for a in result.accepted_per_round[:-1]), "a perfect draft is always fully accepted"


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 4, 9])
def test_budget_edges(max_new_tokens):
    verifier = DecodingVerifier(tiny_verifier())
    prompt = PROMPTS[0]
    reference = autoregressive_generate(verifier, prompt, max_new_tokens, eos_ids=set()).tokens
    assert len(reference) == max_new_tokens
    result = speculative_generate(verifier, OracleProposer(reference, 1000, 64), prompt, 4, max_new_tokens, eos_ids=set())
    assert result.tokens == reference


def test_eos_inside_a_draft_stops_where_the_verifier_stops():
    verifier = DecodingVerifier(tiny_verifier())
    prompt = PROMPTS[0]
    full = autoregressive_generate(verifier, prompt, 30, eos_ids=set()).tokens
    eos = full[6]  # a token the verifier emits mid-sequence: treat it as end of sequence
    reference = autoregressive_generate(verifier, prompt, 30, eos_ids={eos}).tokens
    assert reference[-1] == eos and len(reference) == full.index(eos) + 1
    for k in (2, 4, 8):
        result = speculative_generate(verifier, OracleProposer(full, 1000, 64), prompt, k, 30, eos_ids={eos})
        assert result.tokens == reference


@pytest.mark.parametrize("draft_changes", [{}, {"draft_vocab_size": 32}, {"num_layers": 2, "layer_style": "qwen3"}])
def test_eagle3_proposer_is_lossless_with_an_untrained_draft(draft_changes):
    model = tiny_verifier()
    config = eagle3.make_config(TINY_LLAMA, "x/y", eagle3.Eagle3Options(aux_layer_ids=(1, 2, 4), **draft_changes))
    torch.manual_seed(3)
    draft = Eagle3Draft(config)
    if draft.d2t is not None:
        draft.d2t.copy_(torch.arange(32) * 2 - torch.arange(32))  # even verifier ids
    draft.embed_tokens.weight.data.copy_(model.get_input_embeddings().weight)
    verifier = DecodingVerifier(model, layer_ids=[1, 2, 4])
    proposer = Eagle3Proposer(draft, [1, 2, 4])
    for prompt in PROMPTS:
        reference = autoregressive_generate(verifier, prompt, 25, eos_ids=set()).tokens
        for k in (1, 3):
            assert speculative_generate(verifier, proposer, prompt, k, 25, eos_ids=set()).tokens == reference


def test_verifier_captures_layer_ids_by_the_spec_convention():
    model = tiny_verifier()
    verifier = DecodingVerifier(model, layer_ids=[0, 2, 4])
    prompt = PROMPTS[0]
    _, aux = verifier.forward(prompt)
    with torch.no_grad():
        out = model(prompt[None], output_hidden_states=True)
    hidden = out.hidden_states  # HF: [0] embeddings, [k] after k layers, [n] AFTER the final norm
    pre_norm = aux[:, 32:48]
    torch.testing.assert_close(aux[:, :16], hidden[0][0])
    torch.testing.assert_close(aux[:, 16:32], hidden[2][0])
    torch.testing.assert_close(model.model.norm(pre_norm), hidden[4][0])
    assert not torch.allclose(pre_norm, hidden[4][0])


class FixedDraftProposer:
    """Drafts from a fixed distribution q over the vocabulary (very unlike the verifier's)."""

    aux_layer_ids: list[int] = []

    def __init__(self, q: torch.Tensor):
        self.q = q

    def start(self, context, aux):
        pass

    def propose(self, k, temperature, generator):
        tokens = torch.multinomial(self.q, k, replacement=True, generator=generator)
        return tokens, self.q.expand(k, -1)

    def commit(self, accepted, aux):
        pass


CHI2_999 = {7: 24.32, 63: 103.44}  # chi-square critical values at p = 0.001


def chi_square(counts: torch.Tensor, expected_probs: torch.Tensor) -> float:
    expected = expected_probs * counts.sum()
    keep = expected > 5  # the usual validity rule for the test
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def sampled_pairs(verifier, proposer, prompt, runs, seed) -> torch.Tensor:
    """Counts of (2nd, 3rd) generated tokens over many speculative runs (the 1st comes from the prefill)."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.zeros(8, 8)
    for _ in range(runs):
        tokens = speculative_generate(verifier, proposer, prompt, 2, 3, set(), temperature=1.0, generator=generator).tokens
        counts[tokens[1], tokens[2]] += 1
    return counts


def exact_pairs(model, prompt) -> torch.Tensor:
    """P(2nd, 3rd) under the verifier alone, summed over the 1st token."""
    joint = torch.zeros(8, 8)
    with torch.no_grad():
        p1 = torch.softmax(model(prompt[None]).logits[0, -1], -1)
        for t1 in range(8):
            p2 = torch.softmax(model(torch.cat([prompt, torch.tensor([t1])])[None]).logits[0, -1], -1)
            for t2 in range(8):
                p3 = torch.softmax(model(torch.cat([prompt, torch.tensor([t1, t2])])[None]).logits[0, -1], -1)
                joint[t2] += p1[t1] * p2[t2] * p3
    return joint


@pytest.mark.slow
def test_speculative_sampling_preserves_the_verifier_distribution(monkeypatch):
    model = tiny_verifier(seed=1, vocab_size=8)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.05)  # back to moderate entropy over 8 tokens
    verifier, prompt = DecodingVerifier(model), torch.tensor([1, 2, 3])
    q = torch.tensor([0.4, 0.3, 0.1, 0.05, 0.05, 0.04, 0.03, 0.03])
    expected = exact_pairs(model, prompt).flatten()
    counts = sampled_pairs(verifier, FixedDraftProposer(q), prompt, 2000, seed=0).flatten()
    assert chi_square(counts, expected) < CHI2_999[63]
    marginal = counts.view(8, 8).sum(1)
    assert chi_square(marginal, expected.view(8, 8).sum(1)) < CHI2_999[7]
    # The test has power: the same loop with a rule that keeps every draft fails it clearly.
    import libspec.bench.decoding

    monkeypatch.setattr(libspec.bench.decoding, "_accept", lambda drafts, *rest: (len(drafts), drafts[-1]))
    broken = sampled_pairs(verifier, FixedDraftProposer(q), prompt, 600, seed=0).flatten()
    assert chi_square(broken, expected) > 3 * CHI2_999[63]
