"""The teacher: the verifier's own final norm and lm_head reproduce its logits from the pre-norm state (layer id n)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, LlamaConfig, Qwen3Config

from libspec.errors import SpecError
from libspec.train.teacher import load_verifier_head

SMALL = {"vocab_size": 48, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 8, "max_position_embeddings": 64}  # fmt: skip
FAMILIES = {
    "llama": lambda: LlamaConfig(**SMALL),
    "qwen3": lambda: Qwen3Config(**SMALL),
    # Gemma: (1 + w) norms, tied embeddings, and (Gemma 2) logit soft-capping
    "gemma2": lambda: Gemma2Config(**SMALL, final_logit_softcapping=5.0),
    "gemma3": lambda: Gemma3TextConfig(**SMALL),
}


def save_model(directory, config):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)  # norm weights too, so (1 + w) and w differ
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_logits_equal_the_verifiers(tmp_path, family):
    model = save_model(tmp_path / "v", FAMILIES[family]())
    head = load_verifier_head(str(tmp_path / "v"))
    ids = torch.randint(0, 48, (1, 6))
    captured = {}
    norm = model.model.norm
    handle = norm.register_forward_pre_hook(lambda m, args: captured.__setitem__("pre", args[0]))
    with torch.no_grad():
        logits = model(ids).logits
    handle.remove()
    torch.testing.assert_close(head.teacher(captured["pre"]), logits.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head.embed_tokens, model.get_input_embeddings().weight.detach())
    assert not any(p.requires_grad for p in head.teacher.parameters())


def test_missing_weights_are_named(tmp_path):
    save_model(tmp_path / "v", FAMILIES["llama"]())
    (tmp_path / "v" / "model.safetensors").unlink()
    with pytest.raises(SpecError, match="no model.safetensors"):
        load_verifier_head(str(tmp_path / "v"))


def test_sharded_weights_are_read_through_the_index(tmp_path):
    model = save_model(tmp_path / "v", FAMILIES["llama"]())
    model.save_pretrained(tmp_path / "sharded", max_shard_size="5KB")
    assert json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())["weight_map"]
    head = load_verifier_head(str(tmp_path / "sharded"))
    torch.testing.assert_close(head.teacher.lm_head.weight, model.lm_head.weight.detach())
