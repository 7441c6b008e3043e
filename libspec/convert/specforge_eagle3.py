"""SpecForge EAGLE-3 exports (github.com/sgl-project/SpecForge, `--to hf` / `--to sglang`).

Same weight layout as SafeAILab (`midlayer.*`, `fc`, `norm`, `lm_head`, `d2t`/`t2d`; `--to hf`
adds `embed_tokens`) with a `LlamaForCausalLMEagle3` config that may add:
- `eagle_config.eagle_aux_hidden_state_layer_ids`: 0-based *outputs* of layers (SGLang captures
  id + 1), so our layer id is the recorded one plus one; SpecForge's default [1, n//2-1, n-4]
  is our [2, n//2, n-3];
- `fc_norm` (EAGLE 3.1): one RMSNorm per aux layer before `fc`;
- `norm_output`: in SpecForge it means "apply `norm` before lm_head" (default true). The state
  fed to the next step is always the pre-norm one, i.e. vLLM's norm_output=false. With
  SpecForge's norm_output=false the head reads the raw state, which vLLM cannot express.
"""

from __future__ import annotations

from libspec.convert.common import Conversion, ConvertOptions
from libspec.verifier import VerifierConfig
from libspec.convert.eagle3_build import Eagle3Facts, build_eagle3, default_aux, layer_facts, rename_midlayer
from libspec.convert.reference import Eagle3Layout
from libspec.convert.source import Source
from libspec.errors import SpecError

NAME = "specforge-eagle3"
SIGNATURE = "midlayer.* like SafeAILab plus SpecForge config keys (eagle_config, fc_norm, norm_output)"
# SpecForge trains with ttt_length=7 (specforge/config/schema.py).
DEFAULT_TOKENS = 7


def has_specforge_marks(source: Source) -> bool:
    """SpecForge's config keys or fc_norm weights: what tells its midlayer.* checkpoints from SafeAILab's."""
    config = source.config
    return isinstance(config.get("eagle_config"), dict) or "fc_norm" in config or "norm_output" in config or source.any_prefix("fc_norm.")


def matches(source: Source) -> bool:
    return source.any_prefix("midlayer.") and source.has("fc.weight") and "speculators_config" not in source.config and has_specforge_marks(source)


def convert(source: Source, verifier: VerifierConfig, options: ConvertOptions, name: str = NAME) -> Conversion:
    """SpecForge names and conventions -> ours (layer ids +1, norm_output reinterpreted)."""
    config = source.config
    if config.get("norm_output") is False:
        raise SpecError(f"{source.config_path}: norm_output is false: SpecForge's head then reads the un-normalised state, which vLLM's EAGLE-3 head (always normalising) cannot express")
    n = verifier.lm["num_hidden_layers"]
    recorded = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    facts = Eagle3Facts(
        aux_recorded=tuple(i + 1 for i in recorded) if recorded else None,
        aux_default=default_aux(n),
        aux_reason="SpecForge's default capture [1, n//2-1, n-4] names layer outputs, i.e. layer ids [2, n//2, n-3]",
        norm_before_residual_recorded=None,
        norm_before_residual_default=False,
        norm_before_residual_reason="SpecForge's LlamaDecoderLayer keeps the raw hidden state as layer 0's residual",
        tokens_recorded=None,
        tokens_default=DEFAULT_TOKENS,
        tokens_reason="SpecForge trains ttt_length=7 steps by default",
        norm_output=False,  # SpecForge feeds the pre-norm backbone output to the next step
        layer=layer_facts(config),
    )
    tensors = {rename_midlayer(key): value for key, value in source.tensors.items()}
    if bool(config.get("fc_norm")) != any(k.startswith("fc_norm.") for k in tensors):
        raise SpecError(f"{source.config_path}: fc_norm is {config.get('fc_norm')} but the weights {'lack' if config.get('fc_norm') else 'have'} fc_norm.* tensors")
    layout = Eagle3Layout(first_layer="midlayer.", fc_norm=bool(config.get("fc_norm")))
    conversion = build_eagle3(source, tensors, verifier, options, name, facts, layout, "SpecForge llama3_eagle.py (LlamaForCausalLMEagle3)")
    if recorded:
        conversion.notes.append(f"layer ids: SpecForge's eagle_config records layer outputs {list(recorded)}, which are layer ids {[i + 1 for i in recorded]}")
    return conversion
