"""The EAGLE-3 draft model in plain PyTorch, computing exactly what vLLM's Eagle3 heads compute.

Module and parameter names equal the checkpoint's tensor names (SPEC.md §11.2), so
`state_dict()` is the checkpoint. One forward serves training (test-time-training steps, where
the caller passes the keys/values of earlier steps and a mask) and decoding (a KV cache).

Per draft position, with `g` the verifier's aux hidden states and `x` the next token:
    h = fc(g)                                        (first step only; later steps feed back h')
    layer 0: a = attn(cat[input_layernorm(embed(x)), hidden_norm(h)]) + r,  r = h or hidden_norm(h)
             then the usual MLP block; further layers are standard pre-norm decoder layers
    h' = output before the final norm (after it with norm_output); logits = lm_head(norm(output))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from libspec.algorithms.eagle3.config import options_from_config
from libspec.algorithms.layers import MLP, Attention, DocumentSpans, DraftCache, DraftTensors, RMSNorm, causal_mask
from libspec.algorithms.sampling import temperature_probs


class DecoderLayer(nn.Module):
    """A pre-norm decoder layer; the first one reads [embedding, hidden] (EAGLE-3's layer 0)."""

    def __init__(self, config: LlamaConfig, first: bool, norm_before_residual: bool, qk_norm: bool):
        super().__init__()
        hidden = config.hidden_size
        self.first = first
        self.norm_before_residual = norm_before_residual
        self.input_layernorm = RMSNorm(hidden, config.rms_norm_eps)
        if first:
            self.hidden_norm = RMSNorm(hidden, config.rms_norm_eps)
        self.self_attn = Attention(config, 2 * hidden if first else hidden, qk_norm)
        self.post_attention_layernorm = RMSNorm(hidden, config.rms_norm_eps)
        self.mlp = MLP(hidden, config.intermediate_size)

    def forward(self, hidden, embeds, cos, sin, mask, cache) -> torch.Tensor:
        if self.first:
            normed_hidden = self.hidden_norm(hidden)
            residual = normed_hidden if self.norm_before_residual else hidden
            attn_input = torch.cat([self.input_layernorm(embeds), normed_hidden], dim=-1)
        else:
            residual, attn_input = hidden, self.input_layernorm(hidden)
        hidden = residual + self.self_attn(attn_input, cos, sin, mask, cache)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class Eagle3Draft(DraftTensors, nn.Module):
    """An EAGLE-3 draft built from a checkpoint config.json (see the module docstring)."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        options = options_from_config(config)
        layer = LlamaConfig(**{k: v for k, v in config["transformer_layer_config"].items() if k != "model_type"})
        hidden, vocab = layer.hidden_size, layer.vocab_size
        self.draft_vocab_size = options.draft_vocab_size or vocab
        self.num_aux = len(options.aux_layer_ids)
        self.norm_output = options.norm_output
        qk_norm = options.layer_style == "qwen3"

        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.embed_tokens.weight.requires_grad_(False)  # the verifier's, frozen
        self.fc = nn.Linear(self.num_aux * hidden, hidden, bias=False)
        self.input_norm = RMSNorm(self.num_aux * hidden, layer.rms_norm_eps) if options.norm_before_fc else None
        self.fc_norm = nn.ModuleList(RMSNorm(hidden, layer.rms_norm_eps) for _ in range(self.num_aux)) if options.fc_norm else None
        self.layers = nn.ModuleList(
            DecoderLayer(layer, i == 0, options.norm_before_residual, qk_norm) for i in range(layer.num_hidden_layers)
        )
        self.norm = RMSNorm(hidden, layer.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, self.draft_vocab_size, bias=False)
        self.rotary = LlamaRotaryEmbedding(layer)
        self.register_vocab_map(self.draft_vocab_size, vocab)

    def project(self, aux_hidden: torch.Tensor) -> torch.Tensor:
        """fc over the verifier's aux hidden states concatenated in layer-id order: [.., A*H] -> [.., H]."""
        if self.input_norm is not None:
            aux_hidden = self.input_norm(aux_hidden)
        if self.fc_norm is not None:
            chunks = aux_hidden.chunk(self.num_aux, dim=-1)
            aux_hidden = torch.cat([norm(chunk) for norm, chunk in zip(self.fc_norm, chunks)], dim=-1)
        return self.fc(aux_hidden)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        hidden: torch.Tensor,  # [B, T, H]: project(aux) on the first step, the previous step's output after
        positions: torch.Tensor,  # [B, T]
        mask: torch.Tensor | DocumentSpans | None = None,  # bool [B or 1, 1, T, cached + T]; None = causal
        cache: DraftCache | None = None,
        logits_at: torch.Tensor | None = None,  # int64 [N]: only these positions of row 0 need logits (training)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over the draft vocabulary [B, T, D] (or [N, D] with logits_at) and the hidden state to feed back [B, T, H]."""
        embeds = self.embed_tokens(input_ids).to(hidden.dtype)
        cos, sin = self.rotary(hidden, positions)
        if mask is None and input_ids.shape[1] > 1:
            mask = causal_mask(input_ids.shape[1], 0 if cache is None else cache.length, hidden.device)
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden, embeds, cos, sin, mask, None if cache is None else cache.layers[index])
        normed = self.norm(hidden)
        feed_back = normed if self.norm_output else hidden
        if logits_at is not None:  # the vocabulary projection is the costliest op; skip rows nobody reads
            return self.lm_head(normed[0, logits_at]), feed_back
        return self.lm_head(normed), feed_back


class Eagle3Proposer:
    """EAGLE-3 drafting as vLLM does it: catch up on verified positions, then k-1 chained steps."""

    def __init__(self, draft: Eagle3Draft, aux_layer_ids: list[int]):
        self.draft = draft.eval()
        self.aux_layer_ids = list(aux_layer_ids)
        self.device = next(draft.parameters()).device
        self.vocab_size = draft.embed_tokens.num_embeddings

    def start(self, context: torch.Tensor, aux: torch.Tensor | None) -> None:
        self.cache = DraftCache.empty(len(self.draft.layers))
        # Slot p holds (token p+1, verifier state at p), so the prompt's P slots are context[1:] and aux.
        self._catch_up(context[1:], aux)

    @torch.no_grad()
    def _catch_up(self, next_tokens: torch.Tensor, aux: torch.Tensor) -> None:
        start = self.cache.length
        positions = torch.arange(start, start + len(next_tokens), device=self.device)[None]
        hidden = self.draft.project(aux.to(self.draft.fc.weight.dtype))[None]
        logits, out = self.draft(next_tokens[None], hidden, positions, cache=self.cache)
        self.committed = self.cache.length
        self.next_logits, self.next_hidden = logits[0, -1], out[:, -1:]

    @torch.no_grad()
    def propose(self, k, temperature, generator):
        tokens, probs = [], []
        logits, hidden = self.next_logits, self.next_hidden
        for step in range(k):
            token, token_probs = self._pick(logits, temperature, generator)
            tokens.append(token)
            probs.append(token_probs)
            if step + 1 < k:
                position = torch.tensor([[self.cache.length]], device=self.device)
                step_logits, hidden = self.draft(token.view(1, 1), hidden, position, cache=self.cache)
                logits = step_logits[0, -1]
        return torch.stack(tokens), None if temperature == 0 else torch.stack(probs)

    def _pick(self, draft_logits: torch.Tensor, temperature: float, generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        if temperature == 0:
            return self.draft.to_verifier_ids(draft_logits.argmax()), None
        probs = torch.zeros(self.vocab_size, device=draft_logits.device)
        targets = self.draft.to_verifier_ids(torch.arange(len(draft_logits), device=draft_logits.device))
        probs[targets] = temperature_probs(draft_logits.float(), temperature)
        return torch.multinomial(probs, 1, generator=generator)[0], probs

    def commit(self, accepted: torch.Tensor, aux: torch.Tensor | None) -> None:
        # Drafting wrote slots from the draft's own states; recompute them from the verifier's.
        self.cache.crop(self.committed)
        self._catch_up(accepted, aux)


def load_proposer(checkpoint_dir, verifier_model, dtype: torch.dtype | None = None) -> Eagle3Proposer:
    """An EAGLE-3 proposer from a checkpoint folder, on the verifier's device; a checkpoint
    without embed_tokens shares the verifier's embedding (as vLLM does)."""
    from libspec.format import checkpoint as ckpt

    config = ckpt.read_config(checkpoint_dir)
    draft = Eagle3Draft(config)
    tensors = ckpt.load_tensors(checkpoint_dir)
    if "embed_tokens.weight" not in tensors:
        tensors["embed_tokens.weight"] = verifier_model.get_input_embeddings().weight.detach().cpu()
    draft.load_checkpoint_tensors(tensors)
    parameter = next(verifier_model.parameters())
    draft.to(device=parameter.device, dtype=dtype or parameter.dtype)
    return Eagle3Proposer(draft, config["eagle_aux_hidden_state_layer_ids"])
