"""Packing training samples into fixed-token batches, deterministically and resumably.

A sample of L tokens gives L-1 *draft queries*: query i reads the verifier's hidden states at
token i and the next token i+1, and learns the verifier's distribution for token i+2 (upstream's
`shift_batch` alignment). A batch is one row of queries from several samples side by side, each
query tagged with its document (sample) so attention and TTT shifts never cross documents.

The plan of an epoch (which samples go in which batch, in which order) is a pure function of
(sample lengths, token budget, seed, epoch), so a resumed run rebuilds it and skips the batches
already done.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class PackedBatch:
    """One packed row of draft queries (batch dimension 1, as upstream and vLLM pack)."""

    tokens: torch.Tensor  # int64 [1, T]: the token after each query's hidden state (x_{i+1})
    aux_hidden: torch.Tensor  # float [1, T, A*H]: aux layers at token i, ascending layer id
    last_hidden: torch.Tensor  # float [1, T, H]: layer n at token i+1, the teacher's input
    loss_mask: torch.Tensor  # bool [1, T]: loss_mask of token i+1
    positions: torch.Tensor  # int64 [1, T]: i, the position of the hidden state (vLLM's convention; RoPE is relative)
    document_ids: torch.Tensor  # int64 [1, T]: which sample of the batch each query belongs to

    @property
    def num_queries(self) -> int:
        return self.tokens.shape[1]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "PackedBatch":
        """The batch on `device`, float tensors in `dtype` (default: unchanged)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if (dtype and t.is_floating_point()) else t.dtype, non_blocking=True)

        return PackedBatch(*(move(getattr(self, f)) for f in self.__dataclass_fields__))


def num_queries(num_tokens: int, max_queries: int) -> int:
    """Draft queries a sample of `num_tokens` gives in a batch of `max_queries` (long samples are cut)."""
    return min(max(num_tokens - 1, 0), max_queries)


PACKING_WINDOW = 64  # bounds first-fit's search so planning stays linear in the number of samples


def plan_epoch(query_counts: Sequence[int], max_queries: int, seed: int, epoch: int) -> list[list[int]]:
    """Sample indices per batch for one epoch: shuffled, first-fit packed (over recent batches), batches shuffled again.

    Samples with no query are left out. Deterministic in (counts, budget, seed, epoch).
    """
    generator = torch.Generator().manual_seed(_mix(seed, epoch))
    order = torch.randperm(len(query_counts), generator=generator).tolist()
    bins: list[list[int]] = []
    free: list[int] = []
    recent: list[int] = []  # bins with room left, most recent last; first fit looks at the last PACKING_WINDOW
    for index in order:
        size = min(query_counts[index], max_queries)
        if size <= 0:
            continue
        slot = next((b for b in recent[-PACKING_WINDOW:] if free[b] >= size), None)
        if slot is None:
            slot = len(bins)
            bins.append([])
            free.append(max_queries)
            recent.append(slot)
        bins[slot].append(index)
        free[slot] -= size
        if free[slot] == 0:
            recent.remove(slot)
    # First-fit fills early bins first; shuffling bins keeps full and partial batches interleaved.
    return [bins[b] for b in torch.randperm(len(bins), generator=generator).tolist()]


def _mix(seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"spec-train/{seed}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def build_batch(
    samples: Sequence[tuple[dict, torch.Tensor]],
    aux_index: Sequence[int],
    last_index: int,
    max_queries: int,
) -> PackedBatch:
    """Pack `(record, hidden [L, layers, H] float)` samples; `aux_index`/`last_index` pick layers of `hidden`."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in PackedBatch.__dataclass_fields__}
    for document, (record, hidden) in enumerate(samples):
        count = num_queries(len(record["input_ids"]), max_queries)
        ids = torch.tensor(record["input_ids"][: count + 1], dtype=torch.int64)
        mask = torch.tensor(record["loss_mask"][: count + 1], dtype=torch.bool)
        hidden = hidden[: count + 1]
        parts["tokens"].append(ids[1:])
        parts["aux_hidden"].append(hidden[:-1, list(aux_index)].flatten(1))  # [count, A*H], ascending ids
        parts["last_hidden"].append(hidden[1:, last_index])
        parts["loss_mask"].append(mask[1:])
        parts["positions"].append(torch.arange(count))
        parts["document_ids"].append(torch.full((count,), document, dtype=torch.int64))
    return PackedBatch(**{name: torch.cat(chunks).unsqueeze(0) for name, chunks in parts.items()})


def is_validation_record(record_id: str, fraction: float) -> bool:
    """Whether a record is held out for validation: a hash of its id, so the split never depends on order."""
    if fraction <= 0:
        return False
    bucket = int.from_bytes(hashlib.sha256(record_id.encode("utf-8")).digest()[:4], "little") / 2**32
    return bucket < fraction


BatchLoader = Callable[[list[int]], PackedBatch]
