"""Tensor shards: safetensors files with the captured hidden states of one record shard.

Two encodings (SPEC.md, "Tensor shards"). `raw` (format version 1): `hidden_states` [tokens,
layers, hidden] in the storage dtype, memory-mapped and used in place. `zstd` (format version 2):
`hidden_frames`, one zstd frame per record (libspec.format.hidden_codec), decoded when a record is
read. Both have `offsets` int64 [records + 1] (record i owns rows offsets[i]:offsets[i+1]) and, for
fp8 storage, `hidden_scales` float32 [tokens, layers]. Readers map the file: no full read.
"""

from __future__ import annotations

import itertools
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from libspec.format.atomic import write_bytes_atomic
from libspec.format.bounded_io import open_regular
from libspec.format.digest import FileDigest, digest_bytes
from libspec.format.hidden_codec import decode_frame, encode_frame, transform_for
from libspec.errors import SpecError
from libspec.format.schemas import check_schema

HIDDEN, OFFSETS, SCALES = "hidden_states", "offsets", "hidden_scales"
FRAMES, FRAME_OFFSETS = "hidden_frames", "frame_offsets"  # the zstd encoding's tensors
SHARD_FORMAT = "spec-tools/hidden-states"
# The shard format version of each encoding: raw shards are unchanged, so older readers still read them.
SHARD_FORMAT_VERSIONS = {"raw": "1", "zstd": "2"}

STORAGE_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float8_e4m3fn": torch.float8_e4m3fn,
}
_SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F8_E4M3": torch.float8_e4m3fn,
    "I64": torch.int64,
    "U8": torch.uint8,
    "I32": torch.int32,
    "BOOL": torch.bool,
    # model weights (libspec/format/weights_file.py) may hold these too
    "F64": torch.float64,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "F8_E5M2": torch.float8_e5m2,
}
_FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
# The rank each known tensor must have, and how errors describe it.
_RANKS = {
    HIDDEN: (3, "[tokens, layers, hidden]"), OFFSETS: (1, "[num_records + 1]"), SCALES: (2, "[tokens, layers]"),
    FRAMES: (1, "[frame bytes]"), FRAME_OFFSETS: (1, "[num_records + 1]"),
}  # fmt: skip
# The safetensors library's own limit on the header (its MAX_HEADER_SIZE); ours are a few hundred bytes.
MAX_TENSOR_HEADER_BYTES = 100_000_000
TENSOR_SHARD_LIMIT = "SPEC.md §8"


def storage_dtype(name: str) -> torch.dtype:
    """The torch dtype for a storage dtype name from the manifest."""
    try:
        return STORAGE_DTYPES[name]
    except KeyError:
        raise SpecError(f"unknown storage dtype {name!r}; expected one of {', '.join(STORAGE_DTYPES)}") from None


def encode_hidden(hidden: torch.Tensor, dtype_name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Convert float hidden states [T, L, H] to the storage dtype; fp8 also returns per-(token, layer) scales.

    fp8 scales are per token and per layer because layer magnitudes differ by orders of
    magnitude (the final pre-norm stream is much larger than the embeddings).
    """
    if dtype_name != "float8_e4m3fn":
        return hidden.to(storage_dtype(dtype_name)).contiguous(), None
    hidden = hidden.float()
    scales = hidden.abs().amax(dim=-1).clamp(min=1e-12) / _FP8_MAX  # [T, L]
    stored = (hidden / scales.unsqueeze(-1)).to(torch.float8_e4m3fn)
    return stored.contiguous(), scales.contiguous()


def decode_hidden(stored: torch.Tensor, scales: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of encode_hidden: stored [T, L, H] (+ scales [T, L]) to float `dtype`."""
    if scales is None:
        return stored.to(dtype)
    return (stored.float() * scales.unsqueeze(-1)).to(dtype)


def write_tensor_shard(
    path: str | Path,
    hidden: torch.Tensor,
    offsets: list[int],
    layer_ids: list[int],
    scales: torch.Tensor | None = None,
    encoding: str = "raw",
) -> FileDigest:
    """Write one tensor shard atomically in `encoding` (raw or zstd); `hidden` is already in the storage dtype."""
    if hidden.dim() != 3 or offsets[0] != 0 or offsets[-1] != hidden.shape[0]:
        raise ValueError(f"bad tensor shard: hidden {tuple(hidden.shape)}, offsets {offsets[0]}..{offsets[-1]}")
    if encoding not in SHARD_FORMAT_VERSIONS:
        raise SpecError(f"unknown tensor encoding {encoding!r}; expected one of {', '.join(SHARD_FORMAT_VERSIONS)}")
    tensors = {OFFSETS: torch.tensor(offsets, dtype=torch.int64)}
    metadata = {
        "format": SHARD_FORMAT,
        "format_version": SHARD_FORMAT_VERSIONS[encoding],
        "layer_ids": json.dumps(list(layer_ids)),
        "num_records": str(len(offsets) - 1),
    }
    if encoding == "raw":
        tensors[HIDDEN] = hidden.contiguous()
    else:
        frames = [encode_frame(hidden[start:end]) for start, end in zip(offsets, offsets[1:])]
        tensors[FRAMES] = torch.frombuffer(bytearray(b"".join(frames)), dtype=torch.uint8) if any(frames) else torch.empty(0, dtype=torch.uint8)
        tensors[FRAME_OFFSETS] = torch.tensor([0, *itertools.accumulate(len(f) for f in frames)], dtype=torch.int64)
        metadata.update(encoding=encoding, storage_dtype=dtype_name(hidden.dtype), hidden_size=str(hidden.shape[2]), transform=transform_for(hidden.dtype))
    if scales is not None:
        tensors[SCALES] = scales.to(torch.float32).contiguous()
    data = safetensors_bytes(tensors, metadata)
    write_bytes_atomic(path, data)
    return digest_bytes(data)


def dtype_name(dtype: torch.dtype) -> str:
    """The storage dtype name (SPEC.md §2) of a torch dtype."""
    return next(name for name, value in STORAGE_DTYPES.items() if value == dtype)


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Serialise tensors in the safetensors format, byte-for-byte reproducibly.

    The safetensors library orders the metadata map differently from run to run, which would
    make identical data sets differ in their checksums; the format is simple enough to write here.
    Tensors go in order of decreasing element size so that every one stays aligned.
    """
    codes = {dtype: code for code, dtype in _SAFETENSORS_DTYPES.items()}
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name, tensor in sorted(tensors.items(), key=lambda item: (-item[1].element_size(), item[0])):
        blob = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": codes[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data buffer starts 8-byte aligned
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs)


class TensorShard:
    """A memory-mapped tensor shard, raw or zstd. Raw tensors are views on the file's pages (copy-on-write).

    The whole safetensors header and the shard's layout are checked when it is opened, so damage
    surfaces here, as a SpecError naming the file, and never later as a KeyError in mid-epoch
    (a zstd frame's own content is checked when its record is decoded).
    """

    def __init__(self, path: str | Path, inside: str | Path | None = None):
        self.path = Path(path)
        header, data_start, self._map = _map_safetensors(self.path, inside)
        self.metadata = header.pop("__metadata__", None) or {}
        check_schema("tensor-shard-metadata", self.metadata, f"{self.path}: safetensors metadata")
        try:
            self.layer_ids = json.loads(self.metadata["layer_ids"])
        except ValueError as error:  # e.g. a number with more digits than Python converts
            raise SpecError(f"{self.path}: safetensors metadata: layer_ids is not a JSON list of integers: {error}") from None
        self.encoding = self.metadata.get("encoding", "raw")
        needed = (HIDDEN, OFFSETS) if self.encoding == "raw" else (FRAMES, FRAME_OFFSETS, OFFSETS)
        for name in needed:
            if name not in header:
                raise SpecError(f"{self.path}: tensor {name!r} is missing ({self.encoding} encoding)")
        unexpected = header.keys() - {*needed, SCALES}
        if unexpected:
            raise SpecError(f"{self.path}: unexpected tensor(s) {', '.join(sorted(unexpected))} in a {self.encoding} shard")
        self.tensors = {name: _view(self._map, data_start, entry) for name, entry in header.items()}
        self.offsets = self.tensors[OFFSETS]
        self.scales = self.tensors.get(SCALES)
        self._check_offsets()
        if self.encoding == "raw":
            self._check_raw_layout()
        else:
            self._check_zstd_layout()
        self._check_scales()

    @property
    def num_records(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def _check_offsets(self) -> None:
        offsets = self.offsets
        if offsets.dtype != torch.int64 or str(len(offsets) - 1) != self.metadata["num_records"]:
            raise SpecError(f"{self.path}: {OFFSETS} must be int64 [num_records + 1]")
        if offsets[0] != 0 or bool((offsets[1:] < offsets[:-1]).any()):
            raise SpecError(f"{self.path}: {OFFSETS} must rise from 0 (non-decreasing)")

    def _check_raw_layout(self) -> None:
        hidden = self.hidden = self.tensors[HIDDEN]
        if hidden.dtype not in STORAGE_DTYPES.values():
            raise SpecError(f"{self.path}: {HIDDEN} has dtype {hidden.dtype}, expected one of {', '.join(STORAGE_DTYPES)}")
        if hidden.shape[1] != len(self.layer_ids):
            raise SpecError(f"{self.path}: {HIDDEN} has {hidden.shape[1]} layers, metadata lists {len(self.layer_ids)} layer ids")
        if self.offsets[-1] != hidden.shape[0]:
            raise SpecError(f"{self.path}: {OFFSETS} must rise from 0 to {hidden.shape[0]} (the token count)")
        self.storage_dtype, self.hidden_size = hidden.dtype, hidden.shape[2]

    def _check_zstd_layout(self) -> None:
        self.storage_dtype = STORAGE_DTYPES[self.metadata["storage_dtype"]]  # the schema allows only those names
        self.hidden_size = int(self.metadata["hidden_size"])
        if self.metadata["transform"] != transform_for(self.storage_dtype):
            raise SpecError(f"{self.path}: transform {self.metadata['transform']!r} does not belong to {self.metadata['storage_dtype']} (expected {transform_for(self.storage_dtype)!r})")
        frames, frame_offsets = self.tensors[FRAMES], self.tensors[FRAME_OFFSETS]
        if frames.dtype != torch.uint8 or frame_offsets.dtype != torch.int64 or len(frame_offsets) != len(self.offsets):
            raise SpecError(f"{self.path}: {FRAMES} must be uint8 and {FRAME_OFFSETS} int64 [num_records + 1]")
        if frame_offsets[0] != 0 or frame_offsets[-1] != len(frames) or bool((frame_offsets[1:] < frame_offsets[:-1]).any()):
            raise SpecError(f"{self.path}: {FRAME_OFFSETS} must rise from 0 to {len(frames)} (the bytes of {FRAMES})")
        self._frames = frames.numpy()
        self._frame_offsets = frame_offsets.tolist()

    def _check_scales(self) -> None:
        fp8 = self.storage_dtype == torch.float8_e4m3fn
        shape = (self.num_tokens, len(self.layer_ids))
        if fp8 and (self.scales is None or self.scales.dtype != torch.float32 or tuple(self.scales.shape) != shape):
            raise SpecError(f"{self.path}: fp8 storage needs {SCALES} float32 [tokens, layers]")
        if not fp8 and self.scales is not None:
            raise SpecError(f"{self.path}: {SCALES} is only allowed with float8_e4m3fn storage")

    def record_rows(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stored hidden states [T, L, H] (and fp8 scales [T, L]) of record `index`: views (raw) or decoded (zstd)."""
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        scales = None if self.scales is None else self.scales[start:end]
        if self.encoding == "raw":
            return self.hidden[start:end], scales
        frame = self._frames[self._frame_offsets[index] : self._frame_offsets[index + 1]]
        shape = (end - start, len(self.layer_ids), self.hidden_size)
        return decode_frame(frame, self.storage_dtype, shape, f"{self.path}: record {index}"), scales

    def stored_hidden(self) -> torch.Tensor:
        """All the shard's stored hidden states [tokens, L, H] (a view when raw; decoded, a copy, when zstd)."""
        if self.encoding == "raw":
            return self.hidden
        rows = [self.record_rows(i)[0] for i in range(self.num_records)]
        return torch.cat(rows) if rows else torch.empty((0, len(self.layer_ids), self.hidden_size), dtype=self.storage_dtype)


@dataclass(frozen=True)
class _Entry:
    """One tensor of a safetensors header, checked: dtype, shape and byte range within the data buffer."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def _map_safetensors(path: Path, inside: str | Path | None = None) -> tuple[dict, int, mmap.mmap | None]:
    """Parse and check a safetensors header and map the file copy-on-write (torch wants writable buffers).

    Returns the header with each tensor entry as an _Entry, the data buffer's start, and the mapping.
    """
    with open_regular(path, "tensor shard", inside=inside) as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise SpecError(f"{path}: too short to be a safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_TENSOR_HEADER_BYTES:
            raise SpecError(f"{path}: safetensors header says {header_len} bytes, past the {MAX_TENSOR_HEADER_BYTES} byte limit ({TENSOR_SHARD_LIMIT})")
        if 8 + header_len > size:
            raise SpecError(f"{path}: safetensors header says {header_len} bytes but the file has {size} (truncated?)")
        try:
            header = json.loads(handle.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SpecError(f"{path}: safetensors header is not valid UTF-8 JSON: {error}") from None
        except RecursionError:
            raise SpecError(f"{path}: safetensors header is not valid JSON: nested too deeply") from None
        if not isinstance(header, dict):
            raise SpecError(f"{path}: safetensors header is not a JSON object")
        data_start = 8 + header_len
        header = _checked_header(header, path, size - data_start)
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
    return header, data_start, mapped


def _checked_header(header: dict, path: Path, data_bytes: int) -> dict:
    """Every entry well formed, and the entries tile the data buffer: no overlap, no gap, nothing past its end."""
    checked: dict = {}
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise SpecError(f"{path}: safetensors __metadata__ must map names to strings")
            checked[name] = info
            continue
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise SpecError(f"{where}: expected an entry with dtype, shape and data_offsets")
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise SpecError(f"{where}: unsupported dtype {_short(info['dtype'])}; expected one of {', '.join(_SAFETENSORS_DTYPES)}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise SpecError(f"{where}: shape must be a list of non-negative integers, found {_short(shape)}")
        if name in _RANKS and len(shape) != _RANKS[name][0]:
            raise SpecError(f"{path}: {name} must be {_RANKS[name][1]}, found shape {_short(shape)}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise SpecError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, found {_short(offsets)}")
        begin, end = offsets
        if end > data_bytes:
            raise SpecError(f"{where} runs past the end of the file (truncated?)")
        count = 0 if 0 in shape else 1
        for dim in shape:
            count *= dim
            if count * dtype.itemsize > data_bytes:
                break  # already more than the file holds; no need to multiply a huge shape out
        if end - begin != count * dtype.itemsize:
            raise SpecError(f"{where}: has {end - begin} bytes, shape {_short(shape)} {dtype} needs {count * dtype.itemsize}")
        checked[name] = _Entry(dtype, tuple(shape), begin, end)
    position = 0
    for name, entry in sorted(((n, e) for n, e in checked.items() if n != "__metadata__"), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != position:
            problem = "overlaps the tensor before it" if entry.begin < position else "leaves a gap after the tensor before it"
            raise SpecError(f"{path}: tensor {name!r} {problem} (data_offsets begin at {entry.begin}, expected {position})")
        position = entry.end
    if position != data_bytes:
        raise SpecError(f"{path}: {data_bytes - position} bytes after the last tensor (the tensors must fill the data buffer)")
    return checked


def _short(value) -> str:
    """A header value as errors quote it: JSON, at most 80 characters."""
    try:
        text = json.dumps(value)
    except RecursionError:  # nested almost as deep as the parser allowed
        text = f"a deeply nested {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def _view(mapped: mmap.mmap | None, data_start: int, entry: _Entry) -> torch.Tensor:
    """A tensor over the mapped bytes of one checked safetensors entry, without copying."""
    count = (entry.end - entry.begin) // entry.dtype.itemsize
    if count == 0:
        return torch.empty(entry.shape, dtype=entry.dtype)
    flat = torch.frombuffer(mapped, dtype=entry.dtype, count=count, offset=data_start + entry.begin)
    return flat.view(entry.shape)
