"""Hidden-state capture: the residual stream at chosen layer ids (SPEC.md §4) of any HF causal LM.

Capture works by forward hooks on the decoder layers, found generically (the `nn.ModuleList` of
`num_hidden_layers` decoder layers under `model.get_decoder()`), never per model family:

- id 0 is the input of decoder layer 0 (the embedding output, after any scaling the model applies);
- id k > 0 is the output of decoder layer k - 1, so id n is the last layer's output *before* the
  final norm (Hugging Face's last `output_hidden_states` entry is after it and is not id n).

Only the decoder stack runs (no `lm_head`: logits are not needed), and when the deepest requested
id is below n the forward stops right after that layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from libspec.errors import SpecError


class _StopForward(Exception):
    """Raised from a hook once every requested layer has been captured: the rest is not needed."""


def decoder_stack(model: nn.Module) -> nn.Module:
    """The module that runs embeddings + decoder layers + final norm, without the LM head."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    return decoder if isinstance(decoder, nn.Module) else model


def decoder_layers(model: nn.Module, num_hidden_layers: int) -> nn.ModuleList:
    """The decoder layers of `model`, found generically: a ModuleList of `num_hidden_layers` blocks.

    Prefers the stack's own `layers` attribute (which some models make longer than
    num_hidden_layers, e.g. for MTP heads: only the first n run in the forward); otherwise the one
    ModuleList of exactly n modules anywhere under the decoder.
    """
    stack = decoder_stack(model)
    own = getattr(stack, "layers", None)
    if isinstance(own, nn.ModuleList) and len(own) >= num_hidden_layers:
        return own
    found = [(name, m) for name, m in stack.named_modules() if isinstance(m, nn.ModuleList) and len(m) == num_hidden_layers]
    if len(found) == 1:
        return found[0][1]
    if not found:
        raise SpecError(f"{type(model).__name__}: found no list of {num_hidden_layers} decoder layers to capture from")
    names = ", ".join(name for name, _ in found)
    raise SpecError(f"{type(model).__name__}: several module lists of {num_hidden_layers} layers ({names}); cannot tell which is the decoder")


def _first_tensor(value) -> torch.Tensor:
    """Decoder layers return a tensor (transformers 5) or a tuple whose first item is the hidden state."""
    return value if isinstance(value, torch.Tensor) else value[0]


class HiddenStateCapture:
    """Runs a causal LM's decoder on padded batches and returns the residual stream at `layer_ids`."""

    def __init__(self, model: nn.Module, layer_ids: list[int], num_hidden_layers: int):
        if not layer_ids or list(layer_ids) != sorted(set(layer_ids)) or not 0 <= layer_ids[0] <= layer_ids[-1] <= num_hidden_layers:
            raise SpecError(f"layer ids {layer_ids}: expected ascending distinct ids within [0, {num_hidden_layers}]")
        self.model = model
        self.stack = decoder_stack(model)
        self.layers = decoder_layers(model, num_hidden_layers)
        self.layer_ids = list(layer_ids)
        self.num_hidden_layers = num_hidden_layers

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _install_hooks(self, captured: dict[int, torch.Tensor]) -> list:
        wanted, deepest = set(self.layer_ids), self.layer_ids[-1]
        handles = []

        def keep(layer_id: int, hidden: torch.Tensor) -> None:
            captured[layer_id] = hidden.detach()
            if layer_id == deepest and deepest < self.num_hidden_layers:
                raise _StopForward

        if 0 in wanted:

            def before_first(module, args, kwargs):
                keep(0, args[0] if args else kwargs["hidden_states"])

            handles.append(self.layers[0].register_forward_pre_hook(before_first, with_kwargs=True))
        for layer_id in wanted - {0}:

            def after(module, args, output, layer_id=layer_id):
                keep(layer_id, _first_tensor(output))

            handles.append(self.layers[layer_id - 1].register_forward_hook(after))
        return handles

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states [batch, seq, len(layer_ids), hidden] for right-padded `input_ids` [batch, seq]."""
        captured: dict[int, torch.Tensor] = {}
        handles = self._install_hooks(captured)
        # Right padding: real tokens never attend to the pads after them, and positions are the
        # plain 0..len-1 they would have unpadded; the mask keeps pads out of every real token's view.
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        try:
            self.stack(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return torch.stack([captured[i] for i in self.layer_ids], dim=2)

    def capture(self, sequences: list[list[int]], pad_id: int = 0, out_dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """Hidden states [len(seq), len(layer_ids), hidden] on the CPU for each token sequence, batched as given."""
        if not sequences:
            return []
        longest = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, tokens in enumerate(sequences):
            input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            attention_mask[row, : len(tokens)] = 1
        device = self.device
        hidden = self.forward(input_ids.to(device), attention_mask.to(device))
        if out_dtype is not None:
            hidden = hidden.to(out_dtype)  # on the device: less to copy back
        hidden = hidden.cpu()
        return [hidden[row, : len(tokens)] for row, tokens in enumerate(sequences)]


@dataclass(frozen=True)
class BatchLimits:
    """How big one padded forward batch may be."""

    max_tokens: int = 8192  # batch size x longest sequence, padding included
    max_sequences: int = 64


def plan_batches(lengths: list[int], limits: BatchLimits) -> list[list[int]]:
    """Group sequence indices into batches of similar length (longest first) within `limits`.

    Sorting by length keeps padding small; a sequence longer than max_tokens gets a batch alone.
    The plan depends only on `lengths` (ties keep input order), so reruns batch identically.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        # The first (longest) member fixes the padded width of a batch.
        if current and len(current) < limits.max_sequences and (len(current) + 1) * lengths[current[0]] <= limits.max_tokens:
            current.append(index)
        else:
            batches.append([index])
    return batches
