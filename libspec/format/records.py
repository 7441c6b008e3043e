"""Record shards: a zstd frame (with content checksum) holding a sequence of msgpack records.

A record is one training sample: {"id": str, "input_ids": [int], "loss_mask": [0|1], "metadata": {}}.
See SPEC.md, "Record shards".
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Iterable

import msgpack
import zstandard

from libspec.format.atomic import write_bytes_atomic
from libspec.format.bounded_io import decompress_frame, open_regular, size_text, zstd_bound
from libspec.format.digest import FileDigest, check_digest, digest_bytes
from libspec.format.json_files import json_value_problem
from libspec.errors import SpecError, where

RECORD_KEYS = frozenset({"id", "input_ids", "loss_mask", "metadata"})
# Records are small (token ids only); level 9 costs little and they are read many times.
RECORDS_ZSTD_LEVEL = 9
# The decompressed content of one record shard (SPEC.md §7): real shards hold a few MB of token ids.
MAX_RECORD_SHARD_BYTES = 256 << 20
RECORD_SHARD_LIMIT = "SPEC.md §7"


def record_problems(record: Any, vocab_size: int | None = None) -> list[str]:
    """Cheap structural checks of one record (the hot path; jsonschema is used by spec-validate)."""
    if not isinstance(record, dict):
        return [f"expected a map, found {type(record).__name__}"]
    problems = []
    missing = {"id", "input_ids", "loss_mask"} - record.keys()
    if missing:
        problems.append(f"missing field(s) {', '.join(sorted(missing))}")
    unknown = record.keys() - RECORD_KEYS
    if unknown:
        problems.append(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    if "id" in record and not isinstance(record["id"], str):
        problems.append("field id: expected a string")
    input_ids, loss_mask = record.get("input_ids"), record.get("loss_mask")
    if input_ids is not None and not _is_int_list(input_ids):
        problems.append("field input_ids: expected a non-empty list of non-negative integers")
        input_ids = None
    if loss_mask is not None and not (isinstance(loss_mask, list) and all(_is_bit(v) for v in loss_mask)):
        problems.append("field loss_mask: expected a list of integers 0/1")
        loss_mask = None
    if input_ids is not None and loss_mask is not None and len(input_ids) != len(loss_mask):
        problems.append(f"field loss_mask: length {len(loss_mask)} differs from input_ids length {len(input_ids)}")
    if input_ids is not None and vocab_size is not None:
        top = max(input_ids)
        if top >= vocab_size:
            problems.append(f"field input_ids: token id {top} >= vocab size {vocab_size}")
    if "metadata" in record:
        if not isinstance(record["metadata"], dict):
            problems.append("field metadata: expected a map")
        elif (problem := json_value_problem(record["metadata"])) is not None:
            problems.append(f"field metadata: {problem}")
    return problems


def _is_int_list(values: Any) -> bool:
    return (
        isinstance(values, list)
        and len(values) > 0
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
    )


def _is_bit(value: Any) -> bool:
    # msgpack keeps booleans and floats apart from integers; SPEC.md §6 says integers 0 and 1.
    return type(value) is int and value in (0, 1)


def check_record(record: Any, location: str, vocab_size: int | None = None) -> None:
    """Raise SpecError at `location` if the record is malformed."""
    problems = record_problems(record, vocab_size)
    if problems:
        raise SpecError(f"{location}: {problems[0]}")


def record_bytes(record: dict) -> int:
    """How many bytes `record` takes in a record shard's content, before compression."""
    return len(msgpack.packb(record, use_bin_type=True))


def encode_records(records: Iterable[dict]) -> bytes:
    """msgpack each record, concatenate, compress as one zstd frame with size and checksum."""
    packer = msgpack.Packer(use_bin_type=True)
    payload = b"".join(packer.pack(r) for r in records)
    if len(payload) > MAX_RECORD_SHARD_BYTES:
        raise SpecError(f"records of one shard take {len(payload)} bytes, past the {size_text(MAX_RECORD_SHARD_BYTES)} limit ({RECORD_SHARD_LIMIT})")
    compressor = zstandard.ZstdCompressor(level=RECORDS_ZSTD_LEVEL, write_checksum=True, write_content_size=True)
    return compressor.compress(payload)


def decode_records(data: bytes, path: str | Path = "<bytes>") -> list[dict]:
    """Inverse of encode_records; a truncated or corrupted frame raises SpecError naming `path`."""
    payload = decompress_frame(data, MAX_RECORD_SHARD_BYTES, str(path), "record shard", RECORD_SHARD_LIMIT)
    unpacker = unpacker_for(payload)
    records, consumed = [], 0
    try:
        for record in unpacker:
            records.append(record)
            consumed = unpacker.tell()  # tell() after the loop would count a cut last record too
    except (msgpack.UnpackException, ValueError) as error:
        raise SpecError(f"{where(path, len(records))}: not valid msgpack: {error}") from None
    if consumed != len(payload):
        raise SpecError(f"{where(path, len(records))}: msgpack data ends in the middle of a record")
    return records


def unpacker_for(payload: bytes) -> msgpack.Unpacker:
    """A msgpack reader over `payload` whose declared lengths cannot outgrow it.

    msgpack allocates an array or map as soon as it reads its declared length, so every length is
    capped by the bytes there are (each element takes at least one byte, each map entry two).
    """
    size = max(1, len(payload))
    return msgpack.Unpacker(
        io.BytesIO(payload), read_size=min(size, 1 << 20), raw=False, strict_map_key=True,
        max_buffer_size=size, max_array_len=size, max_map_len=size // 2,
    )  # fmt: skip


def write_record_shard(path: str | Path, records: list[dict]) -> FileDigest:
    """Write records atomically as one shard file; return its size and sha256."""
    data = encode_records(records)
    write_bytes_atomic(path, data)
    return digest_bytes(data)


def read_record_shard(path: str | Path, expected: FileDigest | None = None, inside: str | Path | None = None) -> list[dict]:
    """Read a record shard (a regular file, inside the folder `inside` when given), checking its size
    and sha256 first when the manifest gave them."""
    path = Path(path)
    with open_regular(path, "record shard", inside=inside) as handle:
        size = os.fstat(handle.fileno()).st_size
        if expected is not None and size != expected.num_bytes:
            check_digest(path, FileDigest(size, ""), expected)  # the size differs: say so before reading
        if size > zstd_bound(MAX_RECORD_SHARD_BYTES):
            raise SpecError(f"{path}: record shard is {size} bytes, past what the {size_text(MAX_RECORD_SHARD_BYTES)} limit allows ({RECORD_SHARD_LIMIT})")
        try:
            data = handle.read(size + 1)
        except OSError as error:
            raise SpecError(f"{path}: record shard unreadable: {error.strerror or error}") from None
    if expected is not None:
        check_digest(path, digest_bytes(data), expected)
    return decode_records(data, path)
