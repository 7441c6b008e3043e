"""The `zstd` tensor encoding: one zstd frame per record over a byte-plane transform of its hidden states.

Float bytes are nearly random in their low (mantissa) bits and highly repetitive in their exponent
bits; zstd compresses well only once the repetitive bits sit together. So a record's stored
hidden states [T, L, H] are first rearranged into byte planes (SPEC.md §8.1):

- `byte-shuffle`: byte k of every element, for k = 0 .. itemsize-1 (float32, float16, float8);
- `bf16-exponent-split`: for bfloat16, one plane of the 8 exponent bits and one of the 7 mantissa bits
  shifted left with the sign in bit 0, so the sign (a random bit) does not spoil the exponent plane.

Both walk the record layer-major ([L, T, H]), since each layer has its own magnitudes.

One frame per record keeps random access by sample cheap: a training step decodes only its records.
"""

from __future__ import annotations

import numpy as np
import torch
import zstandard

from libspec.errors import SpecError
from libspec.format.bounded_io import size_text

TENSOR_ENCODINGS = ("raw", "zstd")
# Measured on SmolLM2 hidden states (SPEC.md §8.1): level 3 came out 2.5-3.5% larger than level 1
# on these planes, and slower; spec-gen-hidden must keep pace with the verifier.
HIDDEN_ZSTD_LEVEL = 1
# The decoded size of one record's frame (SPEC.md §8.1): as a stream frame's, one sample of 32,768
# tokens x 4 layers x hidden 4,096 in fp8 (an 8B model), or 16,384 tokens of it in bf16.
MAX_HIDDEN_FRAME_BYTES = 1 << 30
HIDDEN_FRAME_LIMIT = "SPEC.md §8.1"
BYTE_SHUFFLE, BF16_EXPONENT_SPLIT = "byte-shuffle", "bf16-exponent-split"


def transform_for(dtype: torch.dtype) -> str:
    """The byte-plane transform the zstd encoding uses for a storage dtype."""
    return BF16_EXPONENT_SPLIT if dtype == torch.bfloat16 else BYTE_SHUFFLE


def to_planes(stored: torch.Tensor) -> np.ndarray:
    """uint8 [itemsize * n]: a record [T, L, H] laid out layer-major [L, T, H], its bytes regrouped into planes.

    Layer-major because each layer has its own range of magnitudes: the exponent plane then changes
    little within long runs (measured 9% smaller than token-major on SmolLM2, SPEC.md §8.1).
    numpy, not torch: torch copies a [n, 2] uint8 transpose about 6x slower (measured).
    """
    layer_major = stored.transpose(0, 1) if stored.dim() == 3 else stored
    flat = layer_major.contiguous().reshape(-1)
    if stored.dtype == torch.bfloat16:
        bits = flat.view(torch.int16).numpy().view(np.uint16)  # sign | 8 exponent bits | 7 mantissa bits
        planes = np.empty(2 * bits.size, dtype=np.uint8)
        planes[: bits.size] = bits >> 7  # the exponent (the store keeps the low 8 bits, dropping the sign)
        planes[bits.size :] = (bits << 1) | (bits >> 15)  # mantissa << 1 | sign (low 8 bits again)
        return planes
    return np.ascontiguousarray(flat.view(torch.uint8).numpy().reshape(-1, stored.element_size()).T).reshape(-1)


def from_planes(planes: np.ndarray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of to_planes: uint8 planes back to a `dtype` tensor of `shape` ([T, L, H] for records)."""
    layer_major_shape = (shape[1], shape[0], *shape[2:]) if len(shape) == 3 else shape
    if dtype == torch.bfloat16:
        half = planes.size // 2
        exponent, mantissa_sign = planes[:half].astype(np.uint16), planes[half:].astype(np.uint16)
        data = ((mantissa_sign & 1) << 15) | (exponent << 7) | (mantissa_sign >> 1)
    else:
        data = np.ascontiguousarray(planes.reshape(dtype.itemsize, -1).T)
    if not data.flags.writeable:  # one-byte dtypes need no regrouping, so data may still be the read-only input
        data = data.copy()
    values = torch.from_numpy(data).view(dtype).view(layer_major_shape)
    return values.transpose(0, 1).contiguous() if len(shape) == 3 else values


def encode_frame(stored: torch.Tensor, level: int = HIDDEN_ZSTD_LEVEL) -> bytes:
    """One record's stored hidden states as a zstd frame (content size and checksum on) of its byte planes."""
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    return compressor.compress(to_planes(stored))


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
    return from_planes(np.frombuffer(content, dtype=np.uint8), dtype, shape)
