"""The teacher: the verifier's own final norm and lm_head, applied to its stored last hidden state.

Data sets store layer id n, the verifier's last residual stream *before* its final norm (SPEC.md
§4), so the teacher's distribution is `lm_head(final_norm(h_n))`. Rather than re-implementing
norms per model family (Gemma's `x * (1 + w)`, Llama's `x * w`, ...), we build the verifier's own
classes on the `meta` device and materialise only the final norm and the output embedding from its
safetensors: a 70B verifier costs the memory of two small tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import safetensors
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from libspec.errors import SpecError
from libspec.format.json_files import read_weight_map
from libspec.verifier import read_model_config, resolve_model_dir

# Names HF decoder families give the norm after the last layer (Llama/Qwen/Gemma/Mistral, Phi, GPT-2/Falcon).
FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "norm_f")


class Teacher(nn.Module):
    """Frozen `lm_head(final_norm(h))` of the verifier, in float32; logits over the full vocabulary."""

    def __init__(self, final_norm: nn.Module, lm_head: nn.Module, logit_softcap: float | None):
        super().__init__()
        self.final_norm = final_norm
        self.lm_head = lm_head
        self.logit_softcap = logit_softcap
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """[.., H] pre-norm last hidden states -> [.., V] float32 logits."""
        logits = self.lm_head(self.final_norm(last_hidden.float())).float()
        if self.logit_softcap:  # Gemma 2/3 squash logits; argmax is unchanged, the distribution is not
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits


@dataclass
class VerifierHead:
    """What a draft takes from its verifier: the teacher and the input embedding table [V, H]."""

    teacher: Teacher
    embed_tokens: torch.Tensor
    config: dict


def load_verifier_head(name_or_path: str) -> VerifierHead:
    """Build the teacher and read the embedding from a verifier folder (or cached Hub id)."""
    model_dir = resolve_model_dir(name_or_path)
    config = AutoConfig.from_pretrained(model_dir)  # no trust_remote_code: the verifier's classes must be in transformers
    with torch.device("meta"):
        try:
            skeleton = AutoModelForCausalLM.from_config(config)
        except ValueError as error:
            raise SpecError(f"{model_dir / 'config.json'}: transformers cannot build this model ({error})") from None
    names = {id(module): name for name, module in skeleton.named_modules()}
    final_norm = find_final_norm(skeleton, str(model_dir))
    lm_head, embed = skeleton.get_output_embeddings(), skeleton.get_input_embeddings()
    tied = getattr(skeleton, "_tied_weights_keys", None) or {}
    for module in (final_norm, lm_head, embed):
        prefix = names[id(module)]
        params = [name for name, _ in module.named_parameters()]
        tensors = _read_tensors(model_dir, [f"{prefix}.{name}" for name in params], tied)
        module.to_empty(device="cpu")
        module.load_state_dict({name: tensors[f"{prefix}.{name}"].float() for name in params}, strict=False)
        module.float()
    raw = read_model_config(model_dir)
    softcap = getattr(config.get_text_config(), "final_logit_softcapping", None)
    return VerifierHead(Teacher(final_norm, lm_head, softcap), embed.weight.detach().clone(), raw)


def find_final_norm(model: nn.Module, where: str = "the verifier") -> nn.Module:
    """The norm applied after the last decoder layer: the shallowest module with a final-norm name."""
    candidates = [
        (name.count("."), name, module)
        for name, module in model.named_modules()
        if name.split(".")[-1] in FINAL_NORM_NAMES and not any(part.isdigit() for part in name.split("."))
    ]
    if not candidates:
        raise SpecError(f"{where}: cannot find the verifier's final norm (a module named one of {', '.join(FINAL_NORM_NAMES)})")
    return min(candidates, key=lambda c: (c[0], c[1]))[2]


def _read_tensors(model_dir: Path, names: list[str], tied: dict[str, str]) -> dict[str, torch.Tensor]:
    """Read only `names` from the verifier's safetensors (single file or sharded with an index)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_weight_map(index)
    elif (model_dir / "model.safetensors").is_file():
        with safetensors.safe_open(str(model_dir / "model.safetensors"), framework="pt") as handle:
            weight_map = {key: "model.safetensors" for key in handle.keys()}
    else:
        raise SpecError(f"{model_dir}: no model.safetensors (or index); the teacher needs the verifier's weights")
    tensors = {}
    for name in names:
        stored = name if name in weight_map else tied.get(name)  # tied lm_head: stored as the embedding
        if stored not in weight_map:
            raise SpecError(f"{model_dir}: the verifier's weights lack {name}")
        with safetensors.safe_open(str(model_dir / weight_map[stored]), framework="pt") as handle:
            tensors[name] = handle.get_tensor(stored)
    return tensors
