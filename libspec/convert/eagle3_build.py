"""Building an EAGLE-3 checkpoint from any EAGLE-3 source once its names are ours.

The four EAGLE-3 source formats (SafeAILab, SpecForge, ModelOpt, old speculators) differ in
names and in what their configs record; the draft itself is the same. Each converter renames
the tensors and says what its source records and assumes (`Eagle3Facts`); this module infers
the shapes from the tensors, checks them against the verifier, settles every option and writes
the config with libspec.algorithms.eagle3.config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import torch

from libspec.algorithms.eagle3 import config as eagle3
from libspec.convert.common import (
    DERIVED,
    RECORDED,
    Conversion,
    ConvertOptions,
    Decision,
    choose,
    dtype_name,
    float_dtype,
    spec_tools_record,
    t2d_from_d2t,
    unify_float_dtype,
)
from libspec.verifier import VerifierConfig, verifier_weight_file
from libspec.convert.reference import Eagle3Layout
from libspec.convert.source import Source
from libspec.errors import SpecError

LAYER_TENSOR = re.compile(r"layers\.(\d+)\.(.+)")
# Per-layer attention kind and window: vLLM (LlamaAttention, Qwen3Eagle3 layers) and upstream
# speculators (Eagle3DraftModel.sliding_window_indices) both apply them, so they travel as recorded.
SLIDING_KEYS = ("layer_types", "sliding_window", "use_sliding_window")
LAYER_PARTS = {
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    "input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_norm.weight", "self_attn.k_norm.weight",
}  # fmt: skip


@dataclass(frozen=True)
class Eagle3Facts:
    """What one EAGLE-3 source records and what its code assumes when it records nothing."""

    aux_recorded: tuple[int, ...] | None
    aux_default: tuple[int, ...]
    aux_reason: str
    norm_before_residual_recorded: bool | None
    norm_before_residual_default: bool
    norm_before_residual_reason: str
    tokens_recorded: int | None
    tokens_default: int
    tokens_reason: str
    norm_output: bool = False  # in vLLM's sense: the next step reads norm(h)
    # num_attention_heads, rms_norm_eps, rope_parameters, max_position_embeddings, hidden_act, and
    # the SLIDING_KEYS of a source whose own code applies them (speculators configs)
    layer: dict = field(default_factory=dict)


def rename_midlayer(name: str) -> str:
    """SafeAILab, SpecForge and ModelOpt call the draft's one decoder layer midlayer.*; ours is layers.0.*."""
    return "layers.0." + name.removeprefix("midlayer.") if name.startswith("midlayer.") else name


def default_aux(num_layers: int) -> tuple[int, ...]:
    """EAGLE-3's [2, n//2, n-3] as the reference code captures them (no clamping)."""
    return (2, num_layers // 2, num_layers - 3)


def build_eagle3(
    source: Source,
    tensors: dict[str, torch.Tensor],
    verifier: VerifierConfig,
    options: ConvertOptions,
    format_name: str,
    facts: Eagle3Facts,
    layout: Eagle3Layout,
    reference_name: str,
) -> Conversion:
    """The spec-tools EAGLE-3 checkpoint for `tensors` (already under our names); `layout` says
    how the source's own forward reads its original tensors (for the numerical check)."""
    conversion = Conversion("eagle3", {}, dict(tensors))
    tensors, decisions = conversion.tensors, conversion.decisions
    _borrow_lm_head(tensors, verifier, decisions, source.path)
    shape = _infer_shape(tensors, facts.layer, source.path)
    _check_fit(source.path, shape, facts.layer, tensors, verifier.lm)
    _settle_vocab_maps(tensors, verifier.lm["vocab_size"], decisions, conversion.notes, source.path)

    source_aux = tuple(choose(decisions, "aux_layer_ids", options.aux_layer_ids, facts.aux_recorded, facts.aux_default, facts.aux_reason))
    aux = _ascending_aux(source_aux, tensors, shape["hidden"], decisions, source.path)
    if max(aux) > verifier.lm["num_hidden_layers"] or min(aux) < 0:
        raise SpecError(f"{source.path}: aux layer ids {list(aux)} are outside the verifier's layers [0, {verifier.lm['num_hidden_layers']}]; pass --layers")
    norm_before_residual = bool(
        choose(
            decisions, "norm_before_residual", options.norm_before_residual, facts.norm_before_residual_recorded,
            facts.norm_before_residual_default, facts.norm_before_residual_reason,
        )
    )  # fmt: skip
    tokens = int(choose(decisions, "speculative_tokens", options.speculative_tokens, facts.tokens_recorded, facts.tokens_default, facts.tokens_reason))

    dtype = float_dtype(tensors, "fc.weight")
    unify_float_dtype(conversion, dtype)
    eagle3_options = eagle3.Eagle3Options(
        aux_layer_ids=aux,
        num_layers=shape["num_layers"],
        layer_style=shape["style"],
        draft_vocab_size=tensors["lm_head.weight"].shape[0],
        norm_before_residual=norm_before_residual,
        norm_before_fc="input_norm.weight" in tensors,
        fc_norm="fc_norm.0.weight" in tensors,
        norm_output=facts.norm_output,
        speculative_tokens=tokens,
    )
    record = spec_tools_record(format_name, source.path, verifier)
    conversion.config = eagle3.make_config(verifier.config, verifier.name_or_path, eagle3_options, dtype_name(dtype), record)
    conversion.config["transformer_layer_config"].update(_draft_layer(shape, facts.layer, verifier.lm))
    _carry_sliding_window(conversion, facts.layer, shape["num_layers"], source.path)
    layout = replace(layout, num_layers=shape["num_layers"], norm_before_residual=norm_before_residual)
    conversion.reference = reference_builder(source, layout, conversion, source_aux, facts.layer.get("rope_source") or source.config)
    conversion.reference_name = reference_name
    if "embed_tokens.weight" not in tensors:
        conversion.notes.append("the source has no embed_tokens: vLLM shares the verifier's embedding")
    return conversion


def _borrow_lm_head(tensors, verifier: VerifierConfig, decisions, where: str) -> None:
    """A full-vocabulary source may leave lm_head to the verifier; our format stores it (SPEC.md §11.2)."""
    if "lm_head.weight" in tensors or "d2t" in tensors:
        return
    found = verifier_weight_file(verifier, "lm_head.weight")
    if found is None and verifier.config.get("tie_word_embeddings"):
        found = verifier_weight_file(verifier, "embed_tokens.weight")
    head = None if found is None else found[0].read(found[1])  # a view on the verifier's file, read as it is written out
    if head is None:
        raise SpecError(f"{where}: no lm_head (the source uses the verifier's); name a local verifier folder with its weights so it can be copied")
    tensors["lm_head.weight"] = head
    decisions.append(Decision("lm_head.weight", list(head.shape), DERIVED, "the source reads the verifier's lm_head; copied from the verifier's weights"))


def _check_fit(where: str, shape: dict, layer: dict, tensors, lm: dict) -> None:
    """Refuse what the format cannot express and a source made for another verifier."""
    if layer.get("hidden_act", "silu") != "silu":
        raise SpecError(f"{where}: hidden_act {layer.get('hidden_act')!r}: EAGLE-3 drafts in vLLM use silu")
    if layer.get("target_hidden_size") not in (None, shape["hidden"]):
        raise SpecError(f"{where}: target_hidden_size {layer['target_hidden_size']} differs from the draft's hidden size {shape['hidden']}; spec-tools' EAGLE-3 format needs them equal")
    if shape["hidden"] != lm["hidden_size"]:
        raise SpecError(f"{where}: the draft's hidden size is {shape['hidden']} but the verifier's is {lm['hidden_size']} (wrong verifier?)")
    for name, what in (("t2d", "t2d"), ("embed_tokens.weight", "embed_tokens")):
        if name in tensors and tensors[name].shape[0] != lm["vocab_size"]:
            raise SpecError(f"{where}: the source's {what} covers a vocabulary of {tensors[name].shape[0]}, the verifier's has {lm['vocab_size']} (wrong verifier?)")


def _carry_sliding_window(conversion: Conversion, layer: dict, num_layers: int, where: str) -> None:
    """Keep the source's sliding-window layers: dropping them would make vLLM attend to the whole context."""
    carried = {key: layer[key] for key in SLIDING_KEYS if layer.get(key) is not None}
    if not carried:
        return
    layer_types = carried.get("layer_types")
    if layer_types is not None and len(layer_types) != num_layers:
        raise SpecError(f"{where}: layer_types lists {len(layer_types)} layers but the draft has {num_layers}")
    conversion.config["transformer_layer_config"].update(carried)
    conversion.decisions.append(Decision(", ".join(carried), [carried[key] for key in carried], RECORDED, "recorded in the source"))


def _draft_layer(shape: dict, layer: dict, lm: dict) -> dict:
    """The draft's own decoder fields (make_config starts from the verifier's)."""
    return {
        "intermediate_size": shape["intermediate"],
        "num_attention_heads": shape["heads"],
        "num_key_value_heads": shape["kv_heads"],
        "head_dim": shape["head_dim"],
        "hidden_act": "silu",
        "rms_norm_eps": shape["eps"],
        "rope_parameters": layer["rope_parameters"],
        # vLLM raises it to the verifier's context anyway; never below the verifier's.
        "max_position_embeddings": max(layer.get("max_position_embeddings") or 0, lm.get("max_position_embeddings") or 0) or 4096,
    }


def _infer_shape(tensors: dict[str, torch.Tensor], layer: dict, where: str) -> dict:
    """Decoder shape from the tensors themselves (configs of some sources omit or contradict it)."""
    for name in ("fc.weight", "norm.weight", "lm_head.weight", "layers.0.hidden_norm.weight", "layers.0.self_attn.q_proj.weight"):
        if name not in tensors:
            raise SpecError(f"{where}: missing tensor {name} (expected in an EAGLE-3 draft)")
    unknown = [n for n in tensors if not _known_eagle3_name(n)]
    if unknown:
        raise SpecError(f"{where}: tensor(s) an EAGLE-3 draft does not have (refusing to drop them): {', '.join(sorted(unknown)[:6])}")
    hidden = tensors["fc.weight"].shape[0]
    heads = layer.get("num_attention_heads")
    if not isinstance(heads, int) or heads < 1:
        raise SpecError(f"{where}: the config does not record num_attention_heads")
    q_rows, q_cols = tensors["layers.0.self_attn.q_proj.weight"].shape
    if q_cols != 2 * hidden:
        raise SpecError(f"{where}: layer 0 q_proj reads {q_cols} features, an EAGLE-3 layer 0 reads 2 x {hidden}")
    if q_rows % heads:
        raise SpecError(f"{where}: q_proj has {q_rows} rows, not a multiple of num_attention_heads {heads}")
    head_dim = q_rows // heads
    kv_heads = tensors["layers.0.self_attn.k_proj.weight"].shape[0] // head_dim
    num_layers = 1 + max(int(LAYER_TENSOR.match(n).group(1)) for n in tensors if LAYER_TENSOR.match(n))
    return {
        "hidden": hidden,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "intermediate": tensors["layers.0.mlp.gate_proj.weight"].shape[0],
        "num_layers": num_layers,
        "style": "qwen3" if "layers.0.self_attn.q_norm.weight" in tensors else "llama",
        "eps": layer.get("rms_norm_eps", 1e-6),
    }


def _known_eagle3_name(name: str) -> bool:
    if name in ("fc.weight", "norm.weight", "lm_head.weight", "embed_tokens.weight", "d2t", "t2d", "input_norm.weight", "layers.0.hidden_norm.weight"):
        return True
    if re.fullmatch(r"fc_norm\.\d+\.weight", name):
        return True
    match = LAYER_TENSOR.fullmatch(name)
    return bool(match) and match.group(2) in LAYER_PARTS


def _settle_vocab_maps(tensors, vocab: int, decisions, notes, where: str) -> None:
    """Keep d2t/t2d only for a reduced vocabulary (SPEC.md §11.2); derive t2d when only d2t is stored."""
    draft_vocab = tensors["lm_head.weight"].shape[0]
    if draft_vocab > vocab:
        raise SpecError(f"{where}: lm_head has {draft_vocab} rows, more than the verifier's vocabulary {vocab}")
    if draft_vocab == vocab:
        dropped = [n for n in ("d2t", "t2d") if n in tensors]
        for name in dropped:
            del tensors[name]
        if dropped:
            notes.append(f"dropped {' and '.join(dropped)}: the draft vocabulary is the verifier's whole vocabulary")
        return
    if "d2t" not in tensors:
        raise SpecError(f"{where}: lm_head covers {draft_vocab} of {vocab} tokens but there is no d2t to map them")
    tensors["d2t"] = tensors["d2t"].to(torch.int64)
    if len(tensors["d2t"]) != draft_vocab:
        raise SpecError(f"{where}: d2t has {len(tensors['d2t'])} entries for a draft vocabulary of {draft_vocab}")
    if "t2d" not in tensors:
        tensors["t2d"] = t2d_from_d2t(tensors["d2t"], vocab)
        decisions.append(Decision("t2d", f"bool[{vocab}]", DERIVED, "the source stores only d2t; t2d marks the verifier ids it maps to"))
    else:
        tensors["t2d"] = tensors["t2d"].to(torch.bool)


def _ascending_aux(aux: tuple[int, ...], tensors, hidden: int, decisions, where: str) -> tuple[int, ...]:
    """vLLM concatenates aux states in ascending id order; reorder fc's column blocks to match."""
    num_aux = tensors["fc.weight"].shape[1] // hidden
    if len(aux) != num_aux:
        raise SpecError(f"{where}: {len(aux)} aux layer ids {list(aux)} but fc reads {num_aux} hidden states; pass --layers with {num_aux} ids")
    if len(set(aux)) != len(aux):
        raise SpecError(f"{where}: aux layer ids {list(aux)} repeat a layer (the verifier is too shallow for the source's default); pass --layers")
    order = sorted(range(num_aux), key=lambda i: aux[i])
    if order == list(range(num_aux)):
        return aux
    blocks = tensors["fc.weight"].split(hidden, dim=1)
    tensors["fc.weight"] = torch.cat([blocks[i] for i in order], dim=1)
    if "fc_norm.0.weight" in tensors:
        norms = [tensors.pop(f"fc_norm.{i}.weight") for i in range(num_aux)]
        tensors.update({f"fc_norm.{j}.weight": norms[i] for j, i in enumerate(order)})
    if "input_norm.weight" in tensors:
        chunks = tensors["input_norm.weight"].split(hidden)
        tensors["input_norm.weight"] = torch.cat([chunks[i] for i in order])
    ascending = tuple(aux[i] for i in order)
    decisions.append(Decision("fc column order", list(ascending), DERIVED, f"the source concatenates layers {list(aux)}; vLLM concatenates them in ascending order, so fc's column blocks were reordered"))
    return ascending


def layer_facts(config: dict) -> dict:
    """The decoder fields an EAGLE-3 source config records (flat HF Llama style)."""
    return {
        "num_attention_heads": config.get("num_attention_heads"),
        "rms_norm_eps": config.get("rms_norm_eps", 1e-6),
        "rope_parameters": eagle3.rope_parameters(config),
        "max_position_embeddings": config.get("max_position_embeddings"),
        "hidden_act": config.get("hidden_act", "silu"),
        "target_hidden_size": config.get("target_hidden_size"),
        "rope_source": config,  # where the reference reads RoPE settings the source's way
    }


def reference_builder(source: Source, layout, conversion: Conversion, source_aux: tuple[int, ...], rope_config: dict):
    """A function making the source's own EAGLE-3 forward (reference.py) over its original names;
    `rope_config` is the source config part holding its RoPE fields."""
    from libspec.convert.reference import Eagle3Reference, Heads, ReferenceWeights, Rope

    tl = conversion.config["transformer_layer_config"]
    ascending = sorted(source_aux)
    source_order = [ascending.index(layer_id) for layer_id in source_aux]  # reference's block i = ascending block source_order[i]

    def build(borrowed) -> Eagle3Reference:
        weights = ReferenceWeights(source.tensors, borrowed)
        shape = Heads(tl["num_attention_heads"], tl["num_key_value_heads"], tl["head_dim"], tl["rms_norm_eps"])
        return Eagle3Reference(weights, layout, shape, Rope(rope_config, tl["head_dim"]), len(source_aux), source_order)

    return build
