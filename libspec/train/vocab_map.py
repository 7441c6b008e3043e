"""The draft vocabulary: the verifier ids a reduced `lm_head` covers, and the maps between the two.

EAGLE-3 drafts may predict over a subset of the verifier's vocabulary (the `draft_vocab_size` most
frequent supervised tokens) to make `lm_head` cheaper. SPEC.md §11.2 stores the choice as
`d2t` (int64 [D], an offset table: verifier id = draft id + d2t[draft id]) and `t2d`
(bool [V], true for exactly the D verifier ids in the draft vocabulary).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import torch

from libspec.errors import SpecError


SMALL_VOCAB = 32768  # up to this size the draft predicts over the full vocabulary by default
REDUCED_DRAFT_VOCAB = 32000  # EAGLE-3's usual draft vocabulary above it


def choose_draft_vocab_size(requested: int | None, vocab_size: int) -> int | None:
    """The draft vocabulary to build: as requested, else the full one up to 32k tokens, else 32000."""
    if requested is None and vocab_size > SMALL_VOCAB:
        return REDUCED_DRAFT_VOCAB
    return requested


@dataclass(frozen=True)
class VocabMap:
    """The verifier ids of the draft vocabulary, ascending; `None` maps mean the full vocabulary."""

    draft_to_verifier: torch.Tensor  # int64 [D], ascending verifier ids
    vocab_size: int

    @property
    def draft_vocab_size(self) -> int:
        return len(self.draft_to_verifier)

    @property
    def is_full(self) -> bool:
        return self.draft_vocab_size == self.vocab_size

    @property
    def d2t(self) -> torch.Tensor:
        """The offset table of SPEC.md: verifier id = draft id + d2t[draft id]."""
        return self.draft_to_verifier - torch.arange(self.draft_vocab_size)

    @property
    def t2d(self) -> torch.Tensor:
        """bool [V]: which verifier ids the draft vocabulary holds."""
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        mask[self.draft_to_verifier] = True
        return mask


def count_supervised_tokens(records: Iterable[dict], vocab_size: int) -> torch.Tensor:
    """How often each verifier id occurs where `loss_mask` is 1: int64 [vocab_size]."""
    counts: Counter[int] = Counter()
    for record in records:
        counts.update(token for token, supervised in zip(record["input_ids"], record["loss_mask"]) if supervised)
    table = torch.zeros(vocab_size, dtype=torch.int64)
    if counts:
        ids = torch.tensor(list(counts.keys()), dtype=torch.int64)
        table[ids] = torch.tensor(list(counts.values()), dtype=torch.int64)
    return table


def build_vocab_map(token_counts: torch.Tensor, draft_vocab_size: int | None) -> VocabMap:
    """The `draft_vocab_size` most frequent ids (ties and unseen ids by ascending id); None = all."""
    vocab_size = len(token_counts)
    size = vocab_size if draft_vocab_size is None else draft_vocab_size
    if not 0 < size <= vocab_size:
        raise SpecError(f"--draft-vocab-size {size}: expected a value in [1, {vocab_size}] (the verifier's vocabulary size)")
    # A stable sort on -count keeps equal counts in id order, so the choice is deterministic.
    order = torch.sort(-token_counts, stable=True).indices
    return VocabMap(order[:size].sort().values, vocab_size)


def vocab_map_from_checkpoint(d2t: torch.Tensor | None, vocab_size: int) -> VocabMap:
    """The map a checkpoint stores (no d2t: the full vocabulary)."""
    if d2t is None:
        return VocabMap(torch.arange(vocab_size), vocab_size)
    return VocabMap(d2t + torch.arange(len(d2t)), vocab_size)
