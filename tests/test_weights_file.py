"""Weight files written tensor by tensor and read through maps (libspec/format/weights_file.py):
the bytes are the safetensors format, every dtype and shape survives, and row reads pick the rows."""

from __future__ import annotations

import safetensors.torch
import torch

from libspec.format.weights_file import WeightFile, map_weights, write_weights


def tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(50, 6, generator=generator).to(torch.bfloat16),
        "fc.weight": torch.randn(6, 12, generator=generator).to(torch.float16)[:, ::2],  # not contiguous
        "norm.weight": torch.randn(6, generator=generator),
        "d2t": torch.arange(7, dtype=torch.int64),
        "t2d": torch.rand(9, generator=generator) > 0.5,
        "scalar": torch.tensor(3.0, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
    }


def test_written_files_read_back_exactly_by_safetensors_and_by_our_maps(tmp_path):
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as handle:
        write_weights(handle, tensors(), {"format": "pt"})
    for read in (safetensors.torch.load_file(str(path)), map_weights(path)):
        assert read.keys() == tensors().keys()
        for name, tensor in tensors().items():
            assert read[name].dtype == tensor.dtype and torch.equal(read[name], tensor), name
    with safetensors.safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}


def test_rows_chunks_and_casts_read_what_a_whole_read_gives(tmp_path):
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as handle:
        write_weights(handle, tensors())
    weights, embed = WeightFile(path), tensors()["embed.weight"]
    rows = torch.tensor([0, 7, 7, 49, 3])
    assert torch.equal(weights.read("embed.weight", rows=rows), embed[rows])
    assert torch.equal(weights.read("embed.weight", rows=rows, dtype=torch.float32), embed[rows].float())
    chunks = list(weights.read_in_chunks("embed.weight", chunk_bytes=100))
    assert len(chunks) > 1 and torch.equal(torch.cat(chunks), embed)
    assert torch.equal(weights.read("scalar"), tensors()["scalar"]) and weights.read("empty").shape == (0, 4)
