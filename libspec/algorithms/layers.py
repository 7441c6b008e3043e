"""Building blocks the draft models share: RMSNorm, rotary attention with a KV cache, the
test-time-training mask, the MLP, and the checkpoint/vocabulary-map behaviour of a draft module.

Parameter names equal vLLM's (q_proj, k_proj, ..., gate_proj), so a draft built from these blocks
has the checkpoint's tensor names as its state dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, as vLLM and transformers do for Llama and Qwen3."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


@dataclass
class LayerCache:
    """Keys and values of one attention layer: [batch, kv_heads, positions, head_dim]."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is not None:
            keys, values = torch.cat([self.keys, keys], dim=2), torch.cat([self.values, values], dim=2)
        self.keys, self.values = keys, values
        return keys, values

    def crop(self, length: int) -> None:
        """Keep the first `length` positions (drop rejected drafts)."""
        if self.keys is not None:
            self.keys, self.values = self.keys[:, :, :length], self.values[:, :, :length]

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]


@dataclass
class DraftCache:
    """The draft's KV cache, one LayerCache per decoder layer."""

    layers: list[LayerCache] = field(default_factory=list)

    @classmethod
    def empty(cls, num_layers: int) -> "DraftCache":
        return cls([LayerCache() for _ in range(num_layers)])

    @property
    def length(self) -> int:
        return self.layers[0].length

    def crop(self, length: int) -> None:
        for layer in self.layers:
            layer.crop(length)


def causal_mask(length: int, cached: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool mask [length, cached + length]: new position i sees the cache and new positions <= i."""
    return torch.ones(length, cached + length, dtype=torch.bool, device=device).tril(diagonal=cached)


@dataclass(frozen=True)
class DocumentSpans:
    """The test-time-training mask over packed documents, as spans instead of a dense [T, steps*T] mask.

    The cache holds one block of T keys per TTT step. Query j (in document [start, end)) sees the
    first block's keys start..j and its own slot j in every later block: the standard EAGLE-3 TTT
    mask. Attending document by document costs sum(L^2) instead of T^2 per block.
    """

    bounds: tuple[tuple[int, int], ...]  # [start, end) of each document, covering 0..T in order

    @classmethod
    def from_document_ids(cls, document_ids: torch.Tensor) -> "DocumentSpans":
        """Spans of equal consecutive ids in a [T] tensor."""
        change = (document_ids[1:] != document_ids[:-1]).nonzero().squeeze(1) + 1
        edges = [0, *change.tolist(), len(document_ids)]
        return cls(tuple(zip(edges[:-1], edges[1:])))

    def dense(self, length: int, blocks: int, device=None) -> torch.Tensor:
        """The same mask as one bool [T, blocks*T] tensor (for checks)."""
        mask = torch.zeros(length, blocks * length, dtype=torch.bool, device=device)
        for start, end in self.bounds:
            mask[start:end, start:end] = causal_mask(end - start, 0, device)
        eye = torch.eye(length, dtype=torch.bool, device=device)
        for block in range(1, blocks):
            mask[:, block * length : (block + 1) * length] = eye
        return mask


def _attend_by_document(q, k, v, spans: DocumentSpans, enable_gqa: bool) -> torch.Tensor:
    """Attention of q [B, h, T, d] over cached keys [B, kv, blocks*T, d] under a DocumentSpans mask."""
    length = q.shape[2]
    blocks = k.shape[2] // length
    outputs, masks = [], {}
    for start, end in spans.bounds:
        size = end - start
        if size not in masks:
            eye = torch.eye(size, dtype=torch.bool, device=q.device)
            masks[size] = torch.cat([causal_mask(size, 0, q.device)] + [eye] * (blocks - 1), dim=-1)
        keys = torch.cat([k[:, :, b * length + start : b * length + end] for b in range(blocks)], dim=2)
        values = torch.cat([v[:, :, b * length + start : b * length + end] for b in range(blocks)], dim=2)
        outputs.append(F.scaled_dot_product_attention(q[:, :, start:end], keys, values, attn_mask=masks[size], enable_gqa=enable_gqa))
    return torch.cat(outputs, dim=2)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class Attention(nn.Module):
    """Grouped-query attention with RoPE; Qwen3 style adds per-head q/k RMSNorm before RoPE."""

    def __init__(self, config: LlamaConfig, input_size: int, qk_norm: bool):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        bias = bool(getattr(config, "attention_bias", False))
        self.q_proj = nn.Linear(input_size, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(input_size, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(input_size, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, mask, cache: LayerCache | None) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, d]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.append(k, v)
        if isinstance(mask, DocumentSpans):
            out = _attend_by_document(q, k, v, mask, enable_gqa=self.kv_heads != self.heads)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.kv_heads != self.heads)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DraftTensors:
    """For draft modules: the checkpoint's tensors (the state dict minus rotary tables) and the
    reduced draft vocabulary's maps d2t/t2d (SPEC.md §11.2), shared by every algorithm."""

    def register_vocab_map(self, draft_vocab_size: int, vocab_size: int) -> None:
        """d2t/t2d buffers when the draft predicts over fewer tokens than the verifier, else None."""
        if draft_vocab_size != vocab_size:
            self.register_buffer("d2t", torch.zeros(draft_vocab_size, dtype=torch.int64))
            self.register_buffer("t2d", torch.zeros(vocab_size, dtype=torch.bool))
        else:
            self.d2t = self.t2d = None

    def to_verifier_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Map draft-vocabulary ids to verifier ids (target = draft + d2t[draft])."""
        return draft_ids if self.d2t is None else draft_ids + self.d2t[draft_ids]

    def optional_checkpoint_tensors(self) -> set[str]:
        """Tensors a checkpoint may leave out: they then keep the current (verifier's) values."""
        return {"embed_tokens.weight"}

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of a checkpoint: the state dict minus what is not saved (rotary tables)."""
        return {name: t for name, t in self.state_dict().items() if not name.startswith("rotary.")}

    def load_checkpoint_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load checkpoint tensors; a missing optional tensor keeps the current one."""
        expected = self.checkpoint_tensors()
        missing = set(expected) - set(tensors) - self.optional_checkpoint_tensors()
        unexpected = set(tensors) - set(expected)
        if missing or unexpected:
            raise ValueError(f"checkpoint tensors differ from the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        self.load_state_dict(tensors, strict=False)


def decoder_fsdp_units(layers) -> list[nn.Module]:
    """FSDP units of a stack of decoder layers: each attention projection and each MLP, sharded (and
    gathered) one at a time; the rest shards with the root.

    Units take plain tensors only: FSDP2 copies dataclass arguments of a unit's forward, so a
    decoder layer (which receives its KV cache) cannot be a unit without losing cache appends.
    """
    units: list[nn.Module] = []
    for layer in layers:
        attention = layer.self_attn
        units += [attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj, layer.mlp]
    return units
