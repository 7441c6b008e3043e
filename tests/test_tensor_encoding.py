"""The zstd tensor encoding (SPEC.md §8.1): lossless round trips, corruption caught, raw shards still read."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import zstandard

from conftest import random_samples
from libspec.capture.merge import merge_datasets
from libspec.errors import SpecError
from libspec.format import hidden_codec
from libspec.format.dataset import Dataset, DatasetWriter, read_manifest
from libspec.format.hidden_codec import decode_frame, encode_frame, from_planes, to_planes
from libspec.format.sample import make_header
from libspec.format.sample_table import open_sample_table
from libspec.format.stream import StreamReader, StreamWriter
from libspec.format.tensors import TensorShard, safetensors_bytes
from libspec.validate.artifacts import validate
from libspec.verifier import fingerprint_verifier

EXAMPLES = Path(__file__).resolve().parent.parent / "formats" / "examples"
DTYPES = ["float32", "bfloat16", "float16", "float8_e4m3fn"]


@pytest.fixture
def verifier(fake_verifier):
    return fingerprint_verifier(str(fake_verifier))


def header(verifier, dtype="bfloat16", encoding="zstd"):
    return make_header(verifier, [1, 2, 4], dtype, tool="test", tensor_encoding=encoding)


def write(path, header, samples, shard_bytes=3000):
    writer = DatasetWriter(path, header, shard_bytes=shard_bytes)
    for record, hidden in samples:
        writer.add(record, hidden)
    return writer.close()


def samples_with_layer_scales(count=20, seed=0):
    samples = random_samples(count, vocab=64, layers=3, hidden=16, seed=seed)
    for _, hidden in samples:
        hidden[:, 2] *= 300.0  # the last layer's magnitudes dwarf the others', as in real verifiers
    return samples


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn])
def test_planes_round_trip_every_bit_pattern(dtype):
    # Every 16-bit pattern (NaN, inf, -0, subnormals) for the two-byte dtypes; random bytes otherwise.
    count = 1 << 16 if dtype.itemsize == 2 else 3 * 5 * 64
    bits = torch.arange(count, dtype=torch.int32).to(torch.int16) if dtype.itemsize == 2 else torch.randint(0, 256, (count * dtype.itemsize,), dtype=torch.uint8)
    stored = bits.view(dtype).reshape(-1, 4, 16) if dtype.itemsize == 2 else bits.view(dtype).reshape(-1, 5, 64)
    back = from_planes(to_planes(stored), dtype, tuple(stored.shape))
    assert torch.equal(back.view(torch.uint8), stored.view(torch.uint8))
    frame = encode_frame(stored)
    assert torch.equal(decode_frame(frame, dtype, tuple(stored.shape), "t").view(torch.uint8), stored.view(torch.uint8))


@pytest.mark.parametrize("dtype", DTYPES)
def test_zstd_data_set_is_bit_identical_to_raw(tmp_path, verifier, dtype):
    samples = samples_with_layer_scales()
    raw = write(tmp_path / "raw", header(verifier, dtype, "raw"), samples)
    packed = write(tmp_path / "zstd", header(verifier, dtype, "zstd"), samples)
    assert (raw["format_version"], packed["format_version"]) == (1, 2)
    assert len(packed["shards"]) > 1
    for a, b in zip(Dataset(tmp_path / "raw"), Dataset(tmp_path / "zstd"), strict=True):
        assert a.record == b.record
        assert torch.equal(a.hidden.view(torch.uint8), b.hidden.view(torch.uint8))
        assert (a.scales is None and b.scales is None) or torch.equal(a.scales, b.scales)


def test_zstd_fp8_keeps_fp8_precision_and_is_smallest(tmp_path, verifier):
    samples = samples_with_layer_scales()
    sizes = {}
    for dtype, encoding in (("bfloat16", "raw"), ("bfloat16", "zstd"), ("float8_e4m3fn", "zstd")):
        manifest = write(tmp_path / f"{dtype}-{encoding}", header(verifier, dtype, encoding), samples)
        sizes[dtype, encoding] = sum(s["tensors_bytes"] for s in manifest["shards"])
    for sample, (_, hidden) in zip(Dataset(tmp_path / "float8_e4m3fn-zstd"), samples):
        relative = (sample.hidden_states() - hidden).abs() / hidden.abs().amax(dim=-1, keepdim=True)
        assert float(relative.max()) < 0.07  # e4m3 keeps 3 mantissa bits
    assert sizes["float8_e4m3fn", "zstd"] < sizes["bfloat16", "zstd"] < sizes["bfloat16", "raw"]


def test_training_table_reads_zstd_like_raw(tmp_path, verifier):
    samples = samples_with_layer_scales(8)
    write(tmp_path / "raw", header(verifier, "bfloat16", "raw"), samples)
    write(tmp_path / "zstd", header(verifier, "bfloat16", "zstd"), samples)
    raw, packed = open_sample_table(tmp_path / "raw"), open_sample_table(tmp_path / "zstd")
    for index in range(len(raw.records)):
        assert torch.equal(raw.hidden(index, [0, 2]), packed.hidden(index, [0, 2]))


def test_raw_data_sets_stay_format_version_1_and_the_old_example_still_reads(tmp_path, verifier):
    manifest = write(tmp_path / "raw", header(verifier, "bfloat16", "raw"), samples_with_layer_scales(4))
    assert manifest["format_version"] == 1 and "tensor_encoding" not in manifest["hidden_states"]
    assert TensorShard(tmp_path / "raw" / "hidden-00000.safetensors").metadata["format_version"] == "1"
    old = Dataset(EXAMPLES / "dataset")
    assert old.manifest["format_version"] == 1 and old.tensor_encoding == "raw"
    assert len(list(old)) == old.num_records
    assert validate(str(EXAMPLES / "dataset-zstd-fp8")).ok


def test_stream_of_a_zstd_header_carries_planes_and_reads_back_exactly(verifier):
    samples = samples_with_layer_scales(5)
    buffer = io.BytesIO()
    writer = StreamWriter(buffer, header(verifier, "bfloat16", "zstd"))
    for record, hidden in samples:
        writer.add(record, hidden)
    writer.close()
    read = list(StreamReader(io.BytesIO(buffer.getvalue())))
    for sample, (_, hidden) in zip(read, samples, strict=True):
        assert torch.equal(sample.hidden, hidden.to(torch.bfloat16))


def test_merge_joins_zstd_data_sets_and_refuses_mixed_encodings(tmp_path, verifier):
    samples = samples_with_layer_scales(6)
    write(tmp_path / "a", header(verifier, "bfloat16", "zstd"), samples[:3])
    write(tmp_path / "b", header(verifier, "bfloat16", "zstd"), [({**r, "id": r["id"] + "b"}, h) for r, h in samples[3:]])
    merge_datasets([tmp_path / "a", tmp_path / "b"], tmp_path / "ab")
    assert [s.record["input_ids"] for s in Dataset(tmp_path / "ab")] == [r["input_ids"] for r, _ in samples]
    write(tmp_path / "raw", header(verifier, "bfloat16", "raw"), [({**r, "id": r["id"] + "r"}, h) for r, h in samples[:2]])
    with pytest.raises(SpecError, match="tensor encoding"):
        merge_datasets([tmp_path / "a", tmp_path / "raw"], tmp_path / "mixed")


def test_resume_refuses_another_encoding(tmp_path, verifier):
    writer = DatasetWriter(tmp_path / "data", header(verifier, "bfloat16", "raw"))
    del writer  # an interrupted run: the manifest exists, incomplete
    with pytest.raises(SpecError, match="hidden_states differs"):
        DatasetWriter(tmp_path / "data", header(verifier, "bfloat16", "zstd"), resume=True)


# ---- corruption ------------------------------------------------------------------------------


def zstd_shard(tmp_path, verifier, dtype="bfloat16") -> Path:
    write(tmp_path / "data", header(verifier, dtype, "zstd"), samples_with_layer_scales(4), shard_bytes=1 << 20)
    return tmp_path / "data" / "hidden-00000.safetensors"


def rewrite_shard(path: Path, edit) -> None:
    """Rebuild a shard from its tensors and metadata after `edit(tensors, metadata)` (a well-formed file, bad content)."""
    shard = TensorShard(path)
    tensors = {name: tensor.clone() for name, tensor in shard.tensors.items()}
    metadata = dict(shard.metadata)
    edit(tensors, metadata)
    path.write_bytes(safetensors_bytes(tensors, metadata))


def test_a_flipped_bit_in_a_frame_is_caught_by_the_manifest_and_by_the_frame(tmp_path, verifier):
    path = zstd_shard(tmp_path, verifier)
    data = bytearray(path.read_bytes())
    data[-200] ^= 0x10  # inside the last record's frame
    path.write_bytes(bytes(data))
    with pytest.raises(SpecError, match="sha256"):
        list(Dataset(tmp_path / "data"))
    with pytest.raises(SpecError, match=r"record 3: zstd frame is corrupted"):
        [TensorShard(path).record_rows(i) for i in range(4)]
    report = validate(str(path))
    assert not report.ok and "record 3" in report.problems[0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t, m: t.update(frame_offsets=t["frame_offsets"].flip(0)), "frame_offsets must rise from 0"),
        (lambda t, m: t.pop("frame_offsets"), "'frame_offsets' is missing"),
        (lambda t, m: t.update(hidden_states=torch.zeros(1, 3, 16, dtype=torch.bfloat16)), "unexpected tensor"),
        (lambda t, m: m.update(transform="byte-shuffle"), "transform 'byte-shuffle' does not belong to bfloat16"),
        (lambda t, m: m.update(format_version="1"), "safetensors metadata"),
        (lambda t, m: m.pop("hidden_size"), "safetensors metadata"),
        (lambda t, m: t.update(hidden_scales=torch.ones(int(t["offsets"][-1]), 3)), "only allowed with float8_e4m3fn"),
    ],
)
def test_bad_zstd_shard_layouts_are_refused_on_open(tmp_path, verifier, edit, message):
    path = zstd_shard(tmp_path, verifier)
    rewrite_shard(path, edit)
    with pytest.raises(SpecError, match=message):
        TensorShard(path)


def test_a_frame_declaring_another_size_is_refused_before_decoding(tmp_path, verifier):
    path = zstd_shard(tmp_path, verifier)

    def swap_first_frame(tensors, metadata):
        frames, ends = tensors["hidden_frames"], tensors["frame_offsets"]
        wrong = encode_frame(torch.zeros(1, 3, 16, dtype=torch.bfloat16))  # a valid frame of one row
        rest = frames[int(ends[1]) :]
        tensors["hidden_frames"] = torch.cat([torch.frombuffer(bytearray(wrong), dtype=torch.uint8), rest])
        tensors["frame_offsets"] = torch.cat([torch.tensor([0]), ends[1:] - int(ends[1]) + len(wrong)])

    rewrite_shard(path, swap_first_frame)
    with pytest.raises(SpecError, match=r"record 0: zstd frame declares 96 bytes, shape \[\d+, 3, 16\] torch.bfloat16 needs \d+ bytes"):
        TensorShard(path).record_rows(0)


def test_a_frame_without_content_size_or_with_trailing_bytes_is_refused():
    stored = torch.randn(4, 3, 16).to(torch.bfloat16)
    planes = to_planes(stored)
    no_size = zstandard.ZstdCompressor(write_content_size=False, write_checksum=True).compress(planes)
    with pytest.raises(SpecError, match="declares no content size"):
        decode_frame(no_size, torch.bfloat16, (4, 3, 16), "r")
    with pytest.raises(SpecError, match="bytes follow the zstd frame"):
        decode_frame(encode_frame(stored) + b"\x00", torch.bfloat16, (4, 3, 16), "r")
    with pytest.raises(SpecError, match="truncated|corrupted"):
        decode_frame(encode_frame(stored)[:-5], torch.bfloat16, (4, 3, 16), "r")


def test_a_record_past_the_frame_limit_is_refused_before_allocating(monkeypatch):
    monkeypatch.setattr(hidden_codec, "MAX_HIDDEN_FRAME_BYTES", 1000)
    with pytest.raises(SpecError, match=r"limit \(SPEC.md §8.1\)"):
        decode_frame(b"", torch.bfloat16, (10**9, 3, 16), "r")


def test_hostile_offsets_cannot_make_a_reader_allocate(tmp_path, verifier):
    path = zstd_shard(tmp_path, verifier)
    rewrite_shard(path, lambda t, m: t["offsets"].__setitem__(-1, 1 << 40))
    shard = TensorShard(path)
    with pytest.raises(SpecError, match="limit"):
        shard.record_rows(3)


def test_manifest_encoding_must_match_the_shards(tmp_path, verifier):
    write(tmp_path / "data", header(verifier, "bfloat16", "zstd"), samples_with_layer_scales(3))
    manifest = read_manifest(tmp_path / "data")
    manifest["hidden_states"]["tensor_encoding"] = "raw"
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SpecError, match="zstd encoding differs from the manifest's tensor_encoding raw"):
        list(Dataset(tmp_path / "data"))
    manifest["format_version"] = 1
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SpecError, match="tensor_encoding needs format_version 2"):
        Dataset(tmp_path / "data")
    del manifest["hidden_states"]["tensor_encoding"]
    manifest["format_version"] = 2
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SpecError, match="format_version 2 needs hidden_states.tensor_encoding"):
        Dataset(tmp_path / "data")
