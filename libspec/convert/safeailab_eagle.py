"""SafeAILab EAGLE-1 / EAGLE-2 checkpoints and HASS (`eagle/model/cnets1.py`; HArmonizedSS/HASS
`model/cnets_hass.py`, the same inference layout) -> the EAGLE-1 folder vLLM serves with
`method: "eagle"` (libspec/algorithms/eagle/config.py).

Layout: a flat HF Llama config (`bias` says whether `fc` has one, default true; `qkv_bias` for
Qwen2 drafts); weights `fc` over [embedding, feature] (+ `fc.bias`), `layers.{i}.*` where layer 0
has no input_layernorm, sometimes `embed_tokens`. No norm and no lm_head: the verifier's lm_head
reads the draft's output. EAGLE-2 changed only the decoding (dynamic trees), not the weights, so
EAGLE-1 and EAGLE-2 checkpoints are the same; HASS changed only the training.

vLLM's EAGLE head has no fc bias. It is folded exactly into layer 0, which has no input norm:
with h = Wx + b, q/k/v(h) = q/k/v(Wx) + W_{q,k,v} b and the residual h = Wx + b, so q/k/v get
the biases W_{q,k,v} b and o_proj the bias b (vLLM's `attention_bias` flag gives every layer
q/k/v/o biases; later layers get zeros).
"""

from __future__ import annotations

import re

import torch

from libspec.algorithms.eagle import config as eagle
from libspec.algorithms.eagle3.config import rope_parameters
from libspec.convert.common import (
    DERIVED,
    Conversion,
    ConvertOptions,
    Decision,
    choose,
    dtype_name,
    float_dtype,
    spec_tools_record,
    unify_float_dtype,
)
from libspec.verifier import VerifierConfig
from libspec.convert.reference import EagleLayout
from libspec.convert.source import Source
from libspec.errors import SpecError

NAME = "safeailab-eagle"
SIGNATURE = "fc.weight over [embedding, feature] (2 x hidden), layers.0.* without input_layernorm, no lm_head (SafeAILab EAGLE-1/EAGLE-2, HASS)"
ALIASES = ("eagle1", "eagle2", "hass")
# EaModel.from_pretrained drafts depth=7 (SafeAILab); HASS's ea_model uses depth=5.
DEFAULT_TOKENS = {"hass": 5}
LAYER_PART = re.compile(
    r"layers\.(\d+)\.(self_attn\.[qkvo]_proj\.(weight|bias)|mlp\.(gate|up|down)_proj\.weight|(input|post_attention)_layernorm\.weight)"
)


def matches(source: Source) -> bool:
    fc = source.tensors.get("fc.weight")
    return (
        fc is not None
        and fc.dim() == 2
        and fc.shape[1] == 2 * fc.shape[0]
        and source.has("layers.0.self_attn.q_proj.weight")
        and not source.has("layers.0.input_layernorm.weight")
        and not source.any_prefix("midlayer.")
        and "lm_head.weight" not in source.tensors
        and "speculators_config" not in source.config
    )


def convert(source: Source, verifier: VerifierConfig, options: ConvertOptions, name: str = NAME) -> Conversion:
    """SafeAILab/HASS EAGLE-1 -> an EAGLE-1 folder for vLLM's method "eagle"."""
    config = source.config
    recorded_bias = config.get("bias")
    has_bias = "fc.bias" in source.tensors
    if recorded_bias is not None and bool(recorded_bias) != has_bias:
        # cnets1.py builds fc from config["bias"] (default true) and loads with strict=True.
        raise SpecError(f"{source.config_path}: bias is {recorded_bias} but fc.bias is {'present' if has_bias else 'absent'} in the weights")
    layer = {
        "num_attention_heads": config.get("num_attention_heads"),
        "rms_norm_eps": config.get("rms_norm_eps", 1e-6),
        "rope_parameters": rope_parameters(config),
        "max_position_embeddings": config.get("max_position_embeddings"),
        "hidden_act": config.get("hidden_act", "silu"),
    }
    default_tokens = DEFAULT_TOKENS.get(name, 7)
    reason = "HASS's ea_model drafts depth=5 by default" if name == "hass" else "SafeAILab's EaModel drafts depth=7 by default"
    return build_eagle(source, dict(source.tensors), verifier, options, name, layer, default_tokens, reason, EagleLayout(), "SafeAILab EAGLE cnets1.py (EAGLE-1)")


def build_eagle(
    source: Source,
    tensors: dict[str, torch.Tensor],
    verifier: VerifierConfig,
    options: ConvertOptions,
    format_name: str,
    layer: dict,
    default_tokens: int,
    tokens_reason: str,
    layout: EagleLayout,
    reference_name: str,
    tokens_recorded: int | None = None,
) -> Conversion:
    """The spec-tools EAGLE-1 folder for `tensors` (under our names: fc.*, layers.{i}.*, embed_tokens)."""
    where = source.path
    if options.aux_layer_ids is not None or options.norm_before_residual is not None:
        raise SpecError(f"{where}: --layers and --norm-before-residual are EAGLE-3 settings; an EAGLE-1 draft reads the verifier's final hidden state")
    shape = _infer_shape(tensors, layer, where)
    lm = verifier.lm
    if shape["hidden"] != lm["hidden_size"]:
        raise SpecError(f"{where}: the draft's hidden size is {shape['hidden']} but the verifier's is {lm['hidden_size']} (wrong verifier?)")
    if "embed_tokens.weight" in tensors and tensors["embed_tokens.weight"].shape != (lm["vocab_size"], shape["hidden"]):
        raise SpecError(f"{where}: embed_tokens is {list(tensors['embed_tokens.weight'].shape)}, the verifier's vocabulary x hidden is {[lm['vocab_size'], shape['hidden']]} (wrong verifier?)")
    if layer.get("hidden_act", "silu") != "silu":
        raise SpecError(f"{where}: hidden_act {layer.get('hidden_act')!r}: vLLM's EAGLE head uses silu")
    decisions: list[Decision] = []
    conversion = Conversion(eagle.ALGORITHM, {}, tensors, decisions, [])
    dtype = float_dtype(tensors, "fc.weight")
    attention_bias = _fold_fc_bias(tensors, shape, decisions, conversion.notes)
    if attention_bias and dtype.itemsize < 4:
        conversion.derived_rounded_to = dtype  # the folded biases W_qkv·b are stored in the source's 16-bit dtype
    unify_float_dtype(conversion, dtype)
    tokens = choose(decisions, "speculative_tokens", options.speculative_tokens, tokens_recorded, default_tokens, tokens_reason)
    layer_config = {
        "num_hidden_layers": shape["num_layers"],
        "intermediate_size": shape["intermediate"],
        "num_attention_heads": shape["heads"],
        "num_key_value_heads": shape["kv_heads"],
        "head_dim": shape["head_dim"],
        "hidden_act": "silu",
        "rms_norm_eps": layer["rms_norm_eps"],
        "rope_parameters": layer["rope_parameters"],
        "max_position_embeddings": layer.get("max_position_embeddings"),
        "attention_bias": attention_bias,
    }
    if shape["qkv_bias"] and not attention_bias:
        layer_config["qkv_bias"] = True
    conversion.config = eagle.make_config(verifier.config, verifier.name_or_path, layer_config, int(tokens), dtype_name(dtype), spec_tools_record(format_name, source.path, verifier))
    conversion.reference = _reference_builder(source, layout, conversion.config, layer.get("rope_source") or source.config)
    conversion.reference_name = reference_name
    if "embed_tokens.weight" not in tensors:
        conversion.notes.append("the source has no embed_tokens: vLLM shares the verifier's embedding")
    return conversion


def _infer_shape(tensors, layer: dict, where: str) -> dict:
    for name in ("fc.weight", "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight", "layers.0.mlp.gate_proj.weight"):
        if name not in tensors:
            raise SpecError(f"{where}: missing tensor {name} (expected in an EAGLE-1 draft)")
    unknown = [n for n in tensors if n not in ("fc.weight", "fc.bias", "embed_tokens.weight") and not LAYER_PART.fullmatch(n)]
    if unknown:
        raise SpecError(f"{where}: tensor(s) an EAGLE-1 draft does not have (refusing to drop them): {', '.join(sorted(unknown)[:6])}")
    if "layers.0.input_layernorm.weight" in tensors:
        raise SpecError(f"{where}: layer 0 has an input_layernorm, which vLLM's EAGLE head replaces by the identity")
    heads = layer.get("num_attention_heads")
    if not isinstance(heads, int) or heads < 1:
        raise SpecError(f"{where}: the config does not record num_attention_heads")
    hidden = tensors["fc.weight"].shape[0]
    if tensors["fc.weight"].shape[1] != 2 * hidden:
        raise SpecError(f"{where}: fc reads {tensors['fc.weight'].shape[1]} features; EAGLE-1's fc reads [embedding, feature] = 2 x {hidden}")
    q_rows = tensors["layers.0.self_attn.q_proj.weight"].shape[0]
    if q_rows % heads:
        raise SpecError(f"{where}: q_proj has {q_rows} rows, not a multiple of num_attention_heads {heads}")
    head_dim = q_rows // heads
    num_layers = 1 + max(int(LAYER_PART.fullmatch(n).group(1)) for n in tensors if LAYER_PART.fullmatch(n))
    qkv_bias = {f"layers.{i}.self_attn.q_proj.bias" in tensors for i in range(num_layers)}
    if len(qkv_bias) > 1:
        raise SpecError(f"{where}: some layers have q/k/v biases and others do not")
    return {
        "hidden": hidden,
        "heads": heads,
        "head_dim": head_dim,
        "kv_heads": tensors["layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
        "intermediate": tensors["layers.0.mlp.gate_proj.weight"].shape[0],
        "num_layers": num_layers,
        "qkv_bias": qkv_bias.pop(),
    }


def _fold_fc_bias(tensors, shape: dict, decisions: list[Decision], notes: list[str]) -> bool:
    """Fold fc.bias into attention biases (module docstring); True when vLLM's attention_bias must be on."""
    bias = tensors.pop("fc.bias", None)
    if bias is None:
        return False
    if not bool(bias.any()):
        notes.append("fc.bias is all zeros: dropped")
        return False
    b = bias.double()
    for index in range(shape["num_layers"]):
        prefix = f"layers.{index}.self_attn."
        for proj in ("q_proj", "k_proj", "v_proj"):
            weight = tensors[prefix + proj + ".weight"]
            existing = tensors.get(prefix + proj + ".bias", torch.zeros(weight.shape[0], dtype=weight.dtype)).double()
            folded = existing + weight.double() @ b if index == 0 else existing
            tensors[prefix + proj + ".bias"] = folded.to(weight.dtype)
        o_weight = tensors[prefix + "o_proj.weight"]
        tensors[prefix + "o_proj.bias"] = (b if index == 0 else torch.zeros_like(b)).to(o_weight.dtype)
    decisions.append(
        Decision("fc.bias", "folded", DERIVED, "vLLM's EAGLE fc has no bias: layer 0 q/k/v biases += W_qkv·b and o_proj.bias = b (exact: layer 0 has no input norm); attention_bias=true")
    )
    return True


def _reference_builder(source: Source, layout: EagleLayout, config: dict, rope_config: dict):
    from libspec.convert.reference import EagleReference, Heads, ReferenceWeights, Rope

    def build(borrowed) -> EagleReference:
        # EAGLE-1 always reads the verifier's head: the source's tensors never supply one
        weights = ReferenceWeights({name: t for name, t in source.tensors.items() if name != "lm_head.weight"}, borrowed)
        shape = Heads(config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"], config["rms_norm_eps"])
        return EagleReference(weights, layout, shape, Rope(rope_config, config["head_dim"]), config["num_hidden_layers"])

    return build
