"""Random access to the samples of a data source, for training epochs in any order.

A data set directory is memory-mapped: only the records (token ids and masks) are read up front,
hidden states are decoded when a batch needs them. Every tensor shard is opened (checksum, header,
rows per record) up front too, so damage stops a run before its first step, never in mid-epoch. A stream (`-` or a stream file) can be read only
once, so its samples are kept in memory (in their storage dtype) and fingerprinted as they arrive.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

import torch

from libspec.format.sample_io import open_data
from libspec.format.dataset import Dataset
from libspec.format.sample import Sample
from libspec.errors import SpecError, where
from libspec.format.tensors import TensorShard, decode_hidden


@dataclass
class SampleTable:
    """The records of a source and a way to fetch each one's hidden states."""

    header: dict
    records: list[dict]
    fingerprint: str  # SPEC.md §9 data set fingerprint, or sha256 of a stream's content
    kind: str  # "dataset" or "stream"
    _fetch: list  # per record: (shard, row) for a data set, the Sample for a stream
    _dataset: Dataset | None = None

    @property
    def layer_ids(self) -> list[int]:
        return self.header["hidden_states"]["layer_ids"]

    def hidden(self, index: int, layers: Sequence[int]) -> torch.Tensor:
        """float32 [tokens, len(layers), H]: the hidden states of record `index` at positions `layers` of the layer axis."""
        if self._dataset is not None:
            shard, row = self._fetch[index]
            stored, scales = self._dataset.shard_tensors(shard).record_rows(row)
        else:
            sample: Sample = self._fetch[index]
            stored, scales = sample.hidden, sample.scales
        picked = list(layers)
        return decode_hidden(stored[:, picked], None if scales is None else scales[:, picked], torch.float32)


def open_sample_table(source: str | Path, stdin: BinaryIO | None = None) -> SampleTable:
    """Index a data set directory, or read a stream completely into memory."""
    opened = open_data(source, stdin)
    if isinstance(opened, Dataset):
        records, fetch = [], []
        for shard in range(opened.num_shards):
            shard_records = opened.shard_records(shard)
            _check_rows(opened.shard_tensors(shard), shard_records)
            for row, record in enumerate(shard_records):
                records.append(record)
                fetch.append((shard, row))
        return SampleTable(opened.header, records, opened.fingerprint, "dataset", fetch, opened)
    digest = hashlib.sha256(json.dumps(opened.header, sort_keys=True).encode())
    records, samples = [], []
    for sample in opened:
        digest.update(json.dumps(sample.record, sort_keys=True).encode())
        digest.update(sample.hidden.contiguous().view(torch.uint8).numpy().tobytes())
        if sample.scales is not None:
            digest.update(sample.scales.contiguous().numpy().tobytes())
        records.append(sample.record)
        samples.append(sample)
    return SampleTable(opened.header, records, digest.hexdigest(), "stream", samples)


def _check_rows(tensors: TensorShard, records: list[dict]) -> None:
    """Each record owns exactly len(input_ids) rows of its tensor shard (SPEC.md §9, "Reading")."""
    rows = (tensors.offsets[1:] - tensors.offsets[:-1]).tolist()
    for index, (count, record) in enumerate(zip(rows, records)):
        if count != len(record["input_ids"]):
            raise SpecError(f"{where(tensors.path, index)}: {count} rows of hidden states for {len(record['input_ids'])} tokens")
