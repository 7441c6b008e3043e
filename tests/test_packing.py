"""Packing: deterministic epoch plans within the token budget, and the shift alignment of a batch."""

from __future__ import annotations

import torch

from libspec.train.packing import build_batch, is_validation_record, num_queries, plan_epoch


def test_plan_uses_every_sample_once_within_the_budget():
    counts = [5, 17, 3, 0, 30, 12, 8, 1, 9]
    plan = plan_epoch(counts, max_queries=32, seed=0, epoch=0)
    flat = sorted(i for batch in plan for i in batch)
    assert flat == [i for i, c in enumerate(counts) if c > 0]
    assert all(sum(counts[i] for i in batch) <= 32 for batch in plan)


def test_plan_is_a_function_of_seed_and_epoch():
    counts = list(range(1, 40))
    assert plan_epoch(counts, 50, seed=3, epoch=1) == plan_epoch(counts, 50, seed=3, epoch=1)
    assert plan_epoch(counts, 50, seed=3, epoch=1) != plan_epoch(counts, 50, seed=3, epoch=2)
    assert plan_epoch(counts, 50, seed=3, epoch=1) != plan_epoch(counts, 50, seed=4, epoch=1)


def test_long_samples_are_cut_to_the_budget():
    assert num_queries(100, 32) == 32 and num_queries(1, 32) == 0 and num_queries(10, 32) == 9
    record = {"id": "a", "input_ids": list(range(50)), "loss_mask": [1] * 50}
    batch = build_batch([(record, torch.zeros(50, 2, 4))], [0], 1, max_queries=32)
    assert batch.num_queries == 32


def test_batch_aligns_hidden_state_i_with_token_i_plus_1():
    hidden = torch.arange(6 * 3 * 2, dtype=torch.float32).reshape(6, 3, 2)  # layers: aux a, aux b, last
    first = {"id": "a", "input_ids": [10, 11, 12, 13, 14, 15], "loss_mask": [0, 0, 1, 1, 1, 1]}
    second = {"id": "b", "input_ids": [20, 21, 22], "loss_mask": [1, 1, 1]}
    batch = build_batch([(first, hidden), (second, hidden[:3])], [0, 1], 2, max_queries=64)
    assert batch.tokens.tolist() == [[11, 12, 13, 14, 15, 21, 22]]
    assert batch.positions.tolist() == [[0, 1, 2, 3, 4, 0, 1]]
    assert batch.document_ids.tolist() == [[0, 0, 0, 0, 0, 1, 1]]
    assert batch.loss_mask.tolist() == [[False, True, True, True, True, True, True]]
    torch.testing.assert_close(batch.aux_hidden[0, 0], hidden[0, :2].flatten())  # aux of token 0, layers in order
    torch.testing.assert_close(batch.last_hidden[0, 0], hidden[1, 2])  # the teacher reads token 1
    torch.testing.assert_close(batch.last_hidden[0, 5], hidden[1, 2])


def test_validation_split_depends_on_the_id_only():
    ids = [f"record-{i}" for i in range(2000)]
    held = [i for i in ids if is_validation_record(i, 0.1)]
    assert 150 < len(held) < 250
    assert held == [i for i in reversed(ids) if is_validation_record(i, 0.1)][::-1]
    assert not any(is_validation_record(i, 0.0) for i in ids)
