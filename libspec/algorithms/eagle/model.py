"""The EAGLE-1 draft in plain PyTorch, computing what vLLM's EagleLlamaForCausalLM computes.

Parameter names equal the checkpoint's (libspec/algorithms/eagle/config.py). Per position, with `f` the
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

from libspec.algorithms.eagle import config as eagle
from libspec.algorithms.layers import MLP, Attention, DocumentSpans, DraftCache, DraftTensors, RMSNorm, causal_mask
from libspec.algorithms.sampling import temperature_probs


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


class EagleDraft(DraftTensors, nn.Module):
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
        mask: torch.Tensor | DocumentSpans | None = None,  # None: causal over the cache and the new positions
    ) -> torch.Tensor:
        """The next features [B, T, H]; the verifier's lm_head turns them into logits."""
        hidden = self.fc(torch.cat([self.embed_tokens(input_ids).to(features.dtype), features], dim=-1))
        cos, sin = self.rotary(hidden, positions)
        if mask is None and input_ids.shape[1] > 1:
            mask = causal_mask(input_ids.shape[1], 0 if cache is None else cache.length, hidden.device)
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden, cos, sin, mask, None if cache is None else cache.layers[index])
        return hidden


class EagleProposer:
    """EAGLE-1 drafting as vLLM does it: the draft reads the verifier's final hidden state after its
    norm, and the verifier's lm_head turns the draft's output into logits."""

    def __init__(self, draft: EagleDraft, verifier_norm: nn.Module, lm_head: nn.Module, num_verifier_layers: int):
        self.draft = draft.eval()
        self.norm, self.lm_head = verifier_norm, lm_head
        # Layer id n is the input of the verifier's final norm (SPEC.md §4); the norm is applied here.
        self.aux_layer_ids = [num_verifier_layers]
        self.device = next(draft.parameters()).device

    def start(self, context: torch.Tensor, aux: torch.Tensor | None) -> None:
        self.cache = DraftCache.empty(len(self.draft.layers))
        self._catch_up(context[1:], aux)  # slot p holds (token p+1, verifier feature at p)

    @torch.no_grad()
    def _catch_up(self, next_tokens: torch.Tensor, aux: torch.Tensor) -> None:
        start = self.cache.length
        positions = torch.arange(start, start + len(next_tokens), device=self.device)[None]
        features = self.norm(aux.to(self.draft.fc.weight.dtype))[None]
        out = self.draft(next_tokens[None], features, positions, cache=self.cache)
        self.committed = self.cache.length
        self.next_feature = out[:, -1:]

    @torch.no_grad()
    def propose(self, k, temperature, generator):
        tokens, probs = [], []
        feature = self.next_feature
        for step in range(k):
            logits = self.lm_head(feature)[0, -1].float()
            if temperature == 0:
                token, token_probs = logits.argmax(), None
            else:
                token_probs = temperature_probs(logits, temperature)
                token = torch.multinomial(token_probs, 1, generator=generator)[0]
            tokens.append(token)
            probs.append(token_probs)
            if step + 1 < k:
                position = torch.tensor([[self.cache.length]], device=self.device)
                feature = self.draft(token.view(1, 1), feature, position, cache=self.cache)
        return torch.stack(tokens), None if temperature == 0 else torch.stack(probs)

    def commit(self, accepted: torch.Tensor, aux: torch.Tensor | None) -> None:
        self.cache.crop(self.committed)  # drafted slots were computed from the draft's own features
        self._catch_up(accepted, aux)


def load_proposer(checkpoint_dir, verifier_model, dtype: torch.dtype | None = None) -> EagleProposer:
    """An EAGLE-1 proposer from a checkpoint folder, sharing the verifier's embedding, norm and lm_head."""
    from libspec.format import checkpoint as ckpt

    draft = EagleDraft(ckpt.read_config(checkpoint_dir))
    tensors = ckpt.load_tensors(checkpoint_dir)
    tensors.setdefault("embed_tokens.weight", verifier_model.get_input_embeddings().weight.detach().cpu())
    draft.load_checkpoint_tensors(tensors)
    parameter = next(verifier_model.parameters())
    draft.to(device=parameter.device, dtype=dtype or parameter.dtype)
    decoder = verifier_model.get_decoder()
    return EagleProposer(draft, decoder.norm, verifier_model.get_output_embeddings(), len(decoder.layers))
