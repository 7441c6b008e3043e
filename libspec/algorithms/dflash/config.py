"""DFlash drafts (block diffusion): the speculators `dflash` config as vLLM 0.33 reads it, and its weights.

The draft fills a block of `block_size` slots in one pass: slot 0 holds the last verified token
(the "anchor"), the others the mask token. Its Qwen3-style layers attend over the verifier
context — `hidden_norm(fc(aux))`, projected to keys/values by each layer — and over the block
itself. vLLM reads (vllm/transformers_utils/configs/speculators/algos.py, `update_dflash`):

- `aux_hidden_state_layer_ids` (required) as the layers to capture, and as
  `dflash_config.target_layer_ids = [id - 1 ...]` (the z-lab indexing, vLLM issue #40727);
- `mask_token_id` (required), `sample_from_anchor` (default false), `draft_vocab_size`,
  `target_hidden_size`;
- `dflash_config.causal = not sliding_window_non_causal`, **defaulting to non-causal when the key
  is absent**, while upstream speculators defaults the key to false (causal sliding layers). vLLM
  applies that flag to every layer, so the key must be explicit.
"""

from __future__ import annotations

from dataclasses import dataclass

from libspec.algorithms.eagle3 import config as eagle3
from libspec.algorithms.eagle3.config import TensorSpec
from libspec.verifier import text_config

ALGORITHM = "dflash"
ARCHITECTURE = "DFlashSpeculator"  # what upstream speculators writes; vLLM sets DFlashDraftModel itself
LAYER_KEYS = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps", "max_position_embeddings", "rope_parameters",
    "attention_bias", "attention_dropout", "layer_types", "sliding_window", "use_sliding_window", "max_window_layers",
    "initializer_range", "tie_word_embeddings",
)  # fmt: skip


@dataclass(frozen=True)
class DFlashOptions:
    """The choices that shape a DFlash draft (recorded in its config.json)."""

    aux_layer_ids: tuple[int, ...]
    block_size: int
    mask_token_id: int
    speculative_tokens: int
    draft_vocab_size: int | None = None  # None: the verifier's full vocabulary
    sliding_window_non_causal: bool = True
    sample_from_anchor: bool = False


def make_config(
    verifier_config: dict,
    verifier_name_or_path: str,
    layer_config: dict,
    options: DFlashOptions,
    dtype: str = "float32",
    spec_tools: dict | None = None,
) -> dict:
    """A complete speculators `dflash` config.json; `layer_config` is the draft's Qwen3 decoder config."""
    lm = text_config(verifier_config)
    layer = {key: layer_config[key] for key in LAYER_KEYS if key in layer_config}
    layer.update({"model_type": "qwen3", "vocab_size": lm["vocab_size"]})
    config = {
        "architectures": [ARCHITECTURE],
        "speculators_model_type": ALGORITHM,
        "speculators_version": "0.9.0",
        "speculators_config": {
            "algorithm": ALGORITHM,
            "default_proposal_method": "greedy",
            "proposal_methods": [
                {"proposal_type": "greedy", "speculative_tokens": options.speculative_tokens, "verifier_accept_k": 1, "accept_tolerance": 0.0}
            ],
            "verifier": {"name_or_path": verifier_name_or_path, "architectures": list(verifier_config.get("architectures") or [])},
        },
        "draft_vocab_size": options.draft_vocab_size or lm["vocab_size"],
        "block_size": options.block_size,
        "target_hidden_size": lm["hidden_size"],
        "aux_hidden_state_layer_ids": list(options.aux_layer_ids),
        "mask_token_id": options.mask_token_id,
        # Explicit on purpose: vLLM and upstream disagree on its default (module docstring).
        "sliding_window_non_causal": options.sliding_window_non_causal,
        "sample_from_anchor": options.sample_from_anchor,
        "transformer_layer_config": layer,
        "dtype": dtype,
    }
    if spec_tools is not None:
        config["spec_tools"] = spec_tools
    return config


def head_dim(layer: dict) -> int:
    return layer.get("head_dim") or layer["hidden_size"] // layer["num_attention_heads"]


def config_problems(config: dict, verifier_layers: int | None = None) -> list[str]:
    """DFlash rules the schema cannot express, chiefly those vLLM would not catch itself.
    `verifier_layers`: the verifier's layer count when known (aux ids must not pass it)."""
    problems = []
    tl = config.get("transformer_layer_config") or {}
    aux = config.get("aux_hidden_state_layer_ids")
    if not isinstance(aux, list) or not aux or not all(isinstance(i, int) for i in aux):
        problems.append("aux_hidden_state_layer_ids must be a non-empty list of layer ids (vLLM requires it)")
    else:
        if aux != sorted(set(aux)):
            problems.append(f"aux_hidden_state_layer_ids {aux} must be ascending without repeats")
        if min(aux) < 1:
            problems.append(f"aux_hidden_state_layer_ids {aux}: ids start at 1 (vLLM passes id - 1 to the DFlash model)")
        if verifier_layers is not None and max(aux) > verifier_layers:
            problems.append(f"aux_hidden_state_layer_ids {aux} must lie in [1, {verifier_layers}] (the verifier's num_hidden_layers)")
    vocab = tl.get("vocab_size")
    mask = config.get("mask_token_id")
    if not isinstance(mask, int) or (isinstance(vocab, int) and not 0 <= mask < vocab):
        problems.append(f"mask_token_id {mask!r} must be a token id below vocab_size {vocab} (vLLM requires it)")
    if tl.get("model_type") != "qwen3":
        problems.append(f"transformer_layer_config.model_type {tl.get('model_type')!r}: DFlash layers are Qwen3 layers (q_norm/k_norm)")
    if not isinstance(config.get("sliding_window_non_causal"), bool):
        problems.append("sliding_window_non_causal is missing: vLLM would make the block non-causal, upstream causal in sliding layers")
    block = config.get("block_size")
    if not isinstance(block, int) or block < 2:
        problems.append(f"block_size {block!r} must be an integer >= 2")
    else:
        tokens = ((config.get("speculators_config") or {}).get("proposal_methods") or [{}])[0].get("speculative_tokens")
        most = block if config.get("sample_from_anchor") else block - 1
        if isinstance(tokens, int) and tokens > most:
            problems.append(f"speculative_tokens {tokens} exceeds the {most} slots a block of {block} can draft")
    draft_vocab = config.get("draft_vocab_size")
    if isinstance(vocab, int) and isinstance(draft_vocab, int) and draft_vocab > vocab:
        problems.append(f"draft_vocab_size {draft_vocab} exceeds the vocabulary size {vocab}")
    target = config.get("target_hidden_size")
    if target is not None and target != tl.get("hidden_size"):
        problems.append(f"target_hidden_size {target} differs from hidden_size {tl.get('hidden_size')}")
    if "sliding_attention" in (tl.get("layer_types") or []) and not tl.get("sliding_window"):
        problems.append("layer_types has sliding layers but sliding_window is not set (vLLM refuses it)")
    return problems


def config_warnings(config: dict, verifier_layers: int | None = None) -> list[str]:
    """Where vLLM and upstream run the same valid config differently, or spec-tools' engine cannot follow them."""
    warnings = []
    tl = config.get("transformer_layer_config") or {}
    num_layers = tl.get("num_hidden_layers")
    layer_types = tl.get("layer_types") or ["full_attention"] * (num_layers if isinstance(num_layers, int) else 1)
    full = [i for i, kind in enumerate(layer_types) if kind != "sliding_attention"]
    if config.get("sliding_window_non_causal") is False and full:
        # vLLM: update_dflash sets dflash_config.causal = not sliding_window_non_causal, which
        # qwen3_dflash._dflash_layer_causal applies to every layer. Upstream: dflash/attention.py
        # keeps full-attention layers non-causal whatever the flag (it only governs sliding layers).
        warnings.append(
            f"sliding_window_non_causal is false: vLLM 0.33 then runs every draft layer causal within the block, while "
            f"upstream speculators keeps full-attention layers {full} non-causal (the flag only governs its sliding layers), "
            "so the same file drafts differently in the two (SPEC.md §11.8); a draft upstream trained would be served by "
            "vLLM with a mask it was not trained with"
        )
    if (warning := eagle3.sliding_window_warning(tl)) is not None:
        warnings.append(warning)
    return warnings


def expected_tensors(config: dict) -> dict[str, TensorSpec]:
    """Every tensor name vLLM's DFlash loader expects, with shape and kind."""
    tl = config["transformer_layer_config"]
    hidden, vocab, inter = tl["hidden_size"], tl["vocab_size"], tl["intermediate_size"]
    heads = tl["num_attention_heads"]
    kv_heads = tl.get("num_key_value_heads") or heads
    dim = head_dim(tl)
    draft_vocab = config.get("draft_vocab_size") or vocab
    num_aux = len(config["aux_hidden_state_layer_ids"])
    specs = {
        "fc.weight": TensorSpec((hidden, num_aux * hidden), "float"),
        "hidden_norm.weight": TensorSpec((hidden,), "float"),
        "norm.weight": TensorSpec((hidden,), "float"),
        # vLLM shares the verifier's lm_head and embedding when absent; a reduced vocabulary needs its own head.
        "lm_head.weight": TensorSpec((draft_vocab, hidden), "float", required=draft_vocab != vocab),
        "embed_tokens.weight": TensorSpec((vocab, hidden), "float", required=False),
    }
    for index in range(tl["num_hidden_layers"]):
        layer = {
            "self_attn.q_proj.weight": (heads * dim, hidden),
            "self_attn.k_proj.weight": (kv_heads * dim, hidden),
            "self_attn.v_proj.weight": (kv_heads * dim, hidden),
            "self_attn.o_proj.weight": (hidden, heads * dim),
            "self_attn.q_norm.weight": (dim,),
            "self_attn.k_norm.weight": (dim,),
            "mlp.gate_proj.weight": (inter, hidden),
            "mlp.up_proj.weight": (inter, hidden),
            "mlp.down_proj.weight": (hidden, inter),
            "input_layernorm.weight": (hidden,),
            "post_attention_layernorm.weight": (hidden,),
        }
        if tl.get("attention_bias"):  # DFlash gives o_proj a bias too
            layer.update({"self_attn.q_proj.bias": (heads * dim,), "self_attn.k_proj.bias": (kv_heads * dim,)})
            layer.update({"self_attn.v_proj.bias": (kv_heads * dim,), "self_attn.o_proj.bias": (hidden,)})
        specs.update({f"layers.{index}.{name}": TensorSpec(tuple(shape), "float") for name, shape in layer.items()})
    if draft_vocab != vocab:
        specs["d2t"] = TensorSpec((draft_vocab,), "int64")
        specs["t2d"] = TensorSpec((vocab,), "bool")
    return specs


def verifier_problems(config: dict, verifier_config: dict) -> list[str]:
    """Where the draft does not fit the verifier it is meant for: EAGLE-3's checks, on DFlash's key."""
    return eagle3.verifier_problems(config, verifier_config, aux_key="aux_hidden_state_layer_ids")


def checkpoint_facts(config: dict, verifier_layers: int | None = None) -> dict:
    """What spec-validate reports about a DFlash checkpoint: EAGLE-3's facts plus the block's."""
    facts = eagle3.checkpoint_facts(config, aux_key="aux_hidden_state_layer_ids")
    facts["algorithm"] = ALGORITHM
    speculative_tokens = facts.pop("speculative_tokens")
    facts.update(block_size=config.get("block_size"), mask_token_id=config.get("mask_token_id"), speculative_tokens=speculative_tokens)
    return facts
