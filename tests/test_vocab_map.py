"""The draft vocabulary: most frequent supervised tokens, SPEC.md's d2t offsets and t2d mask."""

from __future__ import annotations

import pytest
import torch

from libspec.errors import SpecError
from libspec.validate.artifacts import vocab_map_problems
from libspec.train.vocab_map import build_vocab_map, count_supervised_tokens, vocab_map_from_checkpoint


def test_counts_only_supervised_tokens():
    records = [{"input_ids": [1, 2, 2, 3], "loss_mask": [0, 1, 1, 0]}, {"input_ids": [3, 3], "loss_mask": [1, 1]}]
    assert count_supervised_tokens(records, 5).tolist() == [0, 0, 2, 2, 0]


def test_most_frequent_ids_ties_by_id_and_maps_are_consistent():
    counts = torch.tensor([0, 5, 1, 5, 0, 9, 0, 0])
    vocab = build_vocab_map(counts, 4)
    assert vocab.draft_to_verifier.tolist() == [1, 2, 3, 5]
    assert vocab.d2t.tolist() == [1, 1, 1, 2]  # verifier id = draft id + d2t
    assert vocab.t2d.nonzero().flatten().tolist() == [1, 2, 3, 5]
    assert vocab_map_problems(vocab.d2t, vocab.t2d, 8) == []
    assert torch.equal(vocab_map_from_checkpoint(vocab.d2t, 8).draft_to_verifier, vocab.draft_to_verifier)


def test_unseen_ids_fill_the_draft_vocabulary_by_ascending_id():
    vocab = build_vocab_map(torch.tensor([0, 0, 3, 0, 0]), 3)
    assert vocab.draft_to_verifier.tolist() == [0, 1, 2]


def test_full_vocabulary_by_default():
    vocab = build_vocab_map(torch.ones(10, dtype=torch.int64), None)
    assert vocab.is_full and vocab.draft_to_verifier.tolist() == list(range(10))


def test_sizes_outside_the_vocabulary_are_refused():
    with pytest.raises(SpecError, match="--draft-vocab-size 11"):
        build_vocab_map(torch.ones(10, dtype=torch.int64), 11)
