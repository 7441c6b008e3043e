"""Capture equals Hugging Face's own hidden states, for every architecture, under padded batching."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, Gemma3Config

from libspec.capture.hooks import BatchLimits, HiddenStateCapture, decoder_stack, plan_batches
from libspec.errors import SpecError

TEXT = dict(
    vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
    num_key_value_heads=1, head_dim=8, max_position_embeddings=128,
)
SLIDING = dict(sliding_window=6, layer_types=["sliding_attention", "full_attention"] * 2)
ARCHITECTURES = {
    "llama": {},
    "qwen3": {},
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=1),
    "mistral": dict(sliding_window=6),
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, **SLIDING),
    "gemma3_text": dict(query_pre_attn_scalar=8, **SLIDING),
}
LENGTHS = (17, 4, 11, 1)  # longer than the sliding window, and a single token


def tiny_model(model_type: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if model_type == "gemma3":  # multimodal wrapper: the decoder sits under language_model
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14)
        text = dict(TEXT, vocab_size=300, query_pre_attn_scalar=8, **SLIDING)
        config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=299, boi_token_index=297, eoi_token_index=298)
    else:
        config = AutoConfig.for_model(model_type, **TEXT, **ARCHITECTURES[model_type])
    model = AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():  # random init is tiny (std 0.02) and norms are 1: perturb so tolerances mean something
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.mul_(10)
            else:
                parameter.add_(0.5 * torch.randn_like(parameter))
    return model


def reference_hidden_states(model, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's output_hidden_states for one unpadded sequence: ids 0..n [T, n+1, H], and the post-norm output.

    `tie_last_hidden_states = False` makes HF report the last layer's own output (pre-norm) as its
    last entry instead of the final-norm output; both configs (wrapper and text) are set.
    """
    for config in (model.config, getattr(model.config, "text_config", model.config)):
        config.tie_last_hidden_states = False
    with torch.no_grad():
        output = model(torch.tensor([tokens]), output_hidden_states=True)
        post_norm = decoder_stack(model)(torch.tensor([tokens])).last_hidden_state[0]
    return torch.stack(output.hidden_states, dim=2)[0], post_norm


@pytest.mark.parametrize("model_type", [*ARCHITECTURES, "gemma3"])
def test_capture_equals_output_hidden_states_in_padded_batches(model_type):
    model = tiny_model(model_type)
    n = 4
    generator = torch.Generator().manual_seed(1)
    sequences = [torch.randint(0, 90, (length,), generator=generator).tolist() for length in LENGTHS]
    captured = HiddenStateCapture(model, list(range(n + 1)), n).capture(sequences)  # one right-padded batch
    for tokens, hidden in zip(sequences, captured):
        reference, post_norm = reference_hidden_states(model, tokens)
        assert hidden.shape == (len(tokens), n + 1, 16)
        torch.testing.assert_close(hidden, reference, rtol=1e-5, atol=1e-5 * reference.abs().max().item())
        # id n is the residual stream before the final norm: applying the norm gives HF's output.
        normed = decoder_stack(model).norm(hidden[:, n])
        torch.testing.assert_close(normed, post_norm, rtol=1e-5, atol=1e-5 * post_norm.abs().max().item())
        assert not torch.allclose(hidden[:, n], post_norm, atol=1e-3)


def test_capture_selected_layers_stops_early_and_matches():
    model = tiny_model("llama")
    calls = []
    last = decoder_stack(model).layers[3].register_forward_hook(lambda *args: calls.append(1))
    sequences = [[1, 2, 3, 4, 5], [6, 7]]
    partial = HiddenStateCapture(model, [0, 2], 4).capture(sequences)
    assert not calls, "layers after the deepest requested id must not run"
    last.remove()
    full = HiddenStateCapture(model, [0, 1, 2, 3, 4], 4).capture(sequences)
    for p, f in zip(partial, full):
        torch.testing.assert_close(p, f[:, [0, 2]], rtol=0, atol=0)


def test_capture_bfloat16_is_close_to_float32():
    model = tiny_model("qwen3")
    sequences = [[3, 1, 4, 1, 5, 9, 2, 6], [5, 3]]
    exact = HiddenStateCapture(model, [2, 4], 4).capture(sequences)
    low = HiddenStateCapture(model.to(torch.bfloat16), [2, 4], 4).capture(sequences, out_dtype=torch.bfloat16)
    for e, b in zip(exact, low):
        assert b.dtype == torch.bfloat16
        torch.testing.assert_close(b.float(), e, rtol=0.05, atol=0.05 * e.abs().max().item())


def test_capture_rejects_bad_layer_ids():
    model = tiny_model("llama")
    for bad in ([], [2, 1], [0, 5], [1, 1]):
        with pytest.raises(SpecError, match="layer ids"):
            HiddenStateCapture(model, bad, 4)


def test_plan_batches_sorts_by_length_within_limits():
    lengths = [5, 40, 7, 40, 6, 100]
    batches = plan_batches(lengths, BatchLimits(max_tokens=90, max_sequences=3))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every sequence once
    assert batches[0] == [5]  # longer than the budget: alone
    assert batches[1] == [1, 3]  # 2 x 40 fits, a third would not
    assert batches[2] == [2, 4, 0]  # 3 x 7, capped at max_sequences
    for batch in batches[1:]:
        assert len(batch) * max(lengths[i] for i in batch) <= 90
