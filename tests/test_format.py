"""The on-disk format (SPEC.md): data sets, record and tensor shards, streams — round trips and damage."""

from __future__ import annotations

import ctypes
import io
import json

import pytest
import torch

from conftest import random_samples
from libspec.format.sample_io import create_sink, open_data
from libspec.format.dataset import MANIFEST, Dataset, DatasetWriter, read_manifest
from libspec.errors import SpecError
from libspec.verifier import fingerprint_verifier
from libspec.format.records import decode_records, encode_records, read_record_shard
from libspec.format.sample import make_header
from libspec.format.schemas import schema_problems
from libspec.format.records import record_problems
from libspec.format.stream import StreamReader, StreamWriter
from libspec.format.tensors import TensorShard, decode_hidden, encode_hidden

LAYERS = [1, 2, 4]


@pytest.fixture
def header(fake_verifier):
    return make_header(fingerprint_verifier(str(fake_verifier)), LAYERS, "bfloat16", tool="test")


def header_with(header: dict, dtype: str) -> dict:
    return {**header, "hidden_states": {**header["hidden_states"], "storage_dtype": dtype}}


def write_dataset(path, header, samples, shard_bytes=1 << 20):
    writer = DatasetWriter(path, header, shard_bytes=shard_bytes)
    for record, hidden in samples:
        writer.add(record, hidden)
    return writer.close()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_dataset_round_trip_is_exact_in_storage_dtype(tmp_path, header, dtype):
    samples = random_samples(25, vocab=64, layers=3, hidden=16)
    manifest = write_dataset(tmp_path / "data", header_with(header, dtype), samples, shard_bytes=2000)
    assert manifest["complete"] and len(manifest["shards"]) > 2, "small shard_bytes must give several shards"
    dataset = Dataset(tmp_path / "data")
    read = list(dataset)
    assert [s.record for s in read] == [r for r, _ in samples]
    for sample, (_, hidden) in zip(read, samples):
        assert torch.equal(sample.hidden, hidden.to(sample.hidden.dtype))
    assert dataset.num_tokens == sum(len(r["input_ids"]) for r, _ in samples)


def test_fp8_storage_keeps_values_within_fp8_precision_and_halves_bytes(tmp_path, header):
    samples = random_samples(10, vocab=64, layers=3, hidden=16)
    for _, hidden in samples:
        hidden[:, 2] *= 300.0  # layers of very different magnitude share one token
    write_dataset(tmp_path / "bf16", header, samples)
    write_dataset(tmp_path / "fp8", header_with(header, "float8_e4m3fn"), samples)
    for sample, (_, hidden) in zip(Dataset(tmp_path / "fp8"), samples):
        decoded = sample.hidden_states()
        relative = (decoded - hidden).abs() / hidden.abs().amax(dim=-1, keepdim=True)
        assert float(relative.max()) < 0.07  # e4m3 has 3 mantissa bits
    bf16_bytes = (tmp_path / "bf16" / "hidden-00000.safetensors").stat().st_size
    fp8_bytes = (tmp_path / "fp8" / "hidden-00000.safetensors").stat().st_size
    assert fp8_bytes < 0.75 * bf16_bytes


def test_encode_decode_hidden_fp8_handles_all_zero_rows():
    hidden = torch.zeros(4, 2, 8)
    stored, scales = encode_hidden(hidden, "float8_e4m3fn")
    assert torch.equal(decode_hidden(stored, scales), hidden)


def test_tensor_shard_is_memory_mapped_not_copied(tmp_path, header):
    write_dataset(tmp_path / "data", header, random_samples(5, 64, 3, 16))
    shard = TensorShard(tmp_path / "data" / "hidden-00000.safetensors")
    base = ctypes.addressof(ctypes.c_char.from_buffer(shard._map))
    assert base <= shard.hidden.data_ptr() < base + len(shard._map)
    hidden, _ = shard.record_rows(1)
    assert base <= hidden.data_ptr() < base + len(shard._map)


def test_stream_round_trip(header):
    samples = random_samples(7, 64, 3, 16, seed=1)
    buffer = io.BytesIO()
    writer = StreamWriter(buffer, header)
    for record, hidden in samples:
        writer.add(record, hidden)
    writer.close()
    buffer.seek(0)
    reader = StreamReader(buffer)
    assert reader.header["hidden_states"] == header["hidden_states"]
    read = list(reader)
    assert [s.record for s in read] == [r for r, _ in samples]
    assert all(torch.equal(s.hidden, h.to(torch.bfloat16)) for s, (_, h) in zip(read, samples))
    assert reader.end == {"type": "end", "num_records": 7, "num_tokens": sum(len(r["input_ids"]) for r, _ in samples)}


def test_fp8_stream_round_trip(header):
    samples = random_samples(3, 64, 3, 16, seed=2)
    buffer = io.BytesIO()
    writer = StreamWriter(buffer, header_with(header, "float8_e4m3fn"))
    for record, hidden in samples:
        writer.add(record, hidden)
    writer.close()
    read = list(StreamReader(io.BytesIO(buffer.getvalue())))
    for sample, (_, hidden) in zip(read, samples):
        stored, scales = encode_hidden(hidden, "float8_e4m3fn")
        assert torch.equal(sample.hidden.view(torch.uint8), stored.view(torch.uint8))
        assert torch.equal(sample.scales, scales)


def stream_bytes(header, count=4) -> bytes:
    buffer = io.BytesIO()
    writer = StreamWriter(buffer, header)
    for record, hidden in random_samples(count, 64, 3, 16, seed=3):
        writer.add(record, hidden)
    writer.close()
    return buffer.getvalue()


@pytest.mark.parametrize("cut", [1, 50, 400])
def test_truncated_stream_is_an_error_not_a_short_read(header, cut):
    data = stream_bytes(header)
    with pytest.raises(SpecError, match="truncated"):
        list(StreamReader(io.BytesIO(data[:-cut])))


def test_corrupted_stream_frame_names_the_frame(header):
    data = bytearray(stream_bytes(header))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(SpecError, match=r"frame \d+"):
        list(StreamReader(io.BytesIO(bytes(data))))


def test_not_a_stream(tmp_path):
    with pytest.raises(SpecError, match="not a spec-tools stream"):
        StreamReader(io.BytesIO(b"hello world"), "x.bin")


def test_open_data_reads_directories_stream_files_and_stdin(tmp_path, header):
    samples = random_samples(4, 64, 3, 16)
    write_dataset(tmp_path / "data", header, samples)
    (tmp_path / "data.spst").write_bytes(stream_bytes(header, 4))
    from_dir = [s.record["id"] for s in open_data(tmp_path / "data")]
    stream_file = open_data(tmp_path / "data.spst")
    assert [s.record["id"] for s in stream_file] == [s.record["id"] for s in stream_file]  # re-iterable
    from_stdin = open_data("-", stdin=io.BytesIO((tmp_path / "data.spst").read_bytes()))
    assert [s.record["id"] for s in from_stdin] == from_dir
    with pytest.raises(SpecError, match="no such file"):
        open_data(tmp_path / "missing")


def test_create_sink_streams_to_stdout(header):
    out = io.BytesIO()
    sink = create_sink("-", header, stdout=out)
    for record, hidden in random_samples(2, 64, 3, 16):
        sink.add(record, hidden)
    sink.close()
    assert len(list(StreamReader(io.BytesIO(out.getvalue())))) == 2


def test_writer_resumes_after_a_crash_without_duplicates(tmp_path, header):
    samples = random_samples(30, 64, 3, 16, seed=4)
    write_dataset(tmp_path / "whole", header, samples, shard_bytes=5000)

    crashed = DatasetWriter(tmp_path / "part", header, shard_bytes=5000)
    for record, hidden in samples[:17]:
        crashed.add(record, hidden)  # never closed: the queued samples are lost, like a kill -9
    (tmp_path / "part" / ".records-00009.msgpack.zst.x.tmp").write_bytes(b"partial write")
    committed = crashed.num_records
    assert 0 < committed < 17

    resumed = DatasetWriter(tmp_path / "part", header, shard_bytes=5000, resume=True)
    assert resumed.num_records == committed
    assert not list((tmp_path / "part").glob(".*tmp")), "leftovers of the crash are removed"
    for record, hidden in samples[committed:]:
        resumed.add(record, hidden)
    resumed.close()
    whole, part = read_manifest(tmp_path / "whole"), read_manifest(tmp_path / "part")
    assert [s["records_sha256"] for s in part["shards"]] == [s["records_sha256"] for s in whole["shards"]]
    assert [s["tensors_sha256"] for s in part["shards"]] == [s["tensors_sha256"] for s in whole["shards"]]


def test_writer_refuses_to_overwrite(tmp_path, header):
    write_dataset(tmp_path / "data", header, random_samples(2, 64, 3, 16))
    with pytest.raises(SpecError, match="already holds a data set"):
        DatasetWriter(tmp_path / "data", header)
    with pytest.raises(SpecError, match="already complete"):
        DatasetWriter(tmp_path / "data", header, resume=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SpecError, match="not empty"):
        DatasetWriter(tmp_path / "other", header)


def test_resume_refuses_other_layers(tmp_path, header):
    writer = DatasetWriter(tmp_path / "data", header, shard_bytes=100)
    for record, hidden in random_samples(3, 64, 3, 16):
        writer.add(record, hidden)
    other = {**header, "hidden_states": {**header["hidden_states"], "layer_ids": [1, 2, 3]}}
    with pytest.raises(SpecError, match="hidden_states differs"):
        DatasetWriter(tmp_path / "data", other, resume=True)


def test_writer_rejects_bad_samples_with_the_sample_named(tmp_path, header):
    writer = DatasetWriter(tmp_path / "data", header)
    record = {"id": "bad-one", "input_ids": [1, 2, 99], "loss_mask": [0, 1, 1]}
    with pytest.raises(SpecError, match=r"'bad-one'.*token id 99 >= vocab size 64"):
        writer.add(record, torch.zeros(3, 3, 16))
    record["input_ids"] = [1, 2, 3]
    with pytest.raises(SpecError, match=r"shape \[3, 2, 16\], expected \[3, 3, 16\]"):
        writer.add(record, torch.zeros(3, 2, 16))


def test_incomplete_data_set_is_refused_for_reading(tmp_path, header):
    writer = DatasetWriter(tmp_path / "data", header, shard_bytes=100)
    for record, hidden in random_samples(3, 64, 3, 16):
        writer.add(record, hidden)
    with pytest.raises(SpecError, match="incomplete"):
        Dataset(tmp_path / "data")


def test_record_shard_errors_name_file_and_record(tmp_path):
    records = [{"id": str(i), "input_ids": [1, 2], "loss_mask": [0, 1]} for i in range(3)]
    data = encode_records(records)
    assert decode_records(data) == records
    path = tmp_path / "records-00000.msgpack.zst"
    path.write_bytes(data[:-5])
    with pytest.raises(SpecError, match=r"records-00000.msgpack.zst: not a complete zstd frame"):
        read_record_shard(path)


def test_manifest_schema_violation_is_reported_with_its_location(tmp_path, header):
    write_dataset(tmp_path / "data", header, random_samples(2, 64, 3, 16))
    manifest = json.loads((tmp_path / "data" / MANIFEST).read_text())
    manifest["hidden_states"]["storage_dtype"] = "int4"
    (tmp_path / "data" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SpecError, match=r"manifest.json: does not match .* at hidden_states/storage_dtype"):
        read_manifest(tmp_path / "data")


@pytest.mark.parametrize(
    "record",
    [
        {"id": "a", "input_ids": [1, 2], "loss_mask": [0, 1]},
        {"id": "a", "input_ids": [1, 2], "loss_mask": [0, 1], "metadata": {"k": 1}},
        {"id": "a", "input_ids": [1, 2], "loss_mask": [0, 2]},
        {"id": "a", "input_ids": [], "loss_mask": []},
        {"id": 3, "input_ids": [1], "loss_mask": [1]},
        {"id": "a", "input_ids": [-1], "loss_mask": [1]},
        {"id": "a", "input_ids": [1], "loss_mask": [1], "extra": 1},
        {"input_ids": [1], "loss_mask": [1]},
        {"id": "a", "input_ids": [1, True], "loss_mask": [1, 1]},
        {"id": "a", "input_ids": [1], "loss_mask": [1], "metadata": []},
        {"id": "a", "input_ids": [1, 2], "loss_mask": [True, False]},  # issue 16.8: msgpack booleans are not 0/1
    ],
)
def test_fast_record_check_agrees_with_the_schema(record):
    # The reader's hot-path check must accept and reject exactly what record.schema.json does
    # (apart from equal lengths, which JSON Schema cannot express).
    assert bool(record_problems(record)) == bool(schema_problems("record", record))


def test_tensor_shards_are_readable_by_the_safetensors_library(tmp_path, header):
    import safetensors.torch

    samples = random_samples(3, 64, 3, 16)
    write_dataset(tmp_path / "data", header_with(header, "float8_e4m3fn"), samples)
    path = tmp_path / "data" / "hidden-00000.safetensors"
    loaded = safetensors.torch.load_file(str(path))
    ours = TensorShard(path)
    assert set(loaded) == {"hidden_states", "offsets", "hidden_scales"}
    assert torch.equal(loaded["hidden_states"].view(torch.uint8), ours.hidden.view(torch.uint8))
    assert torch.equal(loaded["hidden_scales"], ours.scales)
    assert torch.equal(loaded["offsets"], ours.offsets)
