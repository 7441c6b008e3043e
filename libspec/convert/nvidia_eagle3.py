"""NVIDIA Model Optimizer EAGLE-3 exports (github.com/NVIDIA/Model-Optimizer,
`modelopt/torch/export/plugins/hf_spec_export.py`: "official" EAGLE layout).

Layout: config `LlamaForCausalLMEagle3` with an `eagle_config` block (`use_aux_hidden_state`,
`eagle_aux_hidden_state_layer_ids`, `use_last_layernorm`, ...); weights `fc`, `norm`, `d2t`
without `t2d`, and the layers under SafeAILab's `midlayer.*` names (exports until 2026-03, where
`lm_head` is written only for a reduced vocabulary) or as `layers.{i}.*` with
`layers.0.hidden_norm` (later exports, which always write `lm_head`). ModelOpt's layer ids are 0-based layer *outputs*
(a forward hook on layer k), i.e. our id k+1; its default {1, n//2-1, n-4} is our [2, n//2, n-3].

ModelOpt's EagleModule as exported (0.35) normalises the hidden half with `hidden_norm` only and
keeps the raw state as residual; the pre-norm output is fed back. (ModelOpt's later refactor
applies layer 0's input_layernorm before hidden_norm too; vLLM serves these exports with the
single norm, which is what this converter reproduces.)
"""

from __future__ import annotations

from libspec.convert.common import Conversion, ConvertOptions
from libspec.verifier import VerifierConfig
from libspec.convert.eagle3_build import Eagle3Facts, build_eagle3, layer_facts, rename_midlayer
from libspec.convert.reference import Eagle3Layout
from libspec.convert.source import Source
from libspec.errors import SpecError

NAME = "nvidia-eagle3"
SIGNATURE = "eagle_config with use_aux_hidden_state, layers under midlayer.* or layers.0.* (NVIDIA Model Optimizer export)"
# ModelOpt trains eagle_ttt_steps=3 and its vLLM export template drafts 3 tokens.
DEFAULT_TOKENS = 3


def matches(source: Source) -> bool:
    """ModelOpt's own eagle_config keys, under either naming."""
    eagle_config = source.config.get("eagle_config")
    named = source.has("layers.0.hidden_norm.weight") or source.any_prefix("midlayer.")
    return isinstance(eagle_config, dict) and "use_aux_hidden_state" in eagle_config and named


def modelopt_default_aux(num_layers: int) -> tuple[int, ...]:
    """ModelOpt's default_eagle_aux_layer_ids (0-based layer outputs) as our layer ids."""
    return tuple(sorted(i + 1 for i in {1, max(0, num_layers // 2 - 1), max(0, num_layers - 4)}))


def convert(source: Source, verifier: VerifierConfig, options: ConvertOptions, name: str = NAME) -> Conversion:
    """ModelOpt export -> ours: layer ids +1, t2d derived from d2t."""
    eagle_config = source.config["eagle_config"]
    where = source.config_path
    if not eagle_config.get("use_aux_hidden_state"):
        raise SpecError(f"{where}: use_aux_hidden_state is false: a ModelOpt EAGLE-1 export, which spec-convert does not support")
    if eagle_config.get("use_last_layernorm") is False:
        raise SpecError(f"{where}: use_last_layernorm is false: vLLM's EAGLE-3 head always applies the final norm")
    if (eagle_config.get("parallel_draft_step") or 1) > 1:
        raise SpecError(f"{where}: parallel_draft_step > 1 (parallel draft heads) has no vLLM EAGLE-3 equivalent")
    n = verifier.lm["num_hidden_layers"]
    recorded = eagle_config.get("eagle_aux_hidden_state_layer_ids")
    facts = Eagle3Facts(
        aux_recorded=tuple(i + 1 for i in recorded) if recorded else None,
        aux_default=modelopt_default_aux(n),
        aux_reason="ModelOpt's default layers {1, n//2-1, n-4} are layer outputs, i.e. layer ids [2, n//2, n-3]",
        norm_before_residual_recorded=None,
        norm_before_residual_default=False,
        norm_before_residual_reason="ModelOpt's EagleModule keeps the raw hidden state as layer 0's residual",
        tokens_recorded=None,
        tokens_default=DEFAULT_TOKENS,
        tokens_reason="ModelOpt trains eagle_ttt_steps=3 and its vLLM export drafts 3 tokens",
        norm_output=False,  # ModelOpt feeds eagle_prenorm_h back
        layer=layer_facts(source.config),
    )
    first_layer = "midlayer." if source.any_prefix("midlayer.") else "layers.0."
    tensors = {rename_midlayer(key): value for key, value in source.tensors.items()}
    layout = Eagle3Layout(first_layer=first_layer)
    conversion = build_eagle3(source, tensors, verifier, options, name, facts, layout, "NVIDIA ModelOpt EagleModule (EAGLE-3)")
    if recorded:
        conversion.notes.append(f"layer ids: ModelOpt's eagle_config records layer outputs {list(recorded)}, which are layer ids {[i + 1 for i in recorded]}")
    return conversion
