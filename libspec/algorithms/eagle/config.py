"""EAGLE-1 / EAGLE-2 / HASS drafts as vLLM's `method: "eagle"` loads them (SPEC.md §11.6).

vLLM has no speculators type for these drafts (0.15–0.33) and upstream speculators dropped them,
so the only form vLLM serves is a plain Hugging Face Llama folder passed explicitly:
`--speculative-config '{"method": "eagle", "model": DIR, ...}'`. vLLM renames the architecture
to `EagleLlamaForCausalLM`, whose math is:

    h = fc(cat[embed(x), f])          f = the verifier's final hidden state (after its norm)
    layer 0 has no input norm; further layers are standard pre-norm Llama layers
    f' = output of the last layer     (no final norm: the verifier's lm_head reads it directly)

Because the folder carries no `speculators_config`, spec-tools keeps what it needs (the
algorithm, the verifier, the drafted tokens per step) in the `spec_tools` block of config.json.
"""

from __future__ import annotations

from libspec.algorithms.eagle3.config import TensorSpec, rope_parameters
from libspec.verifier import text_config

ALGORITHM = "eagle"
# vLLM prefixes the draft's own architecture with "Eagle"; only the Llama one exists for our layout.
ARCHITECTURE = "LlamaForCausalLM"
REQUIRED_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "rms_norm_eps",
)  # fmt: skip


def is_eagle_config(config: dict) -> bool:
    """True for a config.json spec-tools wrote for an EAGLE-1 draft (no speculators_config)."""
    tools = config.get("spec_tools")
    return "speculators_config" not in config and isinstance(tools, dict) and tools.get("algorithm") == ALGORITHM


def make_config(
    verifier_config: dict,
    verifier_name_or_path: str,
    layer: dict,
    speculative_tokens: int,
    dtype: str,
    spec_tools: dict | None = None,
) -> dict:
    """config.json of an EAGLE-1 draft: the draft's Llama config plus our `spec_tools` record.

    `layer` holds the draft's own shape (num_hidden_layers, intermediate_size, heads, head_dim and
    the bias flags `attention_bias` / `qkv_bias`); everything else comes from the verifier.
    """
    lm = text_config(verifier_config)
    config = {
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "vocab_size": lm["vocab_size"],
        "hidden_size": lm["hidden_size"],
        "intermediate_size": layer["intermediate_size"],
        "num_hidden_layers": layer["num_hidden_layers"],
        "num_attention_heads": layer["num_attention_heads"],
        "num_key_value_heads": layer["num_key_value_heads"],
        "head_dim": layer["head_dim"],
        "hidden_act": layer.get("hidden_act", "silu"),
        "max_position_embeddings": max(layer.get("max_position_embeddings") or 0, lm.get("max_position_embeddings") or 0) or 4096,
        "rms_norm_eps": layer.get("rms_norm_eps", lm.get("rms_norm_eps", 1e-6)),
        "rope_parameters": layer.get("rope_parameters") or rope_parameters(lm),
        # vLLM's Llama layer reads `attention_bias` (q, k, v and o) and lets `qkv_bias` override q/k/v.
        "attention_bias": bool(layer.get("attention_bias", False)),
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "dtype": dtype,
    }
    if "qkv_bias" in layer:
        config["qkv_bias"] = bool(layer["qkv_bias"])
    tools = dict(spec_tools or {})
    tools.update({"algorithm": ALGORITHM, "speculative_tokens": speculative_tokens})
    # A fingerprint (SPEC.md §3) when the caller has one; it names the verifier the same way.
    tools.setdefault("verifier", {"name_or_path": verifier_name_or_path, "architectures": list(verifier_config.get("architectures") or [])})
    config["spec_tools"] = tools
    return config


def attention_biases(config: dict) -> tuple[bool, bool]:
    """(q/k/v have a bias, o_proj has one), decided exactly as vLLM's Llama layer decides it."""
    attention_bias = bool(config.get("attention_bias", False) or config.get("bias", False))
    qkv_bias = bool(config["qkv_bias"]) if "qkv_bias" in config else attention_bias
    return qkv_bias, attention_bias


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def config_problems(config: dict, verifier_layers: int | None = None) -> list[str]:
    """What vLLM would reject or silently misread in an EAGLE-1 draft config (it reads the
    verifier's final hidden state, so `verifier_layers` does not matter)."""
    problems = [f"{key} is missing (vLLM reads the folder as a Llama config)" for key in REQUIRED_KEYS if key not in config]
    if config.get("model_type") != "llama" or config.get("architectures") != [ARCHITECTURE]:
        problems.append(
            f"model_type/architectures are {config.get('model_type')!r}/{config.get('architectures')!r}: "
            f"vLLM serves EAGLE-1 drafts only as llama/[{ARCHITECTURE!r}] (it becomes EagleLlamaForCausalLM)"
        )
    if "rope_parameters" not in config and "rope_theta" not in config:
        problems.append("neither rope_parameters nor rope_theta is present")
    if "speculators_config" in config:
        problems.append("speculators_config is present: vLLM would read the folder as a speculators checkpoint and reject type 'eagle'")
    tokens = (config.get("spec_tools") or {}).get("speculative_tokens")
    if not isinstance(tokens, int) or tokens < 1:
        problems.append("spec_tools.speculative_tokens is missing (an EAGLE-1 folder has no speculators_config to record it)")
    if config.get("mlp_bias"):
        problems.append("mlp_bias is true: EAGLE drafts have no MLP biases")
    return problems


def expected_tensors(config: dict) -> dict[str, TensorSpec]:
    """Every tensor name vLLM's EagleLlamaForCausalLM loads, with shape and kind."""
    hidden, vocab, inter = config["hidden_size"], config["vocab_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    dim = head_dim(config)
    qkv_bias, o_bias = attention_biases(config)
    specs = {
        "fc.weight": TensorSpec((hidden, 2 * hidden), "float"),
        # Optional: vLLM shares the verifier's embedding when absent (or equal).
        "embed_tokens.weight": TensorSpec((vocab, hidden), "float", required=False),
    }
    for index in range(config["num_hidden_layers"]):
        prefix = f"layers.{index}."
        layer = {
            "self_attn.q_proj.weight": (heads * dim, hidden),
            "self_attn.k_proj.weight": (kv_heads * dim, hidden),
            "self_attn.v_proj.weight": (kv_heads * dim, hidden),
            "self_attn.o_proj.weight": (hidden, heads * dim),
            "mlp.gate_proj.weight": (inter, hidden),
            "mlp.up_proj.weight": (inter, hidden),
            "mlp.down_proj.weight": (hidden, inter),
            "post_attention_layernorm.weight": (hidden,),
        }
        if index > 0:  # vLLM replaces layer 0's input norm by the identity, so it has no weight
            layer["input_layernorm.weight"] = (hidden,)
        if qkv_bias:
            layer.update({"self_attn.q_proj.bias": (heads * dim,), "self_attn.k_proj.bias": (kv_heads * dim,), "self_attn.v_proj.bias": (kv_heads * dim,)})
        if o_bias:
            layer["self_attn.o_proj.bias"] = (hidden,)
        specs.update({prefix + name: TensorSpec(tuple(shape), "float") for name, shape in layer.items()})
    return specs


def verifier_problems(config: dict, verifier_config: dict) -> list[str]:
    """Where the draft does not fit the verifier it is meant for."""
    lm = text_config(verifier_config)
    problems = []
    for key in ("hidden_size", "vocab_size"):
        if config.get(key) != lm.get(key):
            problems.append(f"{key} is {config.get(key)} but the verifier's is {lm.get(key)}")
    return problems


def config_warnings(config: dict, verifier_layers: int | None = None) -> list[str]:
    """Nothing that vLLM reads differently from spec-tools' engine is known for EAGLE-1 folders."""
    return []


def checkpoint_facts(config: dict, verifier_layers: int | None = None) -> dict:
    """What spec-validate reports about an EAGLE-1 checkpoint."""
    tools = config.get("spec_tools") or {}
    return {
        "algorithm": ALGORITHM,
        "verifier": (tools.get("verifier") or {}).get("name_or_path"),
        "draft_layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "vocab_size": config.get("vocab_size"),
        "speculative_tokens": tools.get("speculative_tokens"),
        "serve_with": 'vllm serve VERIFIER --speculative-config \'{"method": "eagle", "model": "DIR", "num_speculative_tokens": K}\'',
    }
