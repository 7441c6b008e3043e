"""Checkpoints written by speculators 0.1-0.3 (and NVIDIA's `convert_to_vllm_ckpt.py`, which
writes that layout): the same weights as today, an older config.

What changed since: `transformer_layer_config` used transformers-4 `rope_theta`/`rope_scaling`
and `torch_dtype`; `auto_map` pointed at `eagle3.Eagle3SpeculatorConfig`; the EAGLE-3 norm
variants (`norm_before_fc`, `fc_norm`, `norm_output`) did not exist; `norm_before_residual`
defaulted to false in speculators but vLLM reads a missing one as true; 0.1 recorded no aux
layer ids (vLLM then captures [2, n//2, n-3]). Every one of these is made explicit, with the
value the old code assumed. The old `eagle` type (EAGLE-1/HASS: `fusion_fc`, `transformer.*`)
becomes the EAGLE-1 folder vLLM serves with method "eagle".
"""

from __future__ import annotations

import re

from libspec.algorithms.eagle3.config import rope_parameters
from libspec.convert.common import DEFAULT, Conversion, ConvertOptions, Decision
from libspec.format import checkpoint as ckpt
from libspec.verifier import VerifierConfig
from libspec.convert.eagle3_build import SLIDING_KEYS, Eagle3Facts, build_eagle3, default_aux
from libspec.convert.reference import Eagle3Layout, EagleLayout
from libspec.convert.safeailab_eagle import build_eagle
from libspec.convert.source import Source
from libspec.errors import SpecError

NAME = "speculators-legacy"
SIGNATURE = "speculators_config from speculators 0.1-0.3: speculators_version < 0.4, type eagle, rope_theta/torch_dtype, missing norm flags"
# The speculators defaults of that time.
OLD_TOKENS = 3


def version_tuple(text) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", str(text or ""))[:2]
    return tuple(int(n) for n in numbers) if numbers else ()


def legacy_marks(config: dict) -> list[str]:
    """Why a speculators config is from an old version (empty: it is current)."""
    marks = []
    version = version_tuple(config.get("speculators_version"))
    if version and version < (0, 4):
        marks.append(f"speculators_version {config.get('speculators_version')}")
    if config.get("speculators_model_type") == "eagle":
        marks.append("speculators_model_type eagle (removed from speculators and vLLM)")
    if "torch_dtype" in config and "dtype" not in config:
        marks.append("torch_dtype instead of dtype")
    tl = config.get("transformer_layer_config") or {}
    if "rope_parameters" not in tl and ("rope_theta" in tl or "rope_scaling" in tl):
        marks.append("rope_theta/rope_scaling instead of rope_parameters")
    if config.get("speculators_model_type") == "eagle3" and "norm_before_residual" not in config:
        marks.append("no norm_before_residual")
    if any(str(v).startswith(("eagle3.", "eagle.")) for v in (config.get("auto_map") or {}).values()):
        marks.append("auto_map of speculators 0.1")
    return marks


def matches(source: Source) -> bool:
    config = source.config
    return "speculators_config" in config and config.get("speculators_model_type") in ("eagle3", "eagle") and bool(legacy_marks(config))


def convert(source: Source, verifier: VerifierConfig, options: ConvertOptions, name: str = NAME) -> Conversion:
    config = source.config
    tokens = ckpt.speculative_tokens(config)
    tl = config.get("transformer_layer_config")
    if not isinstance(tl, dict):
        raise SpecError(f"{source.config_path}: transformer_layer_config is missing")
    layer = {
        "num_attention_heads": tl.get("num_attention_heads"),
        "rms_norm_eps": tl.get("rms_norm_eps", 1e-6),
        "rope_parameters": rope_parameters(tl),
        "max_position_embeddings": tl.get("max_position_embeddings"),
        "hidden_act": tl.get("hidden_act", "silu"),
        "target_hidden_size": config.get("target_hidden_size"),
        "rope_source": tl,
        # speculators >= 0.7 trains sliding-window layers; vLLM and upstream both apply them.
        **{key: tl[key] for key in SLIDING_KEYS if key in tl},
    }
    if config["speculators_model_type"] == "eagle":
        conversion = _convert_eagle(source, verifier, options, name, layer, tokens)
    else:
        conversion = _convert_eagle3(source, verifier, options, name, layer, tokens)
    conversion.notes.insert(0, "old speculators config: " + "; ".join(legacy_marks(config)))
    return conversion


def _convert_eagle3(source, verifier, options, name, layer, tokens) -> Conversion:
    config, n = source.config, verifier.lm["num_hidden_layers"]
    recorded = config.get("eagle_aux_hidden_state_layer_ids")
    facts = Eagle3Facts(
        aux_recorded=tuple(recorded) if recorded else None,
        aux_default=default_aux(n),
        aux_reason="the config records no layer ids; vLLM then captures its default [2, n//2, n-3]",
        norm_before_residual_recorded=config.get("norm_before_residual"),
        norm_before_residual_default=False,
        norm_before_residual_reason="speculators < 0.4 defaulted norm_before_residual to false (vLLM would read a missing one as true)",
        tokens_recorded=tokens,
        tokens_default=OLD_TOKENS,
        tokens_reason="speculators' default proposal drafted 3 tokens",
        norm_output=bool(config.get("norm_output", False)),
        layer=layer,
    )
    for key, tensor_name in (("norm_before_fc", "input_norm.weight"), ("fc_norm", "fc_norm.0.weight")):
        if bool(config.get(key, False)) != (tensor_name in source.tensors):
            raise SpecError(f"{source.config_path}: {key} is {config.get(key, False)} but {tensor_name} is {'present' if tensor_name in source.tensors else 'absent'}")
    layout = Eagle3Layout(
        first_layer="layers.0.", fc_norm="fc_norm.0.weight" in source.tensors, input_norm="input_norm.weight" in source.tensors,
        feed_back_normed=facts.norm_output,
    )  # fmt: skip
    conversion = build_eagle3(source, dict(source.tensors), verifier, options, name, facts, layout, "speculators 0.1-0.3 Eagle3Speculator")
    for key in ("norm_before_fc", "fc_norm", "norm_output"):
        if key not in config:
            conversion.decisions.append(Decision(key, False, DEFAULT, "not recorded: the old code had no such variant"))
    return conversion


def _convert_eagle(source, verifier, options, name, layer, tokens) -> Conversion:
    config = source.config
    if config.get("layernorms"):
        raise SpecError(f"{source.config_path}: layernorms is true (embedding_layernorm, pre_lm_head_layernorm): vLLM's EAGLE head has no such norms")
    renames = {"fusion_fc.": "fc.", "transformer.": "layers.0."}
    tensors = {}
    notes = []
    for key, value in source.tensors.items():
        if key == "lm_head.weight":
            notes.append("dropped lm_head: speculators' EAGLE read the verifier's lm_head, which vLLM shares")
            continue
        prefix = next((p for p in renames if key.startswith(p)), None)
        tensors[renames[prefix] + key.removeprefix(prefix) if prefix else key] = value
    if bool(config.get("fusion_bias")) != ("fc.bias" in tensors):
        raise SpecError(f"{source.config_path}: fusion_bias is {config.get('fusion_bias')} but fusion_fc.bias is {'present' if 'fc.bias' in tensors else 'absent'}")
    conversion = build_eagle(
        source, tensors, verifier, options, name, layer, OLD_TOKENS, "speculators' default proposal drafted 3 tokens",
        EagleLayout(fc="fusion_fc", layer_prefix="transformer."), "speculators 0.1-0.3 EagleSpeculator", tokens_recorded=tokens,
    )  # fmt: skip
    conversion.notes.extend(notes)
    return conversion
