"""EAGLE-3 drafts: the checkpoint config as vLLM and upstream speculators read it, and its weights.

The draft: `fc` projects the concatenated verifier hidden states of the aux layers to hidden size;
decoder layer 0 attends over [embedding, hidden] (2x hidden input, plus `hidden_norm`); further
layers are standard; `norm` then `lm_head` over the (possibly reduced) draft vocabulary, whose ids
map to verifier ids by `target = draft + d2t[draft]`.
"""

from __future__ import annotations

from dataclasses import dataclass

from libspec.errors import SpecError
from libspec.verifier import text_config
from libspec.serving import verifier_problem

ALGORITHM = "eagle3"
# vLLM picks the draft class from transformer_layer_config.model_type and rejects any other.
VLLM_ARCHITECTURES = {"llama": "Eagle3LlamaForCausalLM", "qwen3": "Eagle3Qwen3ForCausalLM"}
# What upstream speculators 0.9.0 writes; neither vLLM nor upstream's loader reads it.
ARCHITECTURE = "Eagle3Speculator"
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


@dataclass(frozen=True)
class TensorSpec:
    """One weight a config implies: its shape, element kind and whether it must be present."""

    shape: tuple[int, ...]
    kind: str  # "float" (the checkpoint's float dtype), "int64" or "bool"
    required: bool = True


@dataclass(frozen=True)
class Eagle3Options:
    """The choices that shape an EAGLE-3 draft (recorded in its config.json)."""

    aux_layer_ids: tuple[int, ...]
    num_layers: int = 1
    layer_style: str = "llama"
    draft_vocab_size: int | None = None  # None: the verifier's full vocabulary
    norm_before_residual: bool = True
    norm_before_fc: bool = False
    fc_norm: bool = False
    norm_output: bool = False
    speculative_tokens: int = 3


# With `eagle_aux_hidden_state_layer_ids: null` (what upstream's EAGLE-3 converter writes) both
# consumers capture the verifier's [2, n//2, n-3] and size fc for these 3 hidden states: vLLM in
# the verifier's get_eagle3_default_aux_hidden_state_layers (model_executor/models/interfaces.py,
# used by gpu_model_runner when the draft config has no ids; the Llama head reads
# num_aux_hidden_states, else 3), upstream in models/utils.resolve_target_layer_ids (which refuses
# a default that is not 3 distinct layers in [0, n]; Eagle3DraftModel sizes fc for 3).
NUM_DEFAULT_AUX = 3


def verifier_default_aux_layer_ids(num_verifier_layers: int) -> list[int]:
    """The layers vLLM and upstream capture when the ids are null: [2, n//2, n-3], unclamped."""
    n = num_verifier_layers
    return [2, n // 2, n - 3]


def num_aux_layers(config: dict) -> int:
    """How many verifier hidden states `fc` reads: one per recorded id, or the default's 3 when null."""
    ids = config.get("eagle_aux_hidden_state_layer_ids")
    return len(ids) if isinstance(ids, list) and ids else NUM_DEFAULT_AUX


def aux_layer_ids(config: dict, verifier_layers: int | None = None) -> list[int] | None:
    """The verifier layers the draft runs on: its recorded ids, else (null) the verifier's default;
    None when they are null and the verifier's layer count is not known."""
    ids = config.get("eagle_aux_hidden_state_layer_ids")
    if isinstance(ids, list) and ids:
        return list(ids)
    return None if verifier_layers is None else verifier_default_aux_layer_ids(verifier_layers)


def _default_aux_problem(num_verifier_layers: int) -> str | None:
    """Why the verifier's default layers cannot serve (upstream refuses them; vLLM captures fewer states than fc reads)."""
    n = num_verifier_layers
    ids = verifier_default_aux_layer_ids(n)
    if len(set(ids)) == len(ids) and min(ids) >= 0 and max(ids) <= n:
        return None
    return (
        f"eagle_aux_hidden_state_layer_ids is null, so vLLM and upstream take the verifier's default [2, n//2, n-3] = {ids} "
        f"for its {n} layers: not {len(ids)} distinct layers in [0, {n}] (upstream refuses to load it, vLLM would capture "
        "fewer hidden states than fc reads); write the ids explicitly"
    )


def sliding_window_warning(layer_config: dict) -> str | None:
    """vLLM and upstream restrict `sliding_attention` layers to the last `sliding_window` tokens;
    spec-tools' own draft models attend to the whole context. None when no layer slides."""
    sliding = [i for i, kind in enumerate(layer_config.get("layer_types") or []) if kind == "sliding_attention"]
    window = layer_config.get("sliding_window")
    if not sliding or not isinstance(window, int):
        return None
    return (
        f"transformer_layer_config: draft layer(s) {sliding} use sliding-window attention over {window} tokens, which vLLM and "
        "upstream apply; spec-tools' own engine (spec-bench, spec-convert's logit check) does not model the window and "
        f"attends to the whole context, so its numbers can differ from vLLM's on contexts longer than {window} tokens"
    )


def default_aux_layer_ids(num_hidden_layers: int) -> list[int]:
    """EAGLE-3's default aux layers [2, n//2, n-3] (vLLM's and upstream's), made valid for tiny n."""
    n = num_hidden_layers
    return sorted({min(max(i, 1), n) for i in (2, n // 2, n - 3)})


def draft_layer_config(verifier_config: dict, num_layers: int, style: str, num_aux: int) -> dict:
    """The draft's decoder config (`transformer_layer_config`), derived from the verifier's."""
    lm = text_config(verifier_config)
    hidden, heads = lm["hidden_size"], lm["num_attention_heads"]
    is_moe = any(lm.get(key) for key in MOE_KEYS)
    return {
        "model_type": style,
        "vocab_size": lm["vocab_size"],
        "hidden_size": hidden,
        # MoE verifiers list a per-expert size; a dense draft layer wants a dense width.
        "intermediate_size": 3 * hidden if is_moe else lm["intermediate_size"],
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": lm.get("num_key_value_heads") or heads,
        "head_dim": lm.get("head_dim") or hidden // heads,
        "hidden_act": "silu",
        "max_position_embeddings": lm.get("max_position_embeddings", 4096),
        "rms_norm_eps": lm.get("rms_norm_eps", 1e-6),
        "initializer_range": lm.get("initializer_range", 0.02),
        "rope_parameters": rope_parameters(lm),
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        # vLLM's Llama EAGLE-3 head sizes `fc` from this key alone (default 3), not from the ids.
        "num_aux_hidden_states": num_aux,
    }


def rope_parameters(lm: dict) -> dict:
    """The verifier's RoPE settings in transformers 5 form (`rope_parameters`)."""
    params = lm.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        return dict(params)
    params = {"rope_type": "default", "rope_theta": lm.get("rope_theta", 10000.0)}
    if isinstance(lm.get("rope_scaling"), dict):
        scaling = dict(lm["rope_scaling"])
        scaling["rope_type"] = scaling.pop("type", scaling.get("rope_type", "default"))
        params.update(scaling)
    return params


def make_config(
    verifier_config: dict,
    verifier_name_or_path: str,
    options: Eagle3Options,
    dtype: str = "float32",
    spec_tools: dict | None = None,
) -> dict:
    """A complete config.json for an EAGLE-3 draft of the given verifier."""
    lm = text_config(verifier_config)
    aux = list(options.aux_layer_ids)
    vocab = lm["vocab_size"]
    config = {
        "architectures": [ARCHITECTURE],
        "speculators_model_type": ALGORITHM,
        "speculators_version": "0.9.0",  # the upstream format version this layout follows
        "speculators_config": {
            "algorithm": ALGORITHM,
            "default_proposal_method": "greedy",
            "proposal_methods": [
                {
                    "proposal_type": "greedy",
                    "speculative_tokens": options.speculative_tokens,
                    "verifier_accept_k": 1,
                    "accept_tolerance": 0.0,
                }
            ],
            "verifier": {
                "name_or_path": verifier_name_or_path,
                "architectures": list(verifier_config.get("architectures") or []),
            },
        },
        "draft_vocab_size": options.draft_vocab_size or vocab,
        # Always explicit: vLLM defaults a missing norm_before_residual to True, upstream to False.
        "norm_before_residual": options.norm_before_residual,
        "norm_before_fc": options.norm_before_fc,
        "fc_norm": options.fc_norm,
        "norm_output": options.norm_output,
        "embed_requires_grad": False,
        "target_hidden_size": lm["hidden_size"],
        "eagle_aux_hidden_state_layer_ids": aux,
        "transformer_layer_config": draft_layer_config(verifier_config, options.num_layers, options.layer_style, len(aux)),
        "dtype": dtype,
    }
    if spec_tools is not None:
        config["spec_tools"] = spec_tools
    return config


def options_from_config(config: dict) -> Eagle3Options:
    """Recover the options a config was made with."""
    tl = config["transformer_layer_config"]
    if not config.get("eagle_aux_hidden_state_layer_ids"):
        raise SpecError(
            "eagle_aux_hidden_state_layer_ids is null: spec-tools' engine needs the ids written out; "
            "`spec-convert CKPT --verifier V -o OUT` writes the verifier's default [2, n//2, n-3] that vLLM and upstream use"
        )
    return Eagle3Options(
        aux_layer_ids=tuple(config["eagle_aux_hidden_state_layer_ids"]),
        num_layers=tl["num_hidden_layers"],
        layer_style=tl.get("model_type", "llama"),
        draft_vocab_size=config.get("draft_vocab_size"),
        norm_before_residual=config.get("norm_before_residual", True),
        norm_before_fc=config.get("norm_before_fc", False),
        fc_norm=config.get("fc_norm", False),
        norm_output=config.get("norm_output", False),
        speculative_tokens=config["speculators_config"]["proposal_methods"][0]["speculative_tokens"],
    )


def config_problems(config: dict, verifier_layers: int | None = None) -> list[str]:
    """EAGLE-3 rules the schema cannot express, chiefly those vLLM would not catch itself.
    `verifier_layers`: the verifier's layer count when known (it resolves null aux ids)."""
    problems = []
    tl = config.get("transformer_layer_config") or {}
    recorded = config.get("eagle_aux_hidden_state_layer_ids")
    aux = recorded if isinstance(recorded, list) else []
    if aux != sorted(set(aux)):
        problems.append(f"eagle_aux_hidden_state_layer_ids {aux} must be ascending without repeats (vLLM sorts and dedups them)")
    style = tl.get("model_type")
    if style not in VLLM_ARCHITECTURES:
        problems.append(f"transformer_layer_config.model_type {style!r}: vLLM accepts only {', '.join(VLLM_ARCHITECTURES)}")
    declared, count = tl.get("num_aux_hidden_states"), num_aux_layers(config)
    if declared is not None and declared != count:
        having = f"there are {count} aux layer ids" if aux else f"eagle_aux_hidden_state_layer_ids is null: vLLM and upstream capture the verifier's {count} default layers (and upstream sizes fc for {count})"
        problems.append(f"transformer_layer_config.num_aux_hidden_states is {declared} but {having}")
    if declared is None and style == "llama" and count != NUM_DEFAULT_AUX:
        problems.append(
            f"transformer_layer_config.num_aux_hidden_states is missing: vLLM's Llama head would size fc for {NUM_DEFAULT_AUX} aux layers, not {count}"
        )
    layer_types, num_layers = tl.get("layer_types"), tl.get("num_hidden_layers")
    if isinstance(layer_types, list) and isinstance(num_layers, int) and len(layer_types) != num_layers:
        problems.append(f"transformer_layer_config.layer_types lists {len(layer_types)} layers but num_hidden_layers is {num_layers} (vLLM reads one kind per draft layer)")
    if "norm_before_residual" not in config:
        problems.append("norm_before_residual is missing: vLLM would assume true, upstream speculators false")
    if config.get("norm_before_fc") and config.get("fc_norm"):
        problems.append("norm_before_fc and fc_norm are mutually exclusive")
    vocab, draft_vocab = tl.get("vocab_size"), config.get("draft_vocab_size")
    if isinstance(vocab, int) and isinstance(draft_vocab, int) and draft_vocab > vocab:
        problems.append(f"draft_vocab_size {draft_vocab} exceeds the vocabulary size {vocab}")
    depth = verifier_layers if verifier_layers is not None else _recorded_depth(config)
    if recorded is None and depth is not None and (problem := _default_aux_problem(depth)) is not None:
        problems.append(problem)
    else:
        problems.extend(_layer_id_problems(config, aux_layer_ids(config, depth) or [], depth))
    verifier = ((config.get("speculators_config") or {}).get("verifier") or {}).get("name_or_path")
    if isinstance(verifier, str) and (problem := verifier_problem(verifier)) is not None:  # the schema checks the type
        problems.append(problem)
    target = config.get("target_hidden_size")
    if target is not None and target != tl.get("hidden_size"):
        problems.append(f"target_hidden_size {target} differs from hidden_size {tl.get('hidden_size')}: the draft reuses the verifier's embedding, so they must match")
    return problems


def config_warnings(config: dict, verifier_layers: int | None = None) -> list[str]:
    """What a valid EAGLE-3 config leaves unchecked or the consumers read differently from spec-tools' engine."""
    warnings = []
    if config.get("eagle_aux_hidden_state_layer_ids") is None and verifier_layers is None and _recorded_depth(config) is None:
        warnings.append(
            "eagle_aux_hidden_state_layer_ids is null: vLLM and upstream capture the verifier's default layers [2, n//2, n-3] "
            "(fc is checked for those 3), but the verifier's layer count n is not known here (not a local folder, not in the "
            "Hugging Face cache, not recorded in spec_tools), so which layers they are and whether they exist is not checked"
        )
    if (warning := sliding_window_warning(config.get("transformer_layer_config") or {})) is not None:
        warnings.append(warning)
    return warnings


def _recorded_depth(config: dict) -> int | None:
    """The verifier's layer count as spec-tools recorded it (spec_tools.verifier), if it did."""
    depth = ((config.get("spec_tools") or {}).get("verifier") or {}).get("num_hidden_layers")
    return depth if isinstance(depth, int) else None


def _layer_id_problems(config: dict, aux: list, depth: int | None) -> list[str]:
    """Aux ids against the verifier's depth and the layers spec-train's data captured."""
    captured = ((config.get("spec_tools") or {}).get("dataset") or {}).get("layer_ids")
    problems = []
    if isinstance(depth, int) and any(not 0 <= i <= depth for i in aux):
        problems.append(f"eagle_aux_hidden_state_layer_ids {aux} must lie in [0, {depth}] (the verifier's num_hidden_layers)")
    if isinstance(captured, list):
        missing = [i for i in aux if i not in captured]
        if missing:
            problems.append(f"eagle_aux_hidden_state_layer_ids {aux}: {missing} not among the layers the training data captured {captured}")
    return problems


def expected_tensors(config: dict) -> dict[str, TensorSpec]:
    """Every tensor name (as vLLM's load_weights expects it) with shape and kind."""
    tl = config["transformer_layer_config"]
    hidden, vocab = tl["hidden_size"], tl["vocab_size"]
    heads, kv_heads = tl["num_attention_heads"], tl.get("num_key_value_heads") or tl["num_attention_heads"]
    head_dim = tl.get("head_dim") or hidden // heads
    inter = tl["intermediate_size"]
    draft_vocab = config.get("draft_vocab_size") or vocab
    num_aux = num_aux_layers(config)
    target_hidden = config.get("target_hidden_size") or hidden
    specs = {
        "fc.weight": TensorSpec((hidden, num_aux * target_hidden), "float"),
        "norm.weight": TensorSpec((hidden,), "float"),
        "lm_head.weight": TensorSpec((draft_vocab, hidden), "float"),
        # Optional for vLLM (it shares the verifier's when absent); upstream writes it.
        "embed_tokens.weight": TensorSpec((vocab, hidden), "float", required=False),
    }
    if config.get("norm_before_fc"):
        specs["input_norm.weight"] = TensorSpec((num_aux * target_hidden,), "float")
    if config.get("fc_norm"):
        specs.update({f"fc_norm.{i}.weight": TensorSpec((target_hidden,), "float") for i in range(num_aux)})
    for index in range(tl["num_hidden_layers"]):
        specs.update(_layer_tensors(index, tl, hidden, heads, kv_heads, head_dim, inter))
    if draft_vocab != vocab:
        specs["d2t"] = TensorSpec((draft_vocab,), "int64")
        specs["t2d"] = TensorSpec((vocab,), "bool")
    return specs


def _layer_tensors(index, tl, hidden, heads, kv_heads, head_dim, inter) -> dict[str, TensorSpec]:
    prefix = f"layers.{index}."
    width = 2 * hidden if index == 0 else hidden  # layer 0 reads [embedding, hidden]
    specs = {
        "self_attn.q_proj.weight": (heads * head_dim, width),
        "self_attn.k_proj.weight": (kv_heads * head_dim, width),
        "self_attn.v_proj.weight": (kv_heads * head_dim, width),
        "self_attn.o_proj.weight": (hidden, heads * head_dim),
        "mlp.gate_proj.weight": (inter, hidden),
        "mlp.up_proj.weight": (inter, hidden),
        "mlp.down_proj.weight": (hidden, inter),
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
    }
    if index == 0:
        specs["hidden_norm.weight"] = (hidden,)
    if tl.get("model_type") == "qwen3":
        specs["self_attn.q_norm.weight"] = (head_dim,)
        specs["self_attn.k_norm.weight"] = (head_dim,)
    if tl.get("attention_bias"):
        specs["self_attn.q_proj.bias"] = (heads * head_dim,)
        specs["self_attn.k_proj.bias"] = (kv_heads * head_dim,)
        specs["self_attn.v_proj.bias"] = (kv_heads * head_dim,)
    return {prefix + name: TensorSpec(tuple(shape), "float") for name, shape in specs.items()}


def verifier_problems(config: dict, verifier_config: dict, aux_key: str = "eagle_aux_hidden_state_layer_ids") -> list[str]:
    """Where the draft does not fit the verifier it is meant for (sizes, aux layers in range).
    `aux_key` names the config's list of verifier layer ids (other algorithms name it differently)."""
    lm = text_config(verifier_config)
    tl = config.get("transformer_layer_config") or {}
    problems = [f"{key} is {tl.get(key)} but the verifier's is {lm.get(key)}" for key in ("hidden_size", "vocab_size") if tl.get(key) != lm.get(key)]
    layers = lm.get("num_hidden_layers")
    aux = config.get(aux_key) or []
    if isinstance(layers, int) and aux_key == "eagle_aux_hidden_state_layer_ids" and config.get(aux_key) is None:
        problems.extend(filter(None, [_default_aux_problem(layers)]))
    if isinstance(layers, int) and any(i > layers for i in aux):
        problems.append(f"{aux_key} {aux} reach past the verifier's {layers} layers")
    return problems


def checkpoint_facts(config: dict, aux_key: str = "eagle_aux_hidden_state_layer_ids", verifier_layers: int | None = None) -> dict:
    """What spec-validate reports about an EAGLE-3 checkpoint (and, by `aux_key`, a DFlash one)."""
    tl = config["transformer_layer_config"]
    facts = {
        "algorithm": ALGORITHM,
        "verifier": config["speculators_config"]["verifier"]["name_or_path"],
        "draft_layers": tl["num_hidden_layers"],
        "layer_style": tl["model_type"],
        "hidden_size": tl["hidden_size"],
        "vocab_size": tl["vocab_size"],
        "draft_vocab_size": config.get("draft_vocab_size"),
        "aux_layer_ids": config.get(aux_key),
        "speculative_tokens": config["speculators_config"]["proposal_methods"][0]["speculative_tokens"],
    }
    if aux_key == "eagle_aux_hidden_state_layer_ids" and config.get(aux_key) is None:
        depth = verifier_layers if verifier_layers is not None else _recorded_depth(config)
        facts["aux_layer_ids"] = aux_layer_ids(config, depth)
        facts["aux_layer_ids_from"] = (
            f"null in config.json: the verifier's default [2, n//2, n-3] for its n = {depth} layers (vLLM and upstream)"
            if depth is not None
            else "null in config.json: the verifier's default [2, n//2, n-3]; n is not known here"
        )
    return facts
