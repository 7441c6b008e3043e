"""Acceptance measured with a real drafting loop: lossless greedy output, tau from the histogram, training helps."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_LLAMA
from libspec import checkpoint as ckpt
from libspec.acceptance import AcceptanceCounts, measure_acceptance
from libspec.algorithms.eagle3_model import Eagle3Draft
from libspec.training import TrainConfig, build_draft, prepare, train
from verifier_data import greedy, greedy_records, load_verifier, make_dataset, make_verifier

WIDER = {**TINY_LLAMA, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A verifier, a data set of its own greedy replies, and a draft trained on it."""
    root = tmp_path_factory.mktemp("acceptance")
    verifier_dir = make_verifier(root / "verifier", WIDER, head_scale=2.0)
    verifier = load_verifier(verifier_dir)
    data = make_dataset(verifier_dir, root / "data", greedy_records(verifier, 120, new_tokens=24))
    config = TrainConfig(data=str(data), verifier=str(verifier_dir), output=str(root / "run"), epochs=8,
                         tokens_per_batch=256, lr=1e-2, val_fraction=0.1, save_dtype="float32")  # fmt: skip
    train(config)
    return verifier, config, root / "run"


def load_draft(path) -> Eagle3Draft:
    draft = Eagle3Draft(ckpt.read_config(path))
    draft.load_checkpoint_tensors(ckpt.load_tensors(path))
    return draft.eval()


def test_speculative_output_is_the_verifiers_greedy_output(trained):
    verifier, _, run = trained
    prompts = [record["input_ids"][:5] for record in greedy_records(verifier, 4, seed=7, new_tokens=0)]
    counts = measure_acceptance(verifier, load_draft(run / "best"), prompts, draft_tokens=3, max_new_tokens=20)
    assert counts.outputs == [greedy(verifier, prompt, 20) for prompt in prompts]
    assert counts.new_tokens == 80 and counts.rounds <= 80


def test_training_raises_acceptance_on_held_out_prompts(trained):
    verifier, config, run = trained
    prompts = [record["input_ids"][:4] for record in greedy_records(verifier, 10, seed=99, new_tokens=0)]
    untrained = measure_acceptance(verifier, build_draft(prepare(config)).eval(), prompts, 3, 24)
    learned = measure_acceptance(verifier, load_draft(run / "best"), prompts, 3, 24)
    assert learned.tau > untrained.tau + 0.05, (untrained.to_dict(), learned.to_dict())


def test_tau_and_per_position_rates_come_from_the_histogram():
    counts = AcceptanceCounts([2, 1, 0, 1])  # 4 rounds accepting 0, 0, 1 and 3 drafts
    assert counts.rounds == 4
    assert counts.tau == pytest.approx(1 + 4 / 4)
    assert counts.acceptance_per_position() == pytest.approx([0.5, 0.25, 0.25])
