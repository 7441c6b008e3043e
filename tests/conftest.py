"""Shared test helpers: tiny verifier folders and data sets built in-line, nothing downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# Tests run on 2 shared cores in CI: one torch thread is both fastest and most predictable there.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 8,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}


def write_fake_verifier(directory: Path, config: dict | None = None) -> Path:
    """A verifier folder with a config.json and stand-in tokenizer files: enough to fingerprint."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config or TINY_LLAMA))
    (directory / "tokenizer.json").write_text('{"model": "stand-in"}')
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return directory


@pytest.fixture
def fake_verifier(tmp_path) -> Path:
    return write_fake_verifier(tmp_path / "verifier")


def random_samples(count: int, vocab: int, layers: int, hidden: int, seed: int = 0, min_len: int = 3, max_len: int = 20):
    """(record, hidden) pairs with random lengths, ids and values."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(count):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=generator))
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        mask = (torch.rand(length, generator=generator) > 0.4).long().tolist()
        record = {"id": f"sample-{index}", "input_ids": ids, "loss_mask": mask, "metadata": {"source": "test"}}
        samples.append((record, torch.randn(length, layers, hidden, generator=generator)))
    return samples


def vocab_maps(vocab: int, draft_vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A valid (d2t, t2d) pair: d2t is an offset table, t2d marks the chosen verifier ids."""
    chosen = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))[:draft_vocab].sort().values
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[chosen] = True
    return chosen - torch.arange(draft_vocab), t2d


def random_checkpoint_tensors(config: dict, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights with exactly the names and shapes a speculator config implies."""
    from libspec.algorithms import algorithm_for

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, spec in algorithm_for(config["speculators_model_type"]).expected_tensors(config).items():
        if spec.kind == "float":
            tensors[name] = (torch.randn(spec.shape, generator=generator) * 0.02).to(dtype)
    if "d2t" in tensors or config.get("draft_vocab_size") != config["transformer_layer_config"]["vocab_size"]:
        tensors["d2t"], tensors["t2d"] = vocab_maps(config["transformer_layer_config"]["vocab_size"], config["draft_vocab_size"], seed)
    return tensors
