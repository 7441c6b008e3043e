"""What every data source yields: a header describing the samples, then the samples themselves.

A data set directory and a stream carry the same header (SPEC.md, "Data header"): who made it,
from which verifier, which layers were captured and how they are stored.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import torch

import libspec
from libspec.errors import SpecError
from libspec.verifier import VerifierFingerprint
from libspec.format.tensors import STORAGE_DTYPES, decode_hidden

LAYER_ID_CONVENTION = "residual_after_k_layers"
# The data format version each tensor encoding is written with (SPEC.md §1); readers take both.
DATA_FORMAT_VERSIONS = {"raw": 1, "zstd": 2}
HEADER_KEYS = ("format", "format_version", "created_by", "created_at", "verifier", "hidden_states", "metadata")


@dataclass
class Sample:
    """One record and its captured hidden states (views on storage when read from a data set)."""

    record: dict
    hidden: torch.Tensor  # [tokens, layers, hidden] in the storage dtype
    scales: torch.Tensor | None = None  # [tokens, layers] for fp8 storage

    @property
    def num_tokens(self) -> int:
        return len(self.record["input_ids"])

    def hidden_states(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The hidden states decoded to a float dtype: [tokens, layers, hidden]."""
        return decode_hidden(self.hidden, self.scales, dtype)


def make_header(
    verifier: VerifierFingerprint,
    layer_ids: list[int],
    storage_dtype: str,
    tool: str,
    metadata: dict | None = None,
    created_at: str | None = None,
    tensor_encoding: str = "raw",
) -> dict:
    """A data header for samples captured from `verifier` at `layer_ids`, stored as `storage_dtype` in `tensor_encoding`.

    Raw data sets stay format version 1 (byte for byte what older readers read); zstd ones are version 2.
    """
    header = {
        "format": "spec-tools/dataset",
        "format_version": DATA_FORMAT_VERSIONS.get(tensor_encoding, 0),
        "created_by": {"tool": tool, "version": libspec.__version__},
        "created_at": created_at or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "verifier": verifier.to_dict(),
        "hidden_states": {
            "layer_ids": list(layer_ids),
            "layer_id_convention": LAYER_ID_CONVENTION,
            "storage_dtype": storage_dtype,
            "hidden_size": verifier.hidden_size,
            **({} if tensor_encoding == "raw" else {"tensor_encoding": tensor_encoding}),
        },
        "metadata": dict(metadata or {}),
    }
    problems = header_problems(header)
    if problems:
        raise SpecError(f"data header: {problems[0]}")
    return header


def header_problems(header: dict) -> list[str]:
    """Checks the schema cannot express: layer ids ascending and within the verifier's depth."""
    problems = []
    verifier, hidden = header.get("verifier", {}), header.get("hidden_states", {})
    layer_ids, depth = hidden.get("layer_ids", []), verifier.get("num_hidden_layers")
    if list(layer_ids) != sorted(set(layer_ids)):
        problems.append(f"hidden_states.layer_ids {layer_ids} must be ascending without repeats")
    if isinstance(depth, int) and any(not 0 <= i <= depth for i in layer_ids):
        problems.append(f"hidden_states.layer_ids {layer_ids} must lie in [0, {depth}] (num_hidden_layers)")
    if hidden.get("hidden_size") != verifier.get("hidden_size"):
        problems.append("hidden_states.hidden_size differs from verifier.hidden_size")
    version, encoding = header.get("format_version"), hidden.get("tensor_encoding", "raw")
    if version == 1 and "tensor_encoding" in hidden:
        problems.append("hidden_states.tensor_encoding needs format_version 2 (version 1 data sets are raw)")
    if version == 2 and "tensor_encoding" not in hidden:
        problems.append("format_version 2 needs hidden_states.tensor_encoding (raw or zstd)")
    if encoding not in DATA_FORMAT_VERSIONS:
        problems.append(f"hidden_states.tensor_encoding must be one of {', '.join(DATA_FORMAT_VERSIONS)}")
    if hidden.get("storage_dtype") not in STORAGE_DTYPES:
        problems.append(f"hidden_states.storage_dtype must be one of {', '.join(STORAGE_DTYPES)}")
    return problems


def header_of(document: dict) -> dict:
    """The header part of a manifest or stream header frame."""
    return {key: document[key] for key in HEADER_KEYS if key in document}
