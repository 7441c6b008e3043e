"""A trained draft raises acceptance in the real drafting loop (libspec.bench.decoding) on held-out prompts."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_LLAMA
from libspec.algorithms.eagle3.model import Eagle3Proposer, load_proposer
from libspec.bench.decoding import DecodingVerifier, autoregressive_generate, speculative_generate
from libspec.train.config import TrainConfig
from libspec.train.loop import build_draft, prepare, train
from verifier_data import greedy_records, load_verifier, make_dataset, make_verifier

WIDER = {**TINY_LLAMA, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A verifier, a data set of its own greedy replies, and a draft trained on it."""
    root = tmp_path_factory.mktemp("acceptance")
    verifier_dir = make_verifier(root / "verifier", WIDER, head_scale=2.0)
    model = load_verifier(verifier_dir)
    data = make_dataset(verifier_dir, root / "data", greedy_records(model, 120, new_tokens=24))
    config = TrainConfig(data=str(data), verifier=str(verifier_dir), output=str(root / "run"), epochs=8,
                         tokens_per_batch=256, lr=1e-2, val_fraction=0.1, save_dtype="float32")  # fmt: skip
    train(config)
    return model, config, root / "run"


def tau(model, proposer, prompts, k=3, new_tokens=24) -> tuple[float, list[list[int]]]:
    verifier = DecodingVerifier(model, proposer.aux_layer_ids)
    accepted, rounds, outputs = 0, 0, []
    for prompt in prompts:
        generation = speculative_generate(verifier, proposer, torch.tensor(prompt), k, new_tokens, set())
        accepted += sum(generation.accepted_per_round)
        rounds += len(generation.accepted_per_round)
        outputs.append(generation.tokens)
    return 1 + accepted / rounds, outputs


def test_training_raises_acceptance_on_held_out_prompts(trained):
    model, config, run = trained
    prompts = [record["input_ids"][:4] for record in greedy_records(model, 10, seed=99, new_tokens=0)]
    run_config = prepare(config)
    untrained = Eagle3Proposer(build_draft(run_config), run_config.aux_layer_ids)
    tau_untrained, _ = tau(model, untrained, prompts)
    tau_trained, outputs = tau(model, load_proposer(run / "best", model), prompts)
    assert tau_trained > tau_untrained + 0.05, (tau_untrained, tau_trained)
    plain = DecodingVerifier(model)
    assert outputs == [autoregressive_generate(plain, torch.tensor(p), 24, set()).tokens for p in prompts]
