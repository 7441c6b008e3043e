"""The EAGLE-3 draft model: same layers as transformers', checkpoint names as SPEC.md, cache = full forward."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, Qwen3Config
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

from conftest import TINY_LLAMA
from libspec.format import checkpoint as ckpt
from libspec.algorithms.eagle3 import config as eagle3
from libspec.algorithms.eagle3.model import Eagle3Draft
from libspec.algorithms.layers import DraftCache, causal_mask
from libspec.validate.artifacts import validate


def draft_config(**changes) -> dict:
    return eagle3.make_config(TINY_LLAMA, "x/y", eagle3.Eagle3Options(aux_layer_ids=(1, 2, 3), **changes))


def random_draft(seed=0, **changes) -> Eagle3Draft:
    torch.manual_seed(seed)
    draft = Eagle3Draft(draft_config(**changes))
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.normal_(0, 0.3)
    return draft


@pytest.mark.parametrize("style", ["llama", "qwen3"])
def test_later_layers_equal_the_transformers_decoder_layer(style):
    draft = random_draft(num_layers=2, layer_style=style)
    ours = draft.layers[1]
    tl = draft.config["transformer_layer_config"]
    hf_config = (LlamaConfig if style == "llama" else Qwen3Config)(**{k: v for k, v in tl.items() if k != "model_type"})
    hf_config._attn_implementation = "sdpa"
    hf_layer = (LlamaDecoderLayer if style == "llama" else Qwen3DecoderLayer)(hf_config, layer_idx=1)
    hf_layer.load_state_dict(ours.state_dict())
    hidden = torch.randn(2, 7, 16)
    positions = torch.arange(3, 10).expand(2, 7)
    cos, sin = LlamaRotaryEmbedding(hf_config)(hidden, positions)
    expected = hf_layer(hidden, attention_mask=torch.zeros(7, 7).masked_fill(~causal_mask(7, 0), float("-inf")), position_embeddings=(cos, sin))
    expected = expected[0] if isinstance(expected, tuple) else expected
    got = ours(hidden, None, cos, sin, causal_mask(7, 0), None)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_before_residual", [True, False])
def test_first_layer_reads_embedding_and_hidden(norm_before_residual):
    draft = random_draft(norm_before_residual=norm_before_residual)
    layer = draft.layers[0]
    embeds, hidden = torch.randn(1, 5, 16), torch.randn(1, 5, 16)
    positions = torch.arange(5)[None]
    cos, sin = draft.rotary(hidden, positions)
    # Reference: a transformers Llama layer whose q/k/v read 2H, fed the normalised concatenation.
    tl = draft.config["transformer_layer_config"]
    hf_config = LlamaConfig(**{k: v for k, v in tl.items() if k != "model_type"})
    hf_config._attn_implementation = "sdpa"
    reference = LlamaDecoderLayer(hf_config, layer_idx=0)
    for name in ("q_proj", "k_proj", "v_proj"):
        setattr(reference.self_attn, name, getattr(layer.self_attn, name))
    reference.self_attn.o_proj = layer.self_attn.o_proj
    reference.mlp.load_state_dict(layer.mlp.state_dict())
    reference.post_attention_layernorm.load_state_dict(layer.post_attention_layernorm.state_dict())
    normed = layer.hidden_norm(hidden)
    attn_input = torch.cat([layer.input_layernorm(embeds), normed], dim=-1)
    mask = torch.zeros(5, 5).masked_fill(~causal_mask(5, 0), float("-inf"))
    attn_out = reference.self_attn(attn_input, position_embeddings=(cos, sin), attention_mask=mask)[0]
    residual = (normed if norm_before_residual else hidden) + attn_out
    expected = residual + reference.mlp(reference.post_attention_layernorm(residual))
    torch.testing.assert_close(layer(hidden, embeds, cos, sin, causal_mask(5, 0), None), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("changes", [{}, {"num_layers": 2, "layer_style": "qwen3"}, {"draft_vocab_size": 32, "norm_before_fc": True}])
def test_decoding_with_a_cache_equals_one_full_forward(changes):
    draft = random_draft(seed=1, **changes).eval()
    ids, hidden = torch.randint(0, 64, (1, 9)), torch.randn(1, 9, 16)
    positions = torch.arange(9)[None]
    with torch.no_grad():
        full_logits, full_out = draft(ids, hidden, positions)
        cache = DraftCache.empty(len(draft.layers))
        first_logits, _ = draft(ids[:, :6], hidden[:, :6], positions[:, :6], cache=cache)
        steps = [draft(ids[:, i : i + 1], hidden[:, i : i + 1], positions[:, i : i + 1], cache=cache) for i in range(6, 9)]
    torch.testing.assert_close(first_logits, full_logits[:, :6], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([s[0] for s in steps], 1), full_logits[:, 6:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([s[1] for s in steps], 1), full_out[:, 6:], rtol=1e-5, atol=1e-5)
    cache.crop(7)
    assert cache.length == 7


@pytest.mark.parametrize(
    "changes",
    [{}, {"draft_vocab_size": 32}, {"num_layers": 3}, {"layer_style": "qwen3"}, {"fc_norm": True}, {"norm_before_fc": True}],
)
def test_state_dict_is_the_checkpoint(tmp_path, changes):
    draft = random_draft(**changes)
    config = draft.config
    tensors = draft.checkpoint_tensors()
    expected = eagle3.expected_tensors(config)
    assert set(tensors) == set(expected)
    assert all(tuple(tensors[name].shape) == spec.shape for name, spec in expected.items())
    if "d2t" in tensors:
        tensors["t2d"][:32] = True  # the identity-offset map over the first 32 ids
    path = ckpt.write_checkpoint(tmp_path / "ckpt", config, tensors)
    assert validate(str(path)).ok, validate(str(path)).problems
    reloaded = Eagle3Draft(config)
    reloaded.load_checkpoint_tensors(ckpt.load_tensors(path))
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in tensors.items())


def test_norm_output_feeds_back_the_normalised_state():
    draft = random_draft(norm_output=True)
    ids, hidden = torch.randint(0, 64, (1, 4)), torch.randn(1, 4, 16)
    _, fed_back = draft(ids, hidden, torch.arange(4)[None])
    plain = random_draft(norm_output=False)
    plain.load_state_dict(draft.state_dict())
    _, prenorm = plain(ids, hidden, torch.arange(4)[None])
    torch.testing.assert_close(draft.norm(prenorm), fed_back)
    assert not torch.allclose(prenorm, fed_back)
