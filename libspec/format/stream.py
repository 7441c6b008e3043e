"""Streams: a data set as one byte stream for pipes (`-o -`, `--data -`), SPEC.md "Streams".

    stream := MAGIC frame* ;  frame := u32-LE length, then that many bytes of one zstd frame
    (content checksum on) holding one msgpack map: a "header" frame, "sample" frames, an "end" frame.

The end frame carries the counts, so a reader can tell a finished stream from a cut one.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Iterator

import msgpack
import torch
import zstandard

from libspec.errors import SpecError
from libspec.format.bounded_io import decompress_frame, size_text, zstd_bound
from libspec.format.json_files import json_value_problem
from libspec.format.records import check_record
from libspec.format.sample import Sample, header_of, header_problems
from libspec.format.schemas import check_schema
from libspec.format.hidden_codec import from_planes, to_planes
from libspec.format.tensors import STORAGE_DTYPES, encode_hidden

MAGIC = b"SPECSTRM"
# Hidden states barely compress and streams are hot paths: level 1 costs little CPU.
STREAM_ZSTD_LEVEL = 1
_LENGTH = struct.Struct("<I")
# The decompressed size of one frame (SPEC.md §10): one sample's hidden states and record. Streams
# are read into memory whole by spec-train; samples larger than this belong in a data set directory.
MAX_STREAM_FRAME_BYTES = 1 << 30
STREAM_FRAME_LIMIT = "SPEC.md §10"


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


class StreamWriter:
    """Writes a header, then one frame per sample, then the end frame, to a binary file object."""

    def __init__(self, output: BinaryIO, header: dict, level: int = STREAM_ZSTD_LEVEL):
        check_schema("stream-frame", {"type": "header", **header}, "stream header")
        self.output = output
        self.header = header
        self.dtype_name = header["hidden_states"]["storage_dtype"]
        self.byte_planes = header["hidden_states"].get("tensor_encoding", "raw") == "zstd"
        self.num_layers = len(header["hidden_states"]["layer_ids"])
        self.hidden_size = header["verifier"]["hidden_size"]
        self.vocab_size = header["verifier"]["vocab_size"]
        self.num_records = self.num_tokens = 0
        self._compressor = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
        self._packer = msgpack.Packer(use_bin_type=True)
        output.write(MAGIC)
        self._write_frame({"type": "header", **header})

    def _write_frame(self, frame: dict) -> None:
        packed = self._packer.pack(frame)
        if len(packed) > MAX_STREAM_FRAME_BYTES:
            raise SpecError(
                f"stream frame {frame['type']} takes {len(packed)} bytes, past the {size_text(MAX_STREAM_FRAME_BYTES)} limit "
                f"({STREAM_FRAME_LIMIT}); write a data set directory instead"
            )
        payload = self._compressor.compress(packed)
        self.output.write(_LENGTH.pack(len(payload)))
        self.output.write(payload)

    def add(self, record: dict, hidden: torch.Tensor) -> None:
        """Write one sample; `hidden` is float [tokens, layers, hidden_size]."""
        location = f"stream sample {self.num_records} ({record.get('id', '?')!r})"
        check_record(record, location, self.vocab_size)
        expected = (len(record["input_ids"]), self.num_layers, self.hidden_size)
        if tuple(hidden.shape) != expected:
            raise SpecError(f"{location}: hidden states have shape {list(hidden.shape)}, expected {list(expected)}")
        stored, scales = encode_hidden(hidden.detach().cpu(), self.dtype_name)
        self._write_frame(
            {
                "type": "sample",
                "record": record,
                "hidden": (to_planes(stored).tobytes() if self.byte_planes else _tensor_bytes(stored)),
                "scales": None if scales is None else _tensor_bytes(scales),
            }
        )
        self.num_records += 1
        self.num_tokens += expected[0]

    def close(self) -> dict:
        """Write the end frame and flush; returns the counts."""
        end = {"type": "end", "num_records": self.num_records, "num_tokens": self.num_tokens}
        self._write_frame(end)
        self.output.flush()
        return end


class StreamReader:
    """Reads a stream: `.header` at once, then iterate for samples. Cut or corrupt streams raise SpecError."""

    def __init__(self, source: BinaryIO, name: str = "<stream>"):
        self.source = source
        self.name = name
        self.frame_index = 0
        magic = source.read(len(MAGIC))
        if magic != MAGIC:
            raise SpecError(f"{name}: not a spec-tools stream (expected magic {MAGIC!r}, found {magic[:8]!r})")
        header = self._read_frame()
        if header is None or header.get("type") != "header":
            raise SpecError(f"{name}: frame 0 must be the header frame")
        problem = json_value_problem(header)
        if problem is not None:
            raise SpecError(f"{name}: header frame: {problem}")
        check_schema("stream-frame", header, f"{name}: header frame")
        problems = header_problems(header)
        if problems:
            raise SpecError(f"{name}: header frame: {problems[0]}")
        self.header = header_of(header)
        hidden = self.header["hidden_states"]
        self.dtype = STORAGE_DTYPES[hidden["storage_dtype"]]
        self.byte_planes = hidden.get("tensor_encoding", "raw") == "zstd"
        self.row_shape = (len(hidden["layer_ids"]), self.header["verifier"]["hidden_size"])
        self.vocab_size = self.header["verifier"]["vocab_size"]
        self.end: dict | None = None

    def _read_exact(self, size: int, what: str) -> bytes:
        chunks, remaining = [], size
        while remaining:
            chunk = self.source.read(remaining)
            if not chunk:
                raise SpecError(f"{self.name}: frame {self.frame_index}: stream ends inside the {what} (truncated)")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _read_frame(self) -> dict | None:
        prefix = self.source.read(_LENGTH.size)
        if not prefix:
            return None
        if len(prefix) < _LENGTH.size:
            prefix += self._read_exact(_LENGTH.size - len(prefix), "frame length")
        (length,) = _LENGTH.unpack(prefix)
        location = f"{self.name}: frame {self.frame_index}"
        if length > zstd_bound(MAX_STREAM_FRAME_BYTES):
            raise SpecError(f"{location}: length {length} is more than a frame within the {size_text(MAX_STREAM_FRAME_BYTES)} limit can take ({STREAM_FRAME_LIMIT})")
        payload = self._read_exact(length, "frame")
        content = decompress_frame(payload, MAX_STREAM_FRAME_BYTES, location, "frame", STREAM_FRAME_LIMIT)
        try:
            frame = msgpack.unpackb(content, raw=False)  # unpackb caps declared lengths by len(content)
        except (msgpack.UnpackException, ValueError) as error:
            raise SpecError(f"{location}: not valid msgpack: {error}") from None
        if not isinstance(frame, dict):
            raise SpecError(f"{self.name}: frame {self.frame_index}: expected a map")
        self.frame_index += 1
        return frame

    def __iter__(self) -> Iterator[Sample]:
        num_records = num_tokens = 0
        while True:
            frame = self._read_frame()
            if frame is None:
                raise SpecError(f"{self.name}: stream ends after {num_records} samples without its end frame (truncated)")
            if frame.get("type") == "end":
                self._check_end(frame, num_records, num_tokens)
                return
            sample = self._sample(frame, num_records)
            num_records += 1
            num_tokens += sample.num_tokens
            yield sample

    def _check_end(self, frame: dict, num_records: int, num_tokens: int) -> None:
        problem = json_value_problem(frame)
        if problem is not None:
            raise SpecError(f"{self.name}: end frame: {problem}")
        check_schema("stream-frame", frame, f"{self.name}: end frame")
        if (frame["num_records"], frame["num_tokens"]) != (num_records, num_tokens):
            raise SpecError(
                f"{self.name}: end frame counts {frame['num_records']} samples / {frame['num_tokens']} tokens, "
                f"the stream held {num_records} / {num_tokens}"
            )
        if self.source.read(1):
            raise SpecError(f"{self.name}: data after the end frame")
        self.end = frame

    def _sample(self, frame: dict, index: int) -> Sample:
        location = f"{self.name}: sample {index}"
        if frame.get("type") != "sample" or not isinstance(frame.get("hidden"), bytes):
            raise SpecError(f"{location}: expected a sample frame with binary field hidden")
        record = frame.get("record")
        check_record(record, location, self.vocab_size)
        num_tokens = len(record["input_ids"])
        hidden = _tensor_from(frame["hidden"], self.dtype, (num_tokens, *self.row_shape), f"{location}: field hidden")
        if self.byte_planes:
            hidden = from_planes(hidden.reshape(-1).view(torch.uint8).numpy(), self.dtype, tuple(hidden.shape))
        scales = None
        if self.dtype == torch.float8_e4m3fn:
            if not isinstance(frame.get("scales"), bytes):
                raise SpecError(f"{location}: field scales: fp8 storage needs per-token scales")
            scales = _tensor_from(frame["scales"], torch.float32, (num_tokens, self.row_shape[0]), f"{location}: field scales")
        return Sample(record, hidden, scales)


def _tensor_from(data: bytes, dtype: torch.dtype, shape: tuple[int, ...], location: str) -> torch.Tensor:
    expected = dtype.itemsize
    for dim in shape:
        expected *= dim
    if len(data) != expected:
        raise SpecError(f"{location}: {len(data)} bytes, expected {expected} for shape {list(shape)} {dtype}")
    return torch.frombuffer(bytearray(data), dtype=dtype).view(shape)
