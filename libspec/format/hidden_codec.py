"""The `zstd` tensor encoding: one zstd frame per record over a byte-plane transform of its hidden states.

Float bytes are nearly random in their low (mantissa) bits and highly repetitive in their exponent
bits; zstd compresses well only once the repetitive bits sit together. So a record's stored
hidden states [T, L, H] are first rearranged into byte planes (SPEC.md §8.1):

- `byte-shuffle`: byte k of every element, for k = 0 .. itemsize-1 (float32, float16, float8);
- `bf16-exponent-split`: for bfloat16, one plane of the 8 exponent bits and one of sign + 7 mantissa
  bits, so the sign (a random bit) does not spoil the exponent plane (measured smaller, §8.1).

One frame per record keeps random access by sample cheap: a training step decodes only its records.
"""

from __future__ import annotations

import torch
import zstandard

from libspec.errors import SpecError
from libspec.format.bounded_io import size_text

TENSOR_ENCODINGS = ("raw", "zstd")
# Measured on SmolLM2 hidden states (tools/bench_storage.py): level 1 and 3 give sizes within 1%,
# level 1 encodes much faster, and spec-gen-hidden must keep pace with the verifier.
HIDDEN_ZSTD_LEVEL = 1
# The decoded size of one record's frame (SPEC.md §8.1): as a stream frame's, one sample of 32,768
# tokens x 4 layers x hidden 4,096 in fp8 (an 8B model), or 16,384 tokens of it in bf16.
MAX_HIDDEN_FRAME_BYTES = 1 << 30
HIDDEN_FRAME_LIMIT = "SPEC.md §8.1"
BYTE_SHUFFLE, BF16_EXPONENT_SPLIT = "byte-shuffle", "bf16-exponent-split"


def transform_for(dtype: torch.dtype) -> str:
    """The byte-plane transform the zstd encoding uses for a storage dtype."""
    return BF16_EXPONENT_SPLIT if dtype == torch.bfloat16 else BYTE_SHUFFLE


def to_planes(stored: torch.Tensor) -> torch.Tensor:
    """uint8 [itemsize * n]: the elements' bytes regrouped into planes (see the module docstring)."""
    flat = stored.contiguous().reshape(-1)
    if flat.dtype == torch.bfloat16:
        bits = flat.view(torch.int16).to(torch.int32)
        exponent = (bits >> 7) & 0xFF
        sign_mantissa = ((bits >> 8) & 0x80) | (bits & 0x7F)
        return torch.cat([exponent, sign_mantissa]).to(torch.uint8)
    return flat.view(torch.uint8).view(-1, flat.element_size()).t().reshape(-1)


def from_planes(planes: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of to_planes: uint8 planes back to a `dtype` tensor of `shape`."""
    itemsize = dtype.itemsize
    if dtype == torch.bfloat16:
        exponent, sign_mantissa = planes.view(2, -1).to(torch.int32)
        bits = ((sign_mantissa & 0x80) << 8) | (exponent << 7) | (sign_mantissa & 0x7F)
        bits = bits - ((bits >> 15) << 16)  # the top bit is int16's sign: bring 0..65535 into int16's range
        return bits.to(torch.int16).view(torch.bfloat16).view(shape)
    return planes.view(itemsize, -1).t().contiguous().view(dtype).view(shape)


def encode_frame(stored: torch.Tensor, level: int = HIDDEN_ZSTD_LEVEL) -> bytes:
    """One record's stored hidden states as a zstd frame (content size and checksum on) of its byte planes."""
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    return compressor.compress(to_planes(stored).numpy().tobytes())


def decode_frame(frame: bytes | memoryview, dtype: torch.dtype, shape: tuple[int, ...], location: str) -> torch.Tensor:
    """Inverse of encode_frame. The frame must declare exactly the size `shape` needs, checked before decoding."""
    expected = dtype.itemsize
    for dim in shape:
        expected *= dim
    if expected > MAX_HIDDEN_FRAME_BYTES:
        raise SpecError(f"{location}: a record of shape {list(shape)} {dtype} takes {expected} bytes, past the {size_text(MAX_HIDDEN_FRAME_BYTES)} limit ({HIDDEN_FRAME_LIMIT})")
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as error:
        raise SpecError(f"{location}: not a zstd frame ({error})") from None
    if declared != expected:
        found = "no content size" if declared < 0 else f"{declared} bytes"
        raise SpecError(f"{location}: zstd frame declares {found}, shape {list(shape)} {dtype} needs {expected} bytes")
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    try:
        content = decompressor.decompress(frame)
    except zstandard.ZstdError as error:
        raise SpecError(f"{location}: zstd frame is corrupted (checksum or data): {error}") from None
    if not decompressor.eof or len(content) != expected:
        raise SpecError(f"{location}: zstd frame is truncated ({len(content)} of {expected} bytes)")
    if decompressor.unused_data:
        raise SpecError(f"{location}: bytes follow the zstd frame (expected exactly one frame)")
    if expected == 0:
        return torch.empty(shape, dtype=dtype)
    return from_planes(torch.frombuffer(bytearray(content), dtype=torch.uint8), dtype, shape)
