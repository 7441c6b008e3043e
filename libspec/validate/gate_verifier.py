"""The verifier a gate checks a checkpoint against: the real one when it is on this machine, else a stand-in.

vLLM needs the verifier's config (its vocabulary and depth shape the draft) and upstream speculators
reads it too. Gates never download: a Hub verifier counts only if it is in the Hugging Face cache.
Otherwise a config-only stand-in is written from what the checkpoint itself records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from libspec.serving import verifier_kind
from libspec.format.json_files import read_json_object

STAND_IN_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
STAND_IN_DEPTH = 8  # layers of a stand-in whose checkpoint names no aux ids and records no depth
COPIED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
               "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_parameters", "rope_theta")  # fmt: skip


@dataclass(frozen=True)
class GateVerifier:
    """The folder a gate uses as the verifier, whether it has weights, and a sentence saying which it is."""

    folder: Path
    has_weights: bool
    note: str


def local_verifier_dir(name_or_path: str) -> Path | None:
    """The verifier's folder on this machine (a local folder or a Hub id in the HF cache), never downloading."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if verifier_kind(name_or_path) != "hub":
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception:  # hub client errors have many types; all mean "not in the cache"
        return None


def gate_verifier(config: dict, workdir: Path) -> GateVerifier:
    """The real verifier folder if this machine has it, else a stand-in written under `workdir`."""
    name = (_verifier_record(config).get("verifier") or {}).get("name_or_path")
    folder = local_verifier_dir(name) if isinstance(name, str) and name else None
    if folder is not None and (folder / "config.json").is_file():
        has_weights = any(folder.glob("*.safetensors"))
        return GateVerifier(folder, has_weights, f"{name} ({folder})" if str(folder) != name else name)
    stand_in = write_stand_in_verifier(config, workdir / "stand-in-verifier")
    architecture = read_json_object(stand_in / "config.json")["architectures"][0]
    note = (
        f"stand-in {architecture} config built from this checkpoint's transformer_layer_config: "
        f"{name} is not on this machine (not a folder, not in the Hugging Face cache)"
        if name
        else "stand-in config built from this checkpoint's transformer_layer_config: config.json names no verifier"
    )
    return GateVerifier(stand_in, False, note)


def _verifier_record(config: dict) -> dict:
    """Where a checkpoint config names its verifier: speculators_config, or spec_tools in an EAGLE-1 folder."""
    return config.get("speculators_config") or config.get("spec_tools") or {}


def write_stand_in_verifier(config: dict, folder: Path) -> Path:
    """A config-only verifier with the shapes the checkpoint says its verifier has."""
    # An EAGLE-1 folder is itself a flat Llama config with the verifier's hidden and vocabulary sizes.
    layer = config.get("transformer_layer_config") or (config if "speculators_config" not in config else {})
    recorded = (config.get("spec_tools") or {}).get("verifier") or {}
    aux = config.get("eagle_aux_hidden_state_layer_ids") or config.get("aux_hidden_state_layer_ids") or []
    style = layer.get("model_type")
    stand_in = {
        **{key: layer[key] for key in COPIED_KEYS if key in layer},
        "model_type": style if style in STAND_IN_ARCHITECTURES else "llama",
        "architectures": [STAND_IN_ARCHITECTURES.get(style, "LlamaForCausalLM")],
        # Aux layer ids index the verifier's layers (id L = its last layer); a recorded depth is the true
        # one. Null EAGLE-3 ids mean the verifier's [2, n//2, n-3], valid from n = 7 on.
        "num_hidden_layers": recorded.get("num_hidden_layers") or (max(max(aux), 1) if aux else STAND_IN_DEPTH),
        "tie_word_embeddings": False,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(stand_in, indent=2) + "\n", encoding="utf-8")
    return folder
