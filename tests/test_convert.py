"""spec-convert: every source layout, built tiny and random in that exact layout, converts into a
checkpoint that validates, reloads, and reproduces the source's own logits; bad input fails clearly."""

from __future__ import annotations

import json
import math
import sys

import pytest
import safetensors.torch
import torch

from gates import gate_reports, require_gates
from conftest import random_checkpoint_tensors, vocab_maps, write_fake_verifier
from libspec.format import checkpoint as ckpt
from libspec.algorithms.dflash import config as dflash
from libspec.algorithms.eagle3 import config as eagle3
from libspec.convert import safeailab_eagle, specforge_eagle3
from libspec.convert.common import ConvertOptions
from libspec.convert.pipeline import ConvertRequest, convert
from libspec.errors import SpecError
from libspec.validate.artifacts import validate
from tools._cli import run
from tools.spec_convert import main

H, V, HEADS, KV, D, INTER = 16, 64, 2, 1, 8, 32
VERIFIER = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": H,
    "intermediate_size": INTER, "num_hidden_layers": 8, "num_attention_heads": HEADS, "num_key_value_heads": KV,
    "head_dim": D, "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
}  # fmt: skip
FLAT_LLAMA = {
    "model_type": "llama", "hidden_size": H, "intermediate_size": INTER, "num_attention_heads": HEADS,
    "num_key_value_heads": KV, "num_hidden_layers": 1, "vocab_size": V, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "max_position_embeddings": 2048, "hidden_act": "silu", "torch_dtype": "float16", "tie_word_embeddings": False,
}  # fmt: skip


class Weights:
    """Random tensors of chosen shapes; norm weights near 1 so that every norm matters."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def matrix(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator) / math.sqrt(shape[-1])

    def norm(self, size: int) -> torch.Tensor:
        return 1 + 0.2 * torch.randn(size, generator=self.generator)

    def layer(self, prefix: str, width: int, *, input_norm=True, hidden_norm=False, qk_norm=False, qkv_bias=False) -> dict:
        tensors = {
            f"{prefix}self_attn.q_proj.weight": self.matrix(HEADS * D, width),
            f"{prefix}self_attn.k_proj.weight": self.matrix(KV * D, width),
            f"{prefix}self_attn.v_proj.weight": self.matrix(KV * D, width),
            f"{prefix}self_attn.o_proj.weight": self.matrix(H, HEADS * D),
            f"{prefix}mlp.gate_proj.weight": self.matrix(INTER, H),
            f"{prefix}mlp.up_proj.weight": self.matrix(INTER, H),
            f"{prefix}mlp.down_proj.weight": self.matrix(H, INTER),
            f"{prefix}post_attention_layernorm.weight": self.norm(H),
        }
        if input_norm:
            tensors[f"{prefix}input_layernorm.weight"] = self.norm(H)
        if hidden_norm:
            tensors[f"{prefix}hidden_norm.weight"] = self.norm(H)
        if qk_norm:
            tensors[f"{prefix}self_attn.q_norm.weight"] = self.norm(D)
            tensors[f"{prefix}self_attn.k_norm.weight"] = self.norm(D)
        if qkv_bias:
            for name, rows in (("q", HEADS * D), ("k", KV * D), ("v", KV * D)):
                tensors[f"{prefix}self_attn.{name}_proj.bias"] = 0.5 * torch.randn(rows, generator=self.generator)
        return tensors


@pytest.fixture
def verifier(tmp_path):
    return write_fake_verifier(tmp_path / "verifier", VERIFIER)


def write_source(directory, config: dict, tensors: dict, kind: str = "safetensors"):
    """A source folder in the external layout: config.json plus weights as the source repo stores them."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    if kind == "bin":
        torch.save(tensors, directory / "pytorch_model.bin")
    elif kind == "sharded":
        names = sorted(tensors)
        halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        for file, part in halves.items():
            safetensors.torch.save_file({n: tensors[n].contiguous() for n in part}, str(directory / file))
        weight_map = {n: file for file, part in halves.items() for n in part}
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        safetensors.torch.save_file({n: t.contiguous() for n, t in tensors.items()}, str(directory / "model.safetensors"))
    return directory


def safeailab_eagle3_source(tmp_path, draft_vocab=32):
    w = Weights(1)
    tensors = {**w.layer("midlayer.", 2 * H, hidden_norm=True), "fc.weight": w.matrix(H, 3 * H), "norm.weight": w.norm(H)}
    tensors.update({"lm_head.weight": w.matrix(draft_vocab, H), "embed_tokens.weight": torch.randn(V, H, generator=w.generator)})
    tensors["d2t"], tensors["t2d"] = vocab_maps(V, draft_vocab, seed=3)
    config = {**FLAT_LLAMA, "architectures": ["LlamaForCausalLMEagle3"], "draft_vocab_size": draft_vocab}
    return write_source(tmp_path / "safeailab", config, tensors, kind="bin")


def specforge_source(tmp_path, recorded_layers=(1, 3, 5), norm_output=True):
    w = Weights(2)
    tensors = {**w.layer("midlayer.", 2 * H, hidden_norm=True), "fc.weight": w.matrix(H, 3 * H), "norm.weight": w.norm(H)}
    tensors.update({f"fc_norm.{i}.weight": w.norm(H) for i in range(3)})
    tensors.update({"lm_head.weight": w.matrix(V, H), "t2d": torch.ones(V, dtype=torch.bool), "d2t": torch.zeros(V, dtype=torch.int64)})
    config = {
        **FLAT_LLAMA, "architectures": ["LlamaForCausalLMEagle3"], "draft_vocab_size": V, "head_dim": D, "fc_norm": True,
        "norm_output": norm_output, "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(recorded_layers)},
    }  # fmt: skip
    return write_source(tmp_path / "specforge", config, tensors)


def nvidia_source(tmp_path):
    w = Weights(3)
    tensors = {**w.layer("layers.0.", 2 * H, hidden_norm=True), **w.layer("layers.1.", H)}
    tensors.update({"fc.weight": w.matrix(H, 3 * H), "norm.weight": w.norm(H), "lm_head.weight": w.matrix(24, H)})
    tensors["d2t"] = vocab_maps(V, 24, seed=5)[0]
    tensors = {n: t.to(torch.bfloat16) if t.is_floating_point() else t for n, t in tensors.items()}
    eagle_config = {
        "eagle_aux_hidden_state_layer_ids": [1, 3, 4], "use_aux_hidden_state": True, "use_input_layernorm_in_first_layer": True,
        "use_last_layernorm": True, "use_mtp_layernorm": False, "next_layer_regular": True, "parallel_draft_step": 1,
    }  # fmt: skip
    config = {**FLAT_LLAMA, "architectures": ["LlamaForCausalLMEagle3"], "num_hidden_layers": 2, "draft_vocab_size": 24, "head_dim": D, "torch_dtype": "bfloat16", "eagle_config": eagle_config}
    return write_source(tmp_path / "nvidia", config, tensors, kind="sharded")


def early_nvidia_source(tmp_path):
    """ModelOpt exports until 2026-03: SafeAILab's midlayer.* names, no lm_head for a full vocabulary."""
    w = Weights(8)
    tensors = {**w.layer("midlayer.", 2 * H, hidden_norm=True), "fc.weight": w.matrix(H, 3 * H), "norm.weight": w.norm(H)}
    eagle_config = {"eagle_aux_hidden_state_layer_ids": [], "use_aux_hidden_state": True, "use_input_layernorm_in_first_layer": True, "use_last_layernorm": True}
    config = {**FLAT_LLAMA, "architectures": ["LlamaForCausalLMEagle3"], "draft_vocab_size": V, "eagle_config": eagle_config}
    return write_source(tmp_path / "nvidia-early", config, tensors)


def eagle1_source(tmp_path, name="eagle1", fc_bias=True, qkv_bias=False, layers=2):
    w = Weights(4)
    tensors = {"fc.weight": w.matrix(H, 2 * H), "embed_tokens.weight": torch.randn(V, H, generator=w.generator)}
    if fc_bias:
        tensors["fc.bias"] = 0.5 * torch.randn(H, generator=w.generator)
    for index in range(layers):
        tensors.update(w.layer(f"layers.{index}.", H, input_norm=index > 0, qkv_bias=qkv_bias))
    config = {**FLAT_LLAMA, "architectures": ["LlamaForCausalLM"], "num_hidden_layers": layers}
    if not fc_bias:
        config["bias"] = False
    if qkv_bias:
        config["qkv_bias"] = True
    return write_source(tmp_path / name, config, tensors, kind="bin")


def zlab_dflash_source(tmp_path, target_layer_ids=(1, 3, 5)):
    w = Weights(5)
    tensors = {"fc.weight": w.matrix(H, 3 * H), "hidden_norm.weight": w.norm(H), "norm.weight": w.norm(H)}
    for index in range(2):
        tensors.update(w.layer(f"layers.{index}.", H, qk_norm=True))
    config = {
        "architectures": ["DFlashDraftModel"], "auto_map": {"AutoModel": "dflash.DFlashDraftModel"}, "model_type": "qwen3",
        "block_size": 4, "dflash_config": {"mask_token_id": 63, "target_layer_ids": list(target_layer_ids)}, "num_target_layers": 8,
        "hidden_size": H, "intermediate_size": INTER, "num_attention_heads": HEADS, "num_key_value_heads": KV, "head_dim": D,
        "num_hidden_layers": 2, "vocab_size": V, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "attention_bias": False,
        "layer_types": ["full_attention", "full_attention"], "max_position_embeddings": 40960, "hidden_act": "silu", "tie_word_embeddings": False,
    }  # fmt: skip
    return write_source(tmp_path / "zlab", config, tensors)


def legacy_speculators_source(tmp_path):
    """speculators 0.1 layout (also what NVIDIA's convert_to_vllm_ckpt.py writes): rope_scaling, torch_dtype, no norm flags."""
    w = Weights(6)
    tensors = {**w.layer("layers.0.", 2 * H, hidden_norm=True), "fc.weight": w.matrix(H, 3 * H), "norm.weight": w.norm(H)}
    tensors.update({"lm_head.weight": w.matrix(32, H), "embed_tokens.weight": torch.randn(V, H, generator=w.generator)})
    tensors["d2t"], tensors["t2d"] = vocab_maps(V, 32, seed=7)
    layer = {**FLAT_LLAMA, "rope_theta": 500000.0, "max_position_embeddings": 131072, "head_dim": D}
    layer["rope_scaling"] = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    config = {
        "architectures": ["Eagle3Speculator"], "auto_map": {"": "eagle3.Eagle3SpeculatorConfig"}, "draft_vocab_size": 32,
        "speculators_model_type": "eagle3", "speculators_version": "0.1.0.dev14", "target_hidden_size": H, "torch_dtype": "float32",
        "speculators_config": {
            "algorithm": "eagle3", "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 5, "verifier_accept_k": 1, "accept_tolerance": 0.0}],
            "verifier": {"name_or_path": "meta-llama/Llama-3.1-8B-Instruct", "architectures": ["LlamaForCausalLM"]},
        },
        "transformer_layer_config": layer,
    }  # fmt: skip
    return write_source(tmp_path / "legacy", config, tensors)


def legacy_eagle_source(tmp_path):
    """speculators 0.1-0.3 `eagle` type (EAGLE-1/HASS): fusion_fc with a bias, one `transformer.*` layer."""
    w = Weights(7)
    tensors = {"fusion_fc.weight": w.matrix(H, 2 * H), "fusion_fc.bias": 0.5 * torch.randn(H, generator=w.generator)}
    tensors.update(w.layer("transformer.", H, input_norm=False))
    config = {
        "architectures": ["EagleSpeculator", "LlamaDecoderLayer"], "speculators_model_type": "eagle", "speculators_version": "0.2.0",
        "layernorms": False, "fusion_bias": True, "transformer_layer_architecture": "LlamaDecoderLayer",
        "speculators_config": {
            "algorithm": "eagle", "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 4}],
            "verifier": {"name_or_path": "x/y", "architectures": ["LlamaForCausalLM"]},
        },
        "transformer_layer_config": FLAT_LLAMA,
    }  # fmt: skip
    return write_source(tmp_path / "legacy-eagle", config, tensors)


def run_convert(source, verifier, out, **changes):
    request = ConvertRequest(str(source), str(verifier), str(out), **changes)
    return convert(request)


def reloads(result):
    """The written folder validates and its tensors load into spec-tools' model of the algorithm."""
    report = validate(result.output)
    assert report.ok, report.problems
    config, tensors = ckpt.read_config(result.output), ckpt.load_tensors(result.output)
    from libspec.algorithms.dflash.model import DFlashDraft
    from libspec.algorithms.eagle3.model import Eagle3Draft
    from libspec.algorithms.eagle.model import EagleDraft

    model = {"eagle3": Eagle3Draft, "eagle": EagleDraft, "dflash": DFlashDraft}[result.algorithm](config)
    model.load_checkpoint_tensors(tensors)
    return config, tensors


def decision(result, setting):
    return next(d for d in result.decisions if d["setting"] == setting)


# ---- every format ------------------------------------------------------------------------------


def test_safeailab_eagle3_from_a_pickled_bin(tmp_path, verifier):
    result = run_convert(safeailab_eagle3_source(tmp_path), verifier, tmp_path / "out")
    assert (result.format, result.algorithm) == ("safeailab-eagle3", "eagle3")
    config, tensors = reloads(result)
    assert result.numeric_check["passed"] and result.numeric_check["max_abs_diff"] < 1e-4
    assert config["eagle_aux_hidden_state_layer_ids"] == [2, 4, 5]
    assert decision(result, "aux_layer_ids")["origin"] == "default"
    assert config["norm_before_residual"] is False and config["norm_output"] is False
    assert config["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 7
    assert config["draft_vocab_size"] == 32 and "layers.0.hidden_norm.weight" in tensors and "midlayer.fc" not in str(tensors)
    assert config["dtype"] == "float32" and config["spec_tools"]["converted_from"]["format"] == "safeailab-eagle3"


def test_specforge_layer_ids_plus_one_fc_norm_and_norm_output_meaning(tmp_path, verifier):
    result = run_convert(specforge_source(tmp_path), verifier, tmp_path / "out")
    assert result.format == "specforge-eagle3"
    config, tensors = reloads(result)
    assert config["eagle_aux_hidden_state_layer_ids"] == [2, 4, 6]  # SpecForge records layer outputs 1, 3, 5
    assert config["fc_norm"] is True and config["norm_output"] is False  # SpecForge feeds back the pre-norm state
    assert "d2t" not in tensors and "t2d" not in tensors and "embed_tokens.weight" not in tensors
    assert result.numeric_check["passed"], result.numeric_check


def test_specforge_unordered_layers_reorder_fc_blocks_exactly(tmp_path, verifier):
    result = run_convert(specforge_source(tmp_path, recorded_layers=(5, 1, 3)), verifier, tmp_path / "out")
    config, _ = reloads(result)
    assert config["eagle_aux_hidden_state_layer_ids"] == [2, 4, 6]
    assert decision(result, "fc column order")["value"] == [2, 4, 6]
    assert result.numeric_check["passed"], result.numeric_check


def test_specforge_norm_output_false_cannot_be_served(tmp_path, verifier):
    with pytest.raises(SpecError, match="norm_output is false"):
        run_convert(specforge_source(tmp_path, norm_output=False), verifier, tmp_path / "out")


def test_nvidia_export_sharded_bf16_two_layers_t2d_derived(tmp_path, verifier):
    result = run_convert(nvidia_source(tmp_path), verifier, tmp_path / "out")
    assert result.format == "nvidia-eagle3"
    config, tensors = reloads(result)
    assert config["eagle_aux_hidden_state_layer_ids"] == [2, 4, 5]
    assert config["transformer_layer_config"]["num_hidden_layers"] == 2 and config["dtype"] == "bfloat16"
    assert decision(result, "t2d")["origin"] == "derived" and int(tensors["t2d"].sum()) == 24
    assert config["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 3
    assert result.numeric_check["passed"], result.numeric_check


def test_early_nvidia_export_borrows_the_verifiers_lm_head(tmp_path, verifier):
    with pytest.raises(SpecError, match="no lm_head .* name a local verifier folder with its weights"):
        run_convert(early_nvidia_source(tmp_path), verifier, tmp_path / "out")
    local = saved_tiny_verifier(tmp_path / "local-verifier")
    result = run_convert(early_nvidia_source(tmp_path / "again"), local, tmp_path / "out")
    assert result.format == "nvidia-eagle3"
    config, tensors = reloads(result)
    assert config["eagle_aux_hidden_state_layer_ids"] == [2, 4, 5] and decision(result, "aux_layer_ids")["origin"] == "default"
    head = safetensors.torch.load_file(str(local / "model.safetensors"))["lm_head.weight"]
    assert torch.equal(tensors["lm_head.weight"], head) and result.numeric_check["passed"]


def test_eagle1_with_fc_bias_folded_into_attention_biases(tmp_path, verifier):
    source = eagle1_source(tmp_path)
    result = run_convert(source / "pytorch_model.bin", verifier, tmp_path / "out")  # a lone weights file, config beside it
    assert (result.format, result.algorithm) == ("safeailab-eagle", "eagle")
    config, tensors = reloads(result)
    assert "speculators_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert config["attention_bias"] is True and "fc.bias" not in tensors and "layers.1.self_attn.o_proj.bias" in tensors
    assert config["spec_tools"]["speculative_tokens"] == 7
    assert result.numeric_check["passed"] and result.numeric_check["max_abs_diff"] < 1e-4
    assert '"method": "eagle"' in result.serve


def test_eagle1_check_fails_when_the_fc_bias_is_dropped_instead_of_folded(tmp_path, verifier, monkeypatch):
    """The numerical check can fail: dropping fc.bias (what a naive converter does) is caught, nothing written."""

    def drop(tensors, shape, decisions, notes):
        tensors.pop("fc.bias")
        return False

    monkeypatch.setattr(safeailab_eagle, "_fold_fc_bias", drop)
    with pytest.raises(SpecError, match="does not reproduce the source"):
        run_convert(eagle1_source(tmp_path), verifier, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_lone_pt_file_with_its_config_elsewhere(tmp_path, verifier):
    source = eagle1_source(tmp_path)
    (tmp_path / "weights").mkdir()
    (source / "pytorch_model.bin").rename(tmp_path / "weights" / "draft.pt")
    with pytest.raises(SpecError, match="pass --config"):
        run_convert(tmp_path / "weights" / "draft.pt", verifier, tmp_path / "out")
    result = run_convert(tmp_path / "weights" / "draft.pt", verifier, tmp_path / "out", config_path=str(source / "config.json"))
    assert result.format == "safeailab-eagle" and result.numeric_check["passed"]


def test_hass_with_qkv_bias_and_its_own_default_depth(tmp_path, verifier):
    source = eagle1_source(tmp_path, name="hass", fc_bias=False, qkv_bias=True, layers=1)
    result = run_convert(source / "pytorch_model.bin", verifier, tmp_path / "out", source_format="hass")
    config, tensors = reloads(result)
    assert config["qkv_bias"] is True and config["attention_bias"] is False and "layers.0.self_attn.o_proj.bias" not in tensors
    assert config["spec_tools"]["speculative_tokens"] == 5 and result.numeric_check["passed"]


def test_zlab_dflash(tmp_path, verifier):
    result = run_convert(zlab_dflash_source(tmp_path), verifier, tmp_path / "out")
    assert (result.format, result.algorithm) == ("zlab-dflash", "dflash")
    config, tensors = reloads(result)
    assert config["aux_hidden_state_layer_ids"] == [2, 4, 6] and config["mask_token_id"] == 63
    assert config["sliding_window_non_causal"] is True and config["block_size"] == 4
    assert config["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 3
    assert config["transformer_layer_config"]["model_type"] == "qwen3" and "lm_head.weight" not in tensors
    assert dflash.config_problems(config) == [] and result.numeric_check["passed"], result.numeric_check


def test_zlab_dflash_last_layer_has_no_layer_id(tmp_path, verifier):
    with pytest.raises(SpecError, match="after the verifier's final norm"):
        run_convert(zlab_dflash_source(tmp_path, target_layer_ids=(1, 3, 7)), verifier, tmp_path / "out")


def test_legacy_speculators_eagle3_made_explicit(tmp_path, verifier):
    result = run_convert(legacy_speculators_source(tmp_path), verifier, tmp_path / "out")
    assert result.format == "speculators-legacy"
    config, _ = reloads(result)
    tl = config["transformer_layer_config"]
    assert "rope_theta" not in tl and tl["rope_parameters"]["rope_type"] == "llama3" and tl["rope_parameters"]["rope_theta"] == 500000.0
    assert "torch_dtype" not in config and "auto_map" not in config and config["speculators_version"] == "0.9.0"
    assert config["norm_before_residual"] is False and decision(result, "norm_before_residual")["origin"] == "default"
    assert config["eagle_aux_hidden_state_layer_ids"] == [2, 4, 5] and tl["num_aux_hidden_states"] == 3
    assert config["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 5  # recorded
    assert result.numeric_check["passed"], result.numeric_check


def test_speculators_sliding_window_layers_are_carried_over(tmp_path, verifier):
    """Issue 13.5: a speculators 0.8 config (sliding layers since 0.7) in the old rope/dtype spelling went
    through the legacy path, which dropped layer_types/sliding_window/use_sliding_window: vLLM would
    then attend to the whole context. An 8-position logit check cannot see a 2,048-token window, so
    compare the configs."""
    source = legacy_speculators_source(tmp_path)
    config = json.loads((source / "config.json").read_text())
    sliding = {"layer_types": ["sliding_attention"], "sliding_window": 2048, "use_sliding_window": True}
    config["speculators_version"] = "0.8.0"
    config["transformer_layer_config"].update(sliding)
    (source / "config.json").write_text(json.dumps(config))
    result = run_convert(source, verifier, tmp_path / "out")
    assert result.format == "speculators-legacy"
    converted, _ = reloads(result)
    assert {key: converted["transformer_layer_config"].get(key) for key in sliding} == sliding
    assert decision(result, "layer_types, sliding_window, use_sliding_window")["origin"] == "recorded"
    report = validate(result.output)
    assert any("sliding-window attention over 2048 tokens" in w and "does not model the window" in w for w in report.warnings)
    assert any(note.startswith("warning: ") and "sliding-window" in note for note in result.notes)


def test_legacy_speculators_eagle_type(tmp_path, verifier):
    result = run_convert(legacy_eagle_source(tmp_path), verifier, tmp_path / "out")
    assert (result.format, result.algorithm) == ("speculators-legacy", "eagle")
    config, _ = reloads(result)
    assert config["attention_bias"] is True and config["spec_tools"]["speculative_tokens"] == 4
    assert result.numeric_check["passed"], result.numeric_check


def test_dflash_sliding_window_non_causal_false_is_a_warning_naming_the_difference(tmp_path, verifier):
    """Issue 13.4: what upstream's converter and trainer write; valid, but vLLM runs every layer causal
    where upstream keeps full-attention layers non-causal."""
    first = run_convert(zlab_dflash_source(tmp_path), verifier, tmp_path / "ours")
    config = ckpt.read_config(first.output)
    assert not any("sliding_window_non_causal" in w for w in validate(first.output).warnings)
    config["sliding_window_non_causal"] = False
    ckpt.write_checkpoint(tmp_path / "causal", config, ckpt.load_tensors(first.output))
    report = validate(str(tmp_path / "causal"))
    assert report.ok and any("vLLM 0.33 then runs every draft layer causal" in w and "full-attention layers [0, 1]" in w for w in report.warnings)
    result = run_convert(tmp_path / "causal", verifier, tmp_path / "again")
    assert any("sliding_window_non_causal is false" in note for note in result.notes)
    config["transformer_layer_config"].update(layer_types=["sliding_attention"] * 2, sliding_window=64)
    assert not any("non_causal" in w for w in dflash.config_warnings(config))  # every layer sliding: both causal


def test_options_override_and_are_reported(tmp_path, verifier):
    options = ConvertOptions(aux_layer_ids=(1, 3, 8), norm_before_residual=True, speculative_tokens=2)
    result = run_convert(safeailab_eagle3_source(tmp_path), verifier, tmp_path / "out", options=options)
    config, _ = reloads(result)
    assert config["eagle_aux_hidden_state_layer_ids"] == [1, 3, 8] and config["norm_before_residual"] is True
    assert {d["setting"]: d["origin"] for d in result.decisions}["speculative_tokens"] == "option"
    assert result.numeric_check["passed"]


# ---- our format is a fixed point --------------------------------------------------------------


@pytest.mark.parametrize("make", ["eagle3", "dflash", "eagle"])
def test_our_format_converts_to_itself_unchanged(tmp_path, verifier, make):
    if make == "eagle3":
        config = eagle3.make_config(VERIFIER, str(verifier), eagle3.Eagle3Options(aux_layer_ids=(2, 4, 5), draft_vocab_size=40), "bfloat16")
        source = tmp_path / "ours"
        ckpt.write_checkpoint(source, config, random_checkpoint_tensors(config, dtype=torch.bfloat16))
    else:
        first = run_convert(zlab_dflash_source(tmp_path) if make == "dflash" else eagle1_source(tmp_path), verifier, tmp_path / "ours")
        source = first.output
    result = run_convert(source, verifier, tmp_path / "again")
    assert result.format == "speculators" and result.numeric_check is None
    assert ckpt.read_config(result.output) == ckpt.read_config(source)
    before, after = ckpt.load_tensors(source), ckpt.load_tensors(result.output)
    assert before.keys() == after.keys()
    assert all(a.dtype == before[n].dtype and a.view(torch.uint8).equal(before[n].view(torch.uint8)) for n, a in after.items())


def test_upstream_config_without_num_aux_hidden_states_gets_it(tmp_path, verifier):
    """Upstream 0.9.0 omits it; with 4 aux layers vLLM's Llama head would size fc for 3."""
    config = eagle3.make_config(VERIFIER, str(verifier), eagle3.Eagle3Options(aux_layer_ids=(1, 2, 4, 5)))
    tensors = random_checkpoint_tensors(config)
    del config["transformer_layer_config"]["num_aux_hidden_states"]
    ckpt.write_checkpoint(tmp_path / "upstream", config, tensors)
    result = run_convert(tmp_path / "upstream", verifier, tmp_path / "out")
    converted, _ = reloads(result)
    assert converted["transformer_layer_config"]["num_aux_hidden_states"] == 4
    assert decision(result, "transformer_layer_config.num_aux_hidden_states")["origin"] == "derived"


# ---- bad input -------------------------------------------------------------------------------


def test_unknown_layout_lists_the_known_formats(tmp_path, verifier):
    source = write_source(tmp_path / "odd", {"model_type": "llama"}, {"something.weight": torch.zeros(2, 2)})
    with pytest.raises(SpecError, match=r"no known draft layout.*zlab-dflash \(.*safeailab-eagle3 \("):
        run_convert(source, verifier, tmp_path / "out")


def test_medusa_is_recognised_and_refused_with_the_reason(tmp_path, verifier):
    source = write_source(tmp_path / "medusa", {"medusa_num_heads": 2}, {"medusa_head.0.0.linear.weight": torch.zeros(H, H)})
    with pytest.raises(SpecError, match="vLLM 0.33 removed the medusa method"):
        run_convert(source, verifier, tmp_path / "out")


class NotATensor:
    pass


def test_pickles_are_loaded_with_weights_only(tmp_path, verifier):
    source = eagle1_source(tmp_path)
    torch.save({"fc.weight": torch.zeros(H, 2 * H), "payload": NotATensor()}, source / "pytorch_model.bin")
    with pytest.raises(SpecError, match="refused: it holds pickled objects other than tensors"):
        run_convert(source, verifier, tmp_path / "out")


def test_offline_hub_id_is_a_clear_error(tmp_path, verifier, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(SpecError, match="Hub id it is not available: offline"):
        run_convert("someone/EAGLE3-nothing-here", verifier, tmp_path / "out")


def test_wrong_verifier_and_unsafe_outputs_are_refused(tmp_path, verifier):
    source = safeailab_eagle3_source(tmp_path)
    other = write_fake_verifier(tmp_path / "other", {**VERIFIER, "vocab_size": 128})
    with pytest.raises(SpecError, match="wrong verifier"):
        run_convert(source, other, tmp_path / "out")
    with pytest.raises(SpecError, match="would replace the source"):
        run_convert(source, verifier, source)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("precious")
    with pytest.raises(SpecError, match="refusing to replace it"):
        run_convert(source, verifier, tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "precious"


def test_a_failed_check_keeps_the_previous_output(tmp_path, verifier, monkeypatch):
    good = run_convert(specforge_source(tmp_path), verifier, tmp_path / "out")
    before = (tmp_path / "out" / "model.safetensors").read_bytes()
    # Taking SpecForge's `norm_output: true` at face value (vLLM's meaning) is the classic mistake; the check catches it.
    original = specforge_eagle3.Eagle3Facts

    def naive(**fields):
        return original(**{**fields, "norm_output": True})

    monkeypatch.setattr(specforge_eagle3, "Eagle3Facts", naive)
    with pytest.raises(SpecError, match="does not reproduce the source"):
        run_convert(specforge_source(tmp_path / "again"), verifier, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == before and good.numeric_check["passed"]


def test_existing_checkpoint_output_is_refused_unless_overwrite_then_other_files_stay(tmp_path, verifier):
    """Issue 16 item 3: -o replaced a folder wholesale (its weights, NOTES.md, optimizer.pt gone), even one for another verifier."""
    out = tmp_path / "out"
    old = run_convert(specforge_source(tmp_path), verifier, out)
    (out / "NOTES.md").write_text("why this run exists")
    (out / "optimizer.pt").write_bytes(b"optimizer state")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    source = str(zlab_dflash_source(tmp_path))
    with pytest.raises(SpecError, match=rf"^{out}: already holds a checkpoint \(for verifier .*\); refusing to replace it \(pass --overwrite"):
        main([source, "--verifier", str(verifier), "-o", str(out)])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and old.algorithm == "eagle3"

    assert main([source, "--verifier", str(verifier), "-o", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["NOTES.md", "config.json", "model.safetensors", "optimizer.pt"]
    assert (out / "NOTES.md").read_bytes() == before["NOTES.md"] and (out / "optimizer.pt").read_bytes() == before["optimizer.pt"]
    assert validate(str(out)).ok and ckpt.read_config(out)["speculators_model_type"] == "dflash"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_overwrite_drops_the_old_checkpoints_index_and_shards(tmp_path, verifier):
    out = tmp_path / "out"
    run_convert(nvidia_source(tmp_path), verifier, out)
    sharded = write_source(tmp_path / "sharded-copy", ckpt.read_config(out), ckpt.load_tensors(out), kind="sharded")
    for file in sharded.iterdir():  # the output now is the same checkpoint, sharded
        (out / file.name).write_bytes(file.read_bytes())
    (out / "model.safetensors").unlink()
    (out / "config.json").write_text(json.dumps(ckpt.with_weight_digests(ckpt.read_config(out), out)))  # the shards' digests
    assert validate(str(out)).ok
    run_convert(specforge_source(tmp_path), verifier, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no stale index to shadow the new weights
    assert validate(str(out)).ok


# ---- the command line -----------------------------------------------------------------------


def test_cli_json_and_human_output(tmp_path, verifier, capsys):
    source = zlab_dflash_source(tmp_path)
    assert main([str(source), "--verifier", str(verifier), "-o", str(tmp_path / "a"), "--json", "--speculative-tokens", "2"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["format"] == "zlab-dflash" and document["numeric_check"]["passed"]
    assert {"setting": "speculative_tokens", "value": 2, "origin": "option", "reason": "given on the command line"} in document["decisions"]
    assert main([str(source), "--verifier", str(verifier), "-o", str(tmp_path / "b"), "--layers", "2,4,6"]) == 0
    text = capsys.readouterr().out
    assert "converted" in text and "sliding_window_non_causal = true" in text and "logits match" in text and "vllm serve" in text


def test_cli_json_error_is_a_json_document_and_a_line_on_stderr(tmp_path, verifier, capsys):
    """Issue 13.1: with --json a failed conversion printed nothing on stdout."""
    source = write_source(tmp_path / "odd", {"model_type": "llama"}, {"something.weight": torch.zeros(2, 2)})
    with pytest.raises(SystemExit) as exit_info:
        run(main, [str(source), "--verifier", str(verifier), "-o", str(tmp_path / "out"), "--json"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["ok"] is False and "no known draft layout" in document["error"] and document["output"] == str(tmp_path / "out")
    assert "error:" in captured.err and "no known draft layout" in captured.err


def test_cli_check_acceptance_without_local_weights_says_why(tmp_path, verifier, capsys):
    assert main([str(safeailab_eagle3_source(tmp_path)), "--verifier", str(verifier), "-o", str(tmp_path / "o"), "--check-acceptance", "--json"]) == 0
    assert "not local" in json.loads(capsys.readouterr().out)["acceptance"]["skipped"]


def saved_tiny_verifier(directory):
    """A real tiny Llama verifier (weights and a word-level tokenizer): enough for the engine to run."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{k: v for k, v in VERIFIER.items() if k not in ("architectures", "model_type")})).save_pretrained(directory)
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(V)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="t63", pad_token="t0").save_pretrained(directory)
    return directory


@pytest.mark.parametrize(
    "make, k, borrowed",
    [
        (safeailab_eagle3_source, 7, "none (the draft has its own embed_tokens and lm_head)"),
        (eagle1_source, 7, "the verifier's lm_head"),
        (zlab_dflash_source, 3, "the verifier's embed_tokens and lm_head"),
    ],
)
def test_check_acceptance_runs_spec_bench_with_local_verifier_weights(tmp_path, make, k, borrowed):
    verifier = saved_tiny_verifier(tmp_path / "verifier")
    result = run_convert(make(tmp_path), verifier, tmp_path / "out", check_acceptance=True)
    assert result.numeric_check["shared_weights"] == borrowed  # the check reads from the verifier only what the draft lacks
    acceptance = result.acceptance
    assert acceptance["k"] == k and acceptance["lossless"] is True and 1.0 <= acceptance["tau"] <= k + 1
    assert sum(acceptance["histogram"]) > 0


# ---- vLLM and upstream speculators load what we write (the interop gates, when installed) ------


@pytest.mark.parametrize(
    "make, gates",
    [
        (safeailab_eagle3_source, ["vllm", "upstream"]),
        (specforge_source, ["vllm", "upstream"]),
        (nvidia_source, ["vllm", "upstream"]),
        (legacy_speculators_source, ["vllm", "upstream"]),
        (zlab_dflash_source, ["vllm", "upstream"]),  # issue 13.2: vLLM's mask_embedding is not a checkpoint tensor
        (eagle1_source, ["vllm", "upstream"]),  # issue 13.3: method eagle; upstream has no EAGLE-1 type (not applicable)
    ],
)
def test_vllm_and_upstream_load_the_result(tmp_path, make, gates):
    """Upstream reads the verifier's weights when loading, so the verifier here is a saved model."""
    require_gates()
    verifier = saved_tiny_verifier(tmp_path / "verifier")
    result = run_convert(make(tmp_path), verifier, tmp_path / "out")
    reports = gate_reports([result.output], gates)
    assert len(reports) == len(gates)
    for (path, gate), report in reports.items():
        assert report.ok, f"{gate} gate: {report.problems}"


def test_vllm_gate_on_dflash_and_eagle1_folders_sees_what_is_missing(tmp_path, verifier):
    """Issues 13.2-13.3: DFlash's top-level hidden_norm is a real tensor (not EAGLE-3's unused per-layer
    norm); vLLM's mask_embedding comes only from a mask_embedding.pt; EAGLE-1 folders load with method eagle."""
    require_gates()
    dflash_dir = run_convert(zlab_dflash_source(tmp_path), verifier, tmp_path / "dflash-out").output
    eagle1_dir = run_convert(eagle1_source(tmp_path), verifier, tmp_path / "eagle1-out").output
    variants = {"dflash": dflash_dir, "eagle1": eagle1_dir}
    for name, base, drop in (("dflash-no-hidden-norm", dflash_dir, "hidden_norm.weight"), ("eagle1-no-norm", eagle1_dir, "layers.1.input_layernorm.weight")):
        tensors = ckpt.load_tensors(base)
        tensors.pop(drop)
        variants[name] = str(ckpt.write_checkpoint(tmp_path / name, ckpt.read_config(base), tensors))
    mask_dir = tmp_path / "dflash-mask-embedding"
    ckpt.write_checkpoint(mask_dir, ckpt.read_config(dflash_dir), ckpt.load_tensors(dflash_dir))
    torch.save({"mask_token_id": 63, "embedding": torch.randn(H)}, mask_dir / "mask_embedding.pt")
    variants["dflash-mask-embedding"] = str(mask_dir)
    reports = gate_reports(variants.values(), ["vllm"])
    vllm = {name: reports[(str(path), "vllm")] for name, path in variants.items()}
    assert vllm["dflash"].ok and vllm["eagle1"].ok and vllm["dflash-mask-embedding"].ok, {n: r.problems for n, r in vllm.items()}
    assert "model.mask_embedding" in vllm["dflash"].facts["not_from_checkpoint"]
    assert "model.mask_embedding" not in vllm["dflash-mask-embedding"].facts["not_from_checkpoint"]  # loaded from the .pt
    assert "model.hidden_norm.weight" not in vllm["dflash"].facts["not_from_checkpoint"]
    assert any("vLLM parameter model.hidden_norm.weight [16]: 16 of 16 values were not loaded" in p for p in vllm["dflash-no-hidden-norm"].problems)
    assert vllm["eagle1"].facts["method"] == "eagle" and vllm["eagle1"].facts["draft_architecture"] == "EagleLlamaForCausalLM"
    assert '"method": "eagle"' in vllm["eagle1"].facts["serve"]
    assert any("model.layers.1.input_layernorm.weight [16]: 16 of 16 values were not loaded" in p for p in vllm["eagle1-no-norm"].problems)
    for name in ("dflash-no-hidden-norm", "eagle1-no-norm"):
        assert not validate(variants[name]).ok  # our own checks name the missing tensor too


# ---- bounded memory -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def import_floor_bytes():
    """Peak RSS of a child that only imports spec-convert (Python, torch, transformers): the fixed
    floor every conversion starts from, subtracted so the bound below is about the source."""
    from tools.bench_convert import child_env, run_measured

    return run_measured([sys.executable, "-c", "import tools.spec_convert, libspec.convert.check"], child_env()).peak_rss_bytes


@pytest.mark.parametrize("layout, scale", [("zlab-dflash-qwen3-8b", 0.35), ("safeailab-eagle3-llama3.1-8b", 0.3)])
def test_converting_holds_at_most_twice_the_source_in_memory(tmp_path, import_floor_bytes, layout, scale):
    """A ~250 MB source in its published layout (safetensors bf16 / pickled fp16) converts, logit
    check included, with peak RSS above the import floor of at most 2x the source's bytes (main
    before issue 13 needed ~11x: float32 copies of source, output and verifier tables)."""
    from tools import convert_sources
    from tools.bench_convert import child_env, ours_command, run_measured

    source, verifier = convert_sources.write_layout(convert_sources.LAYOUTS[layout].scaled(scale), tmp_path / "built")
    size = convert_sources.source_bytes(source)
    assert 150e6 < size < 400e6  # big enough that allocator noise is small beside it
    child = run_measured(ours_command(source, verifier, tmp_path / "out"), child_env())
    assert child.returncode == 0, child.output[-2000:]
    assert json.loads(child.output[child.output.index("{") :])["numeric_check"]["passed"]
    above_floor = child.peak_rss_bytes - import_floor_bytes
    assert above_floor <= 2 * size, f"peak {child.peak_rss_bytes / 1e6:.0f} MB, floor {import_floor_bytes / 1e6:.0f} MB, source {size / 1e6:.0f} MB"


def test_pickles_in_torchs_legacy_format_are_read_without_a_map(tmp_path):
    """torch.load can map only the zip format (torch.save's since 1.6); older files are read whole."""
    from libspec.convert.source import read_weights

    tensors = {"fc.weight": torch.randn(4, 8), "d2t": torch.arange(3)}
    torch.save(tensors, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    torch.save(tensors, tmp_path / "zip.bin")
    for name in ("legacy.bin", "zip.bin"):
        read = read_weights(tmp_path / name)
        assert read.keys() == tensors.keys() and all(torch.equal(read[n], t) for n, t in tensors.items())
