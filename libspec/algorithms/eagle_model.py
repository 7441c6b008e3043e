"""The EAGLE-1 draft in plain PyTorch, computing what vLLM's EagleLlamaForCausalLM computes.

Parameter names equal the checkpoint's (libspec/algorithms/eagle.py). Per position, with `f` the
verifier's final (normalised) hidden state and `x` the next token:

    h = fc(cat[embed(x), f])
    layer 0: h = h + attn(h)            (no input norm), then the usual MLP block
    layers > 0: standard pre-norm Llama layers
    f' = h                              logits = verifier_lm_head(f'), no final norm
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from libspec.algorithms import eagle
from libspec.algorithms.eagle3_model import MLP, Attention, DraftCache, RMSNorm, causal_mask


class _Attention(Attention):
    """Llama attention whose o_proj may carry a bias (vLLM gives it one when attention_bias is set)."""

    def __init__(self, config: LlamaConfig, o_bias: bool):
        super().__init__(config, config.hidden_size, qk_norm=False)
        if o_bias:
            self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=True)


class EagleLayer(nn.Module):
    """A pre-norm Llama decoder layer; the first one has no input norm (EAGLE-1's layer 0)."""

    def __init__(self, config: LlamaConfig, first: bool, o_bias: bool):
        super().__init__()
        self.input_layernorm = None if first else RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = _Attention(config, o_bias)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)

    def forward(self, hidden, cos, sin, mask, cache) -> torch.Tensor:
        attn_input = hidden if self.input_layernorm is None else self.input_layernorm(hidden)
        hidden = hidden + self.self_attn(attn_input, cos, sin, mask, cache)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class EagleDraft(nn.Module):
    """An EAGLE-1 draft built from its config.json (see the module docstring)."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        qkv_bias, o_bias = eagle.attention_biases(config)
        layer = LlamaConfig(
            **{k: v for k, v in config.items() if k not in ("model_type", "spec_tools", "attention_bias", "qkv_bias", "bias")},
        )
        layer.head_dim = eagle.head_dim(config)
        layer.attention_bias = qkv_bias  # our Attention reads q/k/v bias from here
        hidden = config["hidden_size"]
        self.embed_tokens = nn.Embedding(config["vocab_size"], hidden)
        self.embed_tokens.weight.requires_grad_(False)
        self.fc = nn.Linear(2 * hidden, hidden, bias=False)
        self.layers = nn.ModuleList(EagleLayer(layer, i == 0, o_bias) for i in range(config["num_hidden_layers"]))
        self.rotary = LlamaRotaryEmbedding(layer)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        features: torch.Tensor,  # [B, T, H]: the verifier's final hidden states, or the previous step's output
        positions: torch.Tensor,  # [B, T]
        cache: DraftCache | None = None,
    ) -> torch.Tensor:
        """The next features [B, T, H]; the verifier's lm_head turns them into logits."""
        hidden = self.fc(torch.cat([self.embed_tokens(input_ids).to(features.dtype), features], dim=-1))
        cos, sin = self.rotary(hidden, positions)
        mask = None
        if input_ids.shape[1] > 1:
            mask = causal_mask(input_ids.shape[1], 0 if cache is None else cache.length, hidden.device)
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden, cos, sin, mask, None if cache is None else cache.layers[index])
        return hidden

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of a checkpoint: the state dict minus the rotary tables."""
        return {name: t for name, t in self.state_dict().items() if not name.startswith("rotary.")}

    def load_checkpoint_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load checkpoint tensors; a missing embed_tokens keeps the current (verifier's) one."""
        expected = self.checkpoint_tensors()
        missing = set(expected) - set(tensors) - {"embed_tokens.weight"}
        unexpected = set(tensors) - set(expected)
        if missing or unexpected:
            raise ValueError(f"checkpoint tensors differ from the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        self.load_state_dict(tensors, strict=False)
