"""The DFlash draft in plain PyTorch, computing what vLLM's DFlashQwen3ForCausalLM computes.

Parameter names equal the checkpoint's (libspec/algorithms/dflash/config.py). One drafting step:

    context = hidden_norm(fc(aux))                      [C, H], the verifier positions so far
    x = embed([anchor, mask, mask, ...])                 [L, H], the block (L = block_size)
    each layer: q from input_layernorm(x); keys/values from the context (no input norm) and from
                input_layernorm(x); q_norm/k_norm per head, RoPE at each slot's position;
                the block attends to the whole context and to the block (all of it unless causal)
    logits = lm_head(norm(x))                            slots 1.. predict the drafted tokens
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from libspec.algorithms.dflash import config as dflash
from libspec.algorithms.layers import MLP, DraftTensors, RMSNorm, rotate_half
from libspec.algorithms.sampling import temperature_probs


class DFlashAttention(nn.Module):
    """Qwen3 attention whose keys/values also cover the projected verifier context."""

    def __init__(self, layer: dict):
        super().__init__()
        hidden, bias = layer["hidden_size"], bool(layer.get("attention_bias", False))
        self.heads = layer["num_attention_heads"]
        self.kv_heads = layer.get("num_key_value_heads") or self.heads
        self.head_dim = dflash.head_dim(layer)
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, layer["rms_norm_eps"])
        self.k_norm = RMSNorm(self.head_dim, layer["rms_norm_eps"])

    def _heads(self, x: torch.Tensor, count: int) -> torch.Tensor:
        return x.view(*x.shape[:-1], count, self.head_dim)

    def forward(self, x, context, rope_block, rope_context, mask: torch.Tensor | None) -> torch.Tensor:
        """`mask` bool [L, C+L] (True: attend) over [context | block] keys; None: everything."""
        batch, length, _ = x.shape
        q = self.q_norm(self._heads(self.q_proj(x), self.heads))
        k = self.k_norm(self._heads(torch.cat([self.k_proj(context), self.k_proj(x)], dim=1), self.kv_heads))
        v = self._heads(torch.cat([self.v_proj(context), self.v_proj(x)], dim=1), self.kv_heads)
        cos = torch.cat([rope_context[0], rope_block[0]], dim=1).unsqueeze(2)
        sin = torch.cat([rope_context[1], rope_block[1]], dim=1).unsqueeze(2)
        q = q * cos[:, -length:] + rotate_half(q) * sin[:, -length:]
        k = k * cos + rotate_half(k) * sin
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, d]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.kv_heads != self.heads)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim))


class DFlashLayer(nn.Module):
    def __init__(self, layer: dict):
        super().__init__()
        hidden, eps = layer["hidden_size"], layer["rms_norm_eps"]
        self.input_layernorm = RMSNorm(hidden, eps)
        self.self_attn = DFlashAttention(layer)
        self.post_attention_layernorm = RMSNorm(hidden, eps)
        self.mlp = MLP(hidden, layer["intermediate_size"])

    def forward(self, x, context, rope_block, rope_context, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), context, rope_block, rope_context, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class DFlashDraft(DraftTensors, nn.Module):
    """A DFlash draft built from a speculators `dflash` config.json (see the module docstring)."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        layer = config["transformer_layer_config"]
        hidden, vocab = layer["hidden_size"], layer["vocab_size"]
        self.draft_vocab_size = config.get("draft_vocab_size") or vocab
        # vLLM makes every layer causal when sliding_window_non_causal is false (dflash_config.causal).
        self.causal = not config.get("sliding_window_non_causal", True)
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.embed_tokens.weight.requires_grad_(False)
        self.fc = nn.Linear(len(config["aux_hidden_state_layer_ids"]) * hidden, hidden, bias=False)
        self.hidden_norm = RMSNorm(hidden, layer["rms_norm_eps"])
        self.layers = nn.ModuleList(DFlashLayer(layer) for _ in range(layer["num_hidden_layers"]))
        self.norm = RMSNorm(hidden, layer["rms_norm_eps"])
        self.lm_head = nn.Linear(hidden, self.draft_vocab_size, bias=False)
        rope = LlamaConfig(**{k: v for k, v in layer.items() if k != "model_type"})
        rope.head_dim = dflash.head_dim(layer)
        self.rotary = LlamaRotaryEmbedding(rope)
        self.register_vocab_map(self.draft_vocab_size, vocab)

    def forward(
        self,
        block_ids: torch.Tensor,  # [B, L]: the anchor token, then mask tokens
        aux: torch.Tensor,  # [B, C, A*H]: the verifier's aux hidden states of the context
        context_positions: torch.Tensor,  # [B, C]
        block_positions: torch.Tensor,  # [B, L]
        attention_mask: torch.Tensor | None = None,  # bool [L, C+L]; None: one block seeing all the context
        logits_at: torch.Tensor | None = None,  # int64 [R]: slots of batch row 0 whose logits are wanted
    ) -> torch.Tensor:
        """Logits over the draft vocabulary for every block slot [B, L, D] (or for `logits_at` only, [R, D]).

        Training passes many blocks as one row of L = blocks*block_size slots, with the mask that
        shows each block its own context prefix and itself (libspec/algorithms/dflash/train.py).
        """
        context = self.hidden_norm(self.fc(aux))
        x = self.embed_tokens(block_ids).to(context.dtype)
        rope_context = self.rotary(context, context_positions)
        rope_block = self.rotary(x, block_positions)
        mask = attention_mask if attention_mask is not None else self.block_mask(context.shape[1], x.shape[1], x.device)
        for layer in self.layers:
            x = layer(x, context, rope_block, rope_context, mask)
        if logits_at is not None:
            x = x[0, logits_at]
        return self.lm_head(self.norm(x))

    def block_mask(self, context_length: int, block_length: int, device) -> torch.Tensor | None:
        """The mask of one block after its context: none when non-causal (vLLM's default), else causal in the block."""
        if not self.causal:
            return None
        keys = context_length + block_length
        return torch.ones(block_length, keys, dtype=torch.bool, device=device).tril(diagonal=context_length)

    def optional_checkpoint_tensors(self) -> set[str]:
        """Also lm_head with the full vocabulary: vLLM then shares the verifier's."""
        return {"embed_tokens.weight"} | ({"lm_head.weight"} if self.d2t is None else set())


class DFlashProposer:
    """DFlash drafting: one pass over [anchor, mask, ...] after the verified context yields up to
    block_size - 1 drafts. The context's projected keys/values are recomputed each step (vLLM
    caches them; the result is the same)."""

    def __init__(self, draft: DFlashDraft):
        self.draft = draft.eval()
        self.aux_layer_ids = list(draft.config["aux_hidden_state_layer_ids"])
        self.block_size, self.mask_token_id = draft.config["block_size"], draft.config["mask_token_id"]
        self.device = next(draft.parameters()).device

    def start(self, context: torch.Tensor, aux: torch.Tensor | None) -> None:
        self.context_aux, self.anchor = aux, context[-1]  # the anchor sits right after the context

    @torch.no_grad()
    def propose(self, k, temperature, generator):
        if k > self.block_size - 1:
            raise ValueError(f"a DFlash block of {self.block_size} drafts at most {self.block_size - 1} tokens, not {k}")
        length = len(self.context_aux)
        block = torch.full((1, self.block_size), self.mask_token_id, device=self.device)
        block[0, 0] = self.anchor
        positions = torch.arange(length + self.block_size, device=self.device)[None]
        aux = self.context_aux.to(self.draft.fc.weight.dtype)[None]
        logits = self.draft(block, aux, positions[:, :length], positions[:, length:])[0, 1 : k + 1].float()  # [k, D]
        if temperature == 0:
            return self.draft.to_verifier_ids(logits.argmax(dim=-1)), None
        vocab = self.draft.embed_tokens.num_embeddings
        probs = torch.zeros(k, vocab, device=self.device)
        probs[:, self.draft.to_verifier_ids(torch.arange(logits.shape[1], device=self.device))] = temperature_probs(logits, temperature)
        return torch.multinomial(probs, 1, generator=generator)[:, 0], probs

    def commit(self, accepted: torch.Tensor, aux: torch.Tensor | None) -> None:
        self.context_aux = torch.cat([self.context_aux, aux])
        self.anchor = accepted[-1]


def load_proposer(checkpoint_dir, verifier_model, dtype: torch.dtype | None = None) -> DFlashProposer:
    """A DFlash proposer from a checkpoint folder; absent embed_tokens/lm_head are the verifier's."""
    from libspec.format import checkpoint as ckpt

    draft = DFlashDraft(ckpt.read_config(checkpoint_dir))
    tensors = ckpt.load_tensors(checkpoint_dir)
    tensors.setdefault("embed_tokens.weight", verifier_model.get_input_embeddings().weight.detach().cpu())
    if draft.d2t is None:
        tensors.setdefault("lm_head.weight", verifier_model.get_output_embeddings().weight.detach().cpu())
    draft.load_checkpoint_tensors(tensors)
    parameter = next(verifier_model.parameters())
    draft.to(device=parameter.device, dtype=dtype or parameter.dtype)
    return DFlashProposer(draft)
