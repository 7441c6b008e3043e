"""z-lab DFlash drafts (github.com/z-lab/dflash, `dflash/model.py`) -> the speculators `dflash`
checkpoint vLLM 0.33 serves (libspec/algorithms/dflash/config.py).

Layout: a Qwen3 config with `architectures: ["DFlashDraftModel"]`, `block_size`,
`num_target_layers` and `dflash_config: {mask_token_id, target_layer_ids}`; weights `fc`,
`hidden_norm`, `norm` and Qwen3 layers `layers.{i}.*` (q_norm/k_norm). No embedding and no
lm_head: the verifier's are used. `target_layer_ids` index the verifier's
`output_hidden_states` after the embedding (`hidden_states[id + 1]`), so our layer id is id + 1 —
except id n-1, whose HF entry is *after* the final norm and has no layer-id equivalent.
The draft attends without a causal mask in every layer (is_causal=False), which the speculators
config expresses as `sliding_window_non_causal: true`.
"""

from __future__ import annotations

import re

import torch

from libspec.algorithms.dflash import config as dflash
from libspec.algorithms.eagle3.config import rope_parameters
from libspec.convert.common import (
    Conversion,
    ConvertOptions,
    Decision,
    DEFAULT,
    choose,
    dtype_name,
    float_dtype,
    spec_tools_record,
    unify_float_dtype,
)
from libspec.verifier import VerifierConfig
from libspec.convert.source import Source
from libspec.errors import SpecError

NAME = "zlab-dflash"
SIGNATURE = "dflash_config with target_layer_ids/mask_token_id, block_size, fc + hidden_norm + Qwen3 layers (z-lab DFlash)"
LAYER_PART = re.compile(
    r"layers\.(\d+)\.(self_attn\.[qkvo]_proj\.(weight|bias)|self_attn\.[qk]_norm\.weight|mlp\.(gate|up|down)_proj\.weight|(input|post_attention)_layernorm\.weight)"
)


def matches(source: Source) -> bool:
    config = source.config
    marked = isinstance(config.get("dflash_config"), dict) or "DFlashDraftModel" in (config.get("architectures") or [])
    return marked and "speculators_config" not in config and source.has("fc.weight", "hidden_norm.weight")


def zlab_target_layer_ids(num_target_layers: int, num_draft_layers: int) -> list[int]:
    """z-lab's build_target_layer_ids: one layer per draft layer, spread over [1, n-3]."""
    if num_draft_layers == 1:
        return [num_target_layers // 2]
    start, end = 1, num_target_layers - 3
    return [int(round(start + i * (end - start) / (num_draft_layers - 1))) for i in range(num_draft_layers)]


def convert(source: Source, verifier: VerifierConfig, options: ConvertOptions, name: str = NAME) -> Conversion:
    """z-lab DFlash -> speculators dflash: layer ids +1, explicit non-causal block, verifier's head."""
    if options.norm_before_residual is not None:
        raise SpecError(f"{source.path}: --norm-before-residual is an EAGLE-3 setting; DFlash has no such variant")
    config = source.config
    block_size, mask_token_id = _block_and_mask(config, source.config_path)
    shape = _infer_shape(source.tensors, config, source.config_path)
    _check_fit(source.config_path, config, shape, mask_token_id, verifier.lm)

    conversion = Conversion(dflash.ALGORITHM, {}, dict(source.tensors))
    decisions = conversion.decisions
    target_ids, aux = _aux_layer_ids(source, shape, options, decisions, verifier.lm["num_hidden_layers"])
    tokens = choose(decisions, "speculative_tokens", options.speculative_tokens, None, block_size - 1, "z-lab's dflash_generate drafts block_size - 1 tokens after the anchor")
    decisions.append(Decision("sliding_window_non_causal", True, DEFAULT, "z-lab's DFlash attends without a causal mask in every layer (is_causal=False)"))

    dtype = float_dtype(conversion.tensors, "fc.weight")
    unify_float_dtype(conversion, dtype)
    choices = dflash.DFlashOptions(aux_layer_ids=aux, block_size=block_size, mask_token_id=mask_token_id, speculative_tokens=int(tokens))
    record = spec_tools_record(name, source.path, verifier)
    conversion.config = dflash.make_config(verifier.config, verifier.name_or_path, _draft_layer(config, shape, verifier.lm), choices, dtype_name(dtype), record)
    conversion.notes.append(f"layer ids: z-lab's target_layer_ids {list(target_ids)} index hidden_states[id + 1], i.e. layer ids {[i + 1 for i in target_ids]}")
    conversion.notes.append("no embed_tokens or lm_head (as in the source): vLLM shares the verifier's")
    if "sliding_attention" in (config.get("layer_types") or []):
        conversion.notes.append("sliding-window layers: the numerical check uses a context shorter than the window")
    conversion.reference = _reference_builder(source, conversion.config)
    conversion.reference_name = "z-lab dflash/model.py (DFlashDraftModel)"
    return conversion


def _block_and_mask(config: dict, where) -> tuple[int, int]:
    """block_size (top level in older z-lab configs, in dflash_config in newer ones) and the mask token."""
    extra = config.get("dflash_config") or {}
    block_size = config.get("block_size") or extra.get("block_size")
    if not isinstance(block_size, int) or block_size < 2:
        raise SpecError(f"{where}: block_size is missing (looked at the top level and in dflash_config)")
    mask_token_id = extra.get("mask_token_id", config.get("mask_token_id"))
    if not isinstance(mask_token_id, int):
        raise SpecError(f"{where}: dflash_config.mask_token_id is missing; vLLM needs the mask token to fill the block")
    return block_size, mask_token_id


def _check_fit(where, config: dict, shape: dict, mask_token_id: int, lm: dict) -> None:
    """Refuse a draft made for another verifier (z-lab records its layer count and vocabulary)."""
    n = lm["num_hidden_layers"]
    if config.get("num_target_layers") not in (None, n):
        raise SpecError(f"{where}: num_target_layers is {config['num_target_layers']} but the verifier has {n} layers (wrong verifier?)")
    if config.get("vocab_size") not in (None, lm["vocab_size"]):
        raise SpecError(f"{where}: vocab_size is {config['vocab_size']} but the verifier's is {lm['vocab_size']} (wrong verifier?)")
    if shape["hidden"] != lm["hidden_size"]:
        raise SpecError(f"{where}: the draft's hidden size is {shape['hidden']} but the verifier's is {lm['hidden_size']} (wrong verifier?)")
    if not 0 <= mask_token_id < lm["vocab_size"]:
        raise SpecError(f"{where}: mask_token_id {mask_token_id} is outside the verifier's vocabulary of {lm['vocab_size']}")


def _aux_layer_ids(source: Source, shape: dict, options: ConvertOptions, decisions: list[Decision], n: int) -> tuple[list[int], tuple[int, ...]]:
    """z-lab's target_layer_ids (recorded, else its default) and our layer ids (each + 1, or --layers)."""
    recorded = (source.config.get("dflash_config") or {}).get("target_layer_ids")
    target_ids = list(recorded) if recorded else zlab_target_layer_ids(source.config.get("num_target_layers") or n, shape["num_layers"])
    if options.aux_layer_ids is None and any(i + 1 >= n for i in target_ids):
        raise SpecError(f"{source.config_path}: target_layer_ids {target_ids} include layer {n - 1}, which z-lab reads after the verifier's final norm; vLLM captures no such state (pass --layers to choose others)")
    ids = tuple(i + 1 for i in target_ids)
    if recorded:
        aux = choose(decisions, "aux_hidden_state_layer_ids", options.aux_layer_ids, ids, None, "")
    else:
        aux = choose(decisions, "aux_hidden_state_layer_ids", options.aux_layer_ids, None, ids, "z-lab's build_target_layer_ids (not recorded), each + 1")
    aux = tuple(aux)
    if list(aux) != sorted(set(aux)) or min(aux) < 1 or max(aux) > n:
        raise SpecError(f"{source.path}: aux layer ids {list(aux)} must be ascending, distinct and within [1, {n}]")
    if len(aux) * shape["hidden"] != source.tensors["fc.weight"].shape[1]:
        raise SpecError(f"{source.path}: {len(aux)} aux layers but fc reads {source.tensors['fc.weight'].shape[1] // shape['hidden']} hidden states")
    return target_ids, aux


def _draft_layer(config: dict, shape: dict, lm: dict) -> dict:
    """The draft's Qwen3 decoder config: the source's, with shapes read from the tensors."""
    layer = dict(config)
    layer.update(
        {
            "hidden_size": shape["hidden"],
            "num_attention_heads": config["num_attention_heads"],
            "num_key_value_heads": shape["kv_heads"],
            "head_dim": shape["head_dim"],
            "intermediate_size": shape["intermediate"],
            "num_hidden_layers": shape["num_layers"],
            "hidden_act": "silu",
            "rms_norm_eps": config.get("rms_norm_eps", 1e-6),
            "rope_parameters": rope_parameters(config),
            "max_position_embeddings": max(config.get("max_position_embeddings") or 0, lm.get("max_position_embeddings") or 0) or 4096,
        }
    )
    return layer


def _infer_shape(tensors, config: dict, where: str) -> dict:
    for name in ("fc.weight", "hidden_norm.weight", "norm.weight", "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight", "layers.0.mlp.gate_proj.weight"):
        if name not in tensors:
            raise SpecError(f"{where}: missing tensor {name} (expected in a DFlash draft)")
    unknown = [n for n in tensors if n not in ("fc.weight", "hidden_norm.weight", "norm.weight") and not LAYER_PART.fullmatch(n)]
    if unknown:
        raise SpecError(f"{where}: tensor(s) a z-lab DFlash draft does not have (refusing to drop them): {', '.join(sorted(unknown)[:6])}")
    heads = config.get("num_attention_heads")
    if not isinstance(heads, int) or heads < 1:
        raise SpecError(f"{where}: the config does not record num_attention_heads")
    q_rows = tensors["layers.0.self_attn.q_proj.weight"].shape[0]
    if q_rows % heads:
        raise SpecError(f"{where}: q_proj has {q_rows} rows, not a multiple of num_attention_heads {heads}")
    if bool(config.get("attention_bias")) != ("layers.0.self_attn.q_proj.bias" in tensors):
        raise SpecError(f"{where}: attention_bias is {config.get('attention_bias')} but the weights disagree")
    if config.get("hidden_act", "silu") != "silu":
        raise SpecError(f"{where}: hidden_act {config.get('hidden_act')!r}: DFlash layers use silu")
    head_dim = q_rows // heads
    return {
        "hidden": tensors["fc.weight"].shape[0],
        "head_dim": head_dim,
        "kv_heads": tensors["layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
        "intermediate": tensors["layers.0.mlp.gate_proj.weight"].shape[0],
        "num_layers": 1 + max(int(LAYER_PART.fullmatch(n).group(1)) for n in tensors if LAYER_PART.fullmatch(n)),
    }


def _reference_builder(source: Source, config: dict):
    from libspec.convert.reference import DFlashReference, Heads, ReferenceWeights, Rope

    tl = config["transformer_layer_config"]

    def build(borrowed) -> DFlashReference:
        weights = ReferenceWeights(source.tensors, borrowed)
        shape = Heads(tl["num_attention_heads"], tl["num_key_value_heads"], tl["head_dim"], tl["rms_norm_eps"])
        return DFlashReference(weights, tl["num_hidden_layers"], shape, Rope(source.config, tl["head_dim"]))

    return build
