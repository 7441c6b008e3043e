"""Model weight files (safetensors) read and written without a second copy in memory.

A process's resident memory counts the file pages it has touched through a map for as long as the
map lives. So there are two ways to read:
- `map_weights`: every tensor a view on one map of the file (nothing is read until used; pages
  stay resident while any view lives) — for a source a converter holds from start to end;
- `WeightFile.read`: one tensor (or some of its rows) on a map made for that read alone, which
  goes away with the tensor — for checks that visit every tensor once.
`write_weights` streams tensors into the file one at a time straight from their memory (or map):
no bytes object of the whole file, as `safetensors.torch.save_file` builds.

Headers are checked by libspec.format.tensors (same limits and one-line errors as tensor shards).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import torch

from libspec.format.bounded_io import open_regular
from libspec.format.tensors import _SAFETENSORS_DTYPES, _map_safetensors, _view


def map_weights(path: str | Path, inside: str | Path | None = None) -> dict[str, torch.Tensor]:
    """name -> tensor, each a copy-on-write view on one map of the file (pages read on first use)."""
    header, data_start, mapped = _map_safetensors(Path(path), inside)
    header.pop("__metadata__", None)
    return {name: _view(mapped, data_start, entry) for name, entry in header.items()}


class WeightFile:
    """A safetensors file read one tensor at a time, each read from a map of its own (module docstring)."""

    def __init__(self, path: str | Path, inside: str | Path | None = None):
        self.path, self.inside = Path(path), inside
        header, self.data_start, mapped = _map_safetensors(self.path, inside)
        if mapped is not None:
            mapped.close()
        self.metadata = header.pop("__metadata__", None) or {}
        self.entries = header

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def read(self, name: str, rows: torch.Tensor | slice | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tensor `name` (only `rows` of its first dimension when given), cast to `dtype` when given.

        Without a cast it is a view on a map made for this read: its pages leave memory with it.
        Rows given as a tensor of indices are read one by one instead: through a map, the kernel
        would also map the pages around each row (fault-around), i.e. most of a big table.
        """
        if isinstance(rows, torch.Tensor):
            picked = self._read_rows(name, rows)
            return picked if dtype is None else picked.to(dtype)
        with open_regular(self.path, "weights file", inside=self.inside) as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY) if os.fstat(handle.fileno()).st_size else None
        view = _view(mapped, self.data_start, self.entries[name])
        if rows is not None:
            view = view[rows]
        return view if dtype is None else view.to(dtype)

    def _read_rows(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        entry = self.entries[name]
        out = torch.empty((len(rows), *entry.shape[1:]), dtype=entry.dtype)
        row_bytes = entry.dtype.itemsize * math.prod(entry.shape[1:])
        if not len(rows) or not row_bytes:
            return out
        if int(rows.min()) < 0 or int(rows.max()) >= entry.shape[0]:
            raise IndexError(f"{self.path}: rows of {name} outside [0, {entry.shape[0]})")
        buffer = out.view(-1).view(torch.uint8).numpy()
        with open_regular(self.path, "weights file", inside=self.inside) as handle:
            for index, row in enumerate(rows.tolist()):
                handle.seek(self.data_start + entry.begin + row * row_bytes)
                handle.readinto(memoryview(buffer)[index * row_bytes : (index + 1) * row_bytes])
        return out

    def read_in_chunks(self, name: str, chunk_bytes: int = 64 << 20) -> Iterator[torch.Tensor]:
        """Tensor `name` as consecutive row blocks of about `chunk_bytes`, each from a map of its own."""
        shape = self.entries[name].shape
        row_bytes = self.entries[name].dtype.itemsize * math.prod(shape[1:])
        if not shape or shape[0] == 0 or row_bytes == 0:
            yield self.read(name)
            return
        step = max(1, chunk_bytes // row_bytes)
        for start in range(0, shape[0], step):
            yield self.read(name, rows=slice(start, start + step))


def write_weights(handle: BinaryIO, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` as a safetensors file to `handle`, one tensor's bytes at a time, no copies.

    Tensors go in order of decreasing element size (each stays aligned), then by name.
    """
    ordered = sorted(tensors.items(), key=lambda item: (-item[1].element_size(), item[0]))
    handle.write(_header(ordered, metadata))
    for _, tensor in ordered:
        handle.write(_bytes_of(tensor))


def _header(ordered: Iterable[tuple[str, torch.Tensor]], metadata: dict[str, str] | None) -> bytes:
    codes = {dtype: code for code, dtype in _SAFETENSORS_DTYPES.items()}
    header: dict = {"__metadata__": dict(sorted((metadata or {}).items()))} if metadata else {}
    offset = 0
    for name, tensor in ordered:
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": codes[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data buffer starts 8-byte aligned
    return struct.pack("<Q", len(encoded)) + encoded


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes as a view on its own memory (a copy only if it is not contiguous)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())
