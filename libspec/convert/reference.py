"""Reference forwards written from each source repository's own math, over the source's own names.

The converted checkpoint runs through spec-tools' models (which compute what vLLM computes);
these small functional versions compute what the *source* code computes — SafeAILab's
`cnets.py`/`cnets1.py`, z-lab's `dflash/model.py`, SpecForge's and ModelOpt's EAGLE-3 modules,
old speculators — reading the tensors under their original names. Equal logits on the same
random inputs show that renames, flags, folded biases and layer ids were carried over exactly.
They share no code with libspec/algorithms on purpose: plain tensor operations, explicit
attention (no SDPA), their own RMSNorm and RoPE.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class Borrowed:
    """What the check lends both sides: the verifier's tables a draft leaves to it (embed_tokens,
    lm_head), cut to the check's rows (`rows[name]`, None: all), each read by `fetch` on first use."""

    def __init__(self, fetch: Callable[[str], torch.Tensor], rows: dict):
        self.fetch, self.rows, self.tensors = fetch, rows, {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.rows:  # only the vocabulary tables are the verifier's to lend
            raise KeyError(name)
        if name not in self.tensors:
            self.tensors[name] = self.fetch(name)
        return self.tensors[name]


class ReferenceWeights(Mapping):
    """A source's tensors as a reference forward reads them, by their original names: each read
    is a fresh float32 copy (the whole source is never held in float32), vocabulary tables cut to
    the check's rows, and the borrowed verifier weights for what the source does not have."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], borrowed: Borrowed):
        self.tensors, self.borrowed = tensors, borrowed

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            return self.borrowed[name]
        tensor, rows = self.tensors[name], self.borrowed.rows.get(name)
        if rows is not None:
            tensor = tensor[rows]
        return tensor.float() if tensor.is_floating_point() else tensor

    def __iter__(self):
        return iter(set(self.tensors) | set(self.borrowed.tensors))

    def __len__(self) -> int:
        return len(set(self.tensors) | set(self.borrowed.tensors))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rope:
    """cos/sin tables for positions, from the source config's own RoPE fields."""

    def __init__(self, source_config: dict, head_dim: int):
        params = source_config.get("rope_parameters") or {}
        theta = params.get("rope_theta", source_config.get("rope_theta", 10000.0))
        scaling = source_config.get("rope_scaling") or {}
        kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
        self.scale = 1.0
        if kind == "default":
            self.inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        else:  # scaled RoPE variants: transformers' implementation of the source's own settings
            from transformers import LlamaConfig
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            fields = {k: source_config[k] for k in ("rope_theta", "rope_scaling", "rope_parameters", "max_position_embeddings") if source_config.get(k) is not None}
            config = LlamaConfig(hidden_size=head_dim, num_attention_heads=1, head_dim=head_dim, **fields)
            inv_freq, self.scale = ROPE_INIT_FUNCTIONS[kind](config, "cpu")
            self.inv_freq = inv_freq.double()

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.double()[..., None] * self.inv_freq  # [B, T, d/2]
        angles = torch.cat([angles, angles], dim=-1)
        return (angles.cos() * self.scale).float(), (angles.sin() * self.scale).float()


@dataclass(frozen=True)
class Heads:
    heads: int
    kv_heads: int
    head_dim: int
    eps: float


def _project(x, weights, name, heads, head_dim):
    """x @ W^T (+ b) viewed as [B, heads, T, d]."""
    out = F.linear(x, weights[name + ".weight"], weights.get(name + ".bias"))
    return out.view(*x.shape[:2], heads, head_dim).transpose(1, 2)


def _apply_rope(x, cos, sin):
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def _attend(q, k, v, allowed: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention written out; GQA by repeating key/value heads. allowed: bool [T, S] or None."""
    repeat = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # [B, h, T, d]
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def _mlp(x, weights, prefix):
    gate = F.linear(x, weights[prefix + "mlp.gate_proj.weight"])
    up = F.linear(x, weights[prefix + "mlp.up_proj.weight"])
    return F.linear(F.silu(gate) * up, weights[prefix + "mlp.down_proj.weight"])


class _CausalAttention:
    """Self-attention with a growing list of past keys/values per layer (decoding order)."""

    def __init__(self, weights: dict, shape: Heads, rope: Rope):
        self.w, self.shape, self.rope = weights, shape, rope
        self.past: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, prefix: str, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        s = self.shape
        q = _project(x, self.w, prefix + "self_attn.q_proj", s.heads, s.head_dim)
        k = _project(x, self.w, prefix + "self_attn.k_proj", s.kv_heads, s.head_dim)
        v = _project(x, self.w, prefix + "self_attn.v_proj", s.kv_heads, s.head_dim)
        cos, sin = self.rope(positions)
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        if prefix in self.past:
            k = torch.cat([self.past[prefix][0], k], dim=2)
            v = torch.cat([self.past[prefix][1], v], dim=2)
        self.past[prefix] = (k, v)
        new, total = q.shape[2], k.shape[2]
        allowed = torch.ones(new, total, dtype=torch.bool).tril(diagonal=total - new)
        out = _attend(q, k, v, allowed)
        return F.linear(out, self.w[prefix + "self_attn.o_proj.weight"], self.w.get(prefix + "self_attn.o_proj.bias"))


@dataclass(frozen=True)
class Eagle3Layout:
    """Where an EAGLE-3 source keeps its tensors and which variant of the math it runs."""

    first_layer: str  # "midlayer." (SafeAILab, SpecForge) or "layers.0." (ModelOpt, speculators)
    num_layers: int = 1
    norm_before_residual: bool = False  # residual taken after hidden_norm in layer 0
    feed_back_normed: bool = False  # the next step reads norm(h) instead of h
    fc_norm: bool = False  # per-aux-layer RMSNorm before fc ("fc_norm.{i}")
    input_norm: bool = False  # one RMSNorm over the concatenated aux states ("input_norm")


class Eagle3Reference:
    """An EAGLE-3 draft as its source computes it (SafeAILab cnets.py `Model` and descendants)."""

    def __init__(self, weights: dict, layout: Eagle3Layout, shape: Heads, rope: Rope, num_aux: int, source_order: list[int] | None = None):
        self.w, self.layout, self.shape, self.num_aux = weights, layout, shape, num_aux
        # The aux states arrive in ascending layer order (as vLLM concatenates them); a source that
        # concatenated them in another order reads block source_order[i] at its position i.
        self.source_order = source_order or list(range(num_aux))
        self.attention = _CausalAttention(weights, shape, rope)

    def layer(self, index: int) -> str:
        return self.layout.first_layer if index == 0 else f"layers.{index}."

    def project(self, aux: torch.Tensor) -> torch.Tensor:
        blocks = aux.chunk(self.num_aux, dim=-1)
        aux = torch.cat([blocks[j] for j in self.source_order], dim=-1)
        if self.layout.input_norm:
            aux = rms_norm(aux, self.w["input_norm.weight"], self.shape.eps)
        if self.layout.fc_norm:
            chunks = aux.chunk(self.num_aux, dim=-1)
            aux = torch.cat([rms_norm(c, self.w[f"fc_norm.{i}.weight"], self.shape.eps) for i, c in enumerate(chunks)], dim=-1)
        return F.linear(aux, self.w["fc.weight"])

    def step(self, ids: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the state fed to the next step, for tokens `ids` at `positions`."""
        eps = self.shape.eps
        embeds = self.w["embed_tokens.weight"][ids]
        for index in range(self.layout.num_layers):
            prefix = self.layer(index)
            if index == 0:
                normed = rms_norm(hidden, self.w[prefix + "hidden_norm.weight"], eps)
                residual = normed if self.layout.norm_before_residual else hidden
                attn_input = torch.cat([rms_norm(embeds, self.w[prefix + "input_layernorm.weight"], eps), normed], dim=-1)
            else:
                residual, attn_input = hidden, rms_norm(hidden, self.w[prefix + "input_layernorm.weight"], eps)
            hidden = residual + self.attention(prefix, attn_input, positions)
            hidden = hidden + _mlp(rms_norm(hidden, self.w[prefix + "post_attention_layernorm.weight"], eps), self.w, prefix)
        normed = rms_norm(hidden, self.w["norm.weight"], eps)
        return F.linear(normed, self.w["lm_head.weight"]), normed if self.layout.feed_back_normed else hidden


@dataclass(frozen=True)
class EagleLayout:
    """Where an EAGLE-1 source keeps its tensors (SafeAILab cnets1.py, HASS, old speculators)."""

    fc: str = "fc"  # "fusion_fc" in old speculators
    layer_prefix: str = "layers.{i}."  # "transformer." in old speculators (one layer)


class EagleReference:
    """An EAGLE-1 draft as its source computes it: fc over [embedding, feature], no layer-0 input norm."""

    def __init__(self, weights: dict, layout: EagleLayout, shape: Heads, rope: Rope, num_layers: int):
        self.w, self.layout, self.shape, self.num_layers = weights, layout, shape, num_layers
        self.attention = _CausalAttention(weights, shape, rope)

    def step(self, ids: torch.Tensor, features: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits through the verifier's lm_head, and the features fed to the next step."""
        eps, w = self.shape.eps, self.w
        hidden = F.linear(torch.cat([w["embed_tokens.weight"][ids], features], dim=-1), w[self.layout.fc + ".weight"], w.get(self.layout.fc + ".bias"))
        for index in range(self.num_layers):
            prefix = self.layout.layer_prefix.format(i=index)
            attn_input = hidden if index == 0 else rms_norm(hidden, w[prefix + "input_layernorm.weight"], eps)
            hidden = hidden + self.attention(prefix, attn_input, positions)
            hidden = hidden + _mlp(rms_norm(hidden, w[prefix + "post_attention_layernorm.weight"], eps), w, prefix)
        return F.linear(hidden, w["lm_head.weight"]), hidden


class DFlashReference:
    """A z-lab DFlash draft as `dflash/model.py` computes one block: the context is injected into
    every layer's keys/values and the block attends without a causal mask (is_causal=False)."""

    def __init__(self, weights: dict, num_layers: int, shape: Heads, rope: Rope):
        self.w, self.num_layers, self.shape, self.rope = weights, num_layers, shape, rope

    def block(self, block_ids, aux, context_positions, block_positions) -> torch.Tensor:
        """Logits of every block slot through the verifier's lm_head."""
        s, w = self.shape, self.w
        target = rms_norm(F.linear(aux, w["fc.weight"]), w["hidden_norm.weight"], s.eps)
        x = w["embed_tokens.weight"][block_ids]
        cos, sin = self.rope(torch.cat([context_positions, block_positions], dim=1))
        for index in range(self.num_layers):
            p = f"layers.{index}."
            normed = rms_norm(x, w[p + "input_layernorm.weight"], s.eps)
            # per-head RMSNorm over head_dim; keys and values cover [context, block]
            q = rms_norm(_project(normed, w, p + "self_attn.q_proj", s.heads, s.head_dim), w[p + "self_attn.q_norm.weight"], s.eps)
            both = torch.cat([target, normed], dim=1)
            k = rms_norm(_project(both, w, p + "self_attn.k_proj", s.kv_heads, s.head_dim), w[p + "self_attn.k_norm.weight"], s.eps)
            v = _project(both, w, p + "self_attn.v_proj", s.kv_heads, s.head_dim)
            length = q.shape[2]
            q = q * cos[:, None, -length:] + rotate_half(q) * sin[:, None, -length:]
            k = _apply_rope(k, cos, sin)
            out = F.linear(_attend(q, k, v, None), w[p + "self_attn.o_proj.weight"], w.get(p + "self_attn.o_proj.bias"))
            x = x + out
            x = x + _mlp(rms_norm(x, w[p + "post_attention_layernorm.weight"], s.eps), w, p)
        return F.linear(rms_norm(x, w["norm.weight"], s.eps), w["lm_head.weight"])
