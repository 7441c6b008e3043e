"""Readers meet bad input (issue 16 items 5, 7, 8): a one-line SpecError naming the file and what was
expected — never a traceback, a hang, or memory out of proportion to the file (SPEC.md §2 limits)."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import signal
import struct
import time
import tracemalloc
from pathlib import Path

import msgpack
import pytest
import torch
import zstandard

from libspec.bench.prompts import load_prompt_set
from libspec.capture.inputs import count_items, expand_inputs, normalise, read_items
from libspec.errors import SpecError
from libspec.format import records as records_module
from libspec.format.checkpoint import weight_files
from libspec.format.dataset import MANIFEST, Dataset, read_manifest
from libspec.format.records import decode_records, encode_records, read_record_shard, record_problems
from libspec.format.sample_io import open_data
from libspec.format.sample_table import open_sample_table
from libspec.format.schemas import schema_problems
from libspec.format.stream import MAGIC, StreamReader
from libspec.format.tensors import TensorShard

EXAMPLES = Path(__file__).resolve().parent.parent / "formats" / "examples"
RECORD = {"id": "0", "input_ids": [1, 2, 3], "loss_mask": [0, 1, 1]}


def rle_frame(size: int, byte: int = 0, content_size: bool = True) -> bytes:
    """A zstd frame of `size` copies of `byte` built from RLE blocks: 4 bytes per 128 KiB, a 'zip bomb'."""
    frame = bytearray(b"\x28\xb5\x2f\xfd")
    frame += bytes([0xE0]) + struct.pack("<Q", size) if content_size else bytes([0x00, 0x38])  # else: window 128 KiB
    remaining = size
    while True:
        block = min(1 << 17, remaining)
        remaining -= block
        frame += (int(remaining == 0) | 1 << 1 | block << 3).to_bytes(3, "little") + bytes([byte])
        if remaining == 0:
            return bytes(frame)


def safetensors_file(path: Path, header: dict, data: bytes) -> Path:
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def read_safetensors(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    shutil.copytree(EXAMPLES / "dataset", tmp_path / "data")
    return tmp_path / "data"


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: a reader blocked on a FIFO gets an exception from SIGALRM."""

    def expired(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---- item 5: declared sizes are checked before allocating; only regular files are read ----------


def test_issue_16_record_shard_expanding_to_gigabytes_is_refused_before_decompressing(tmp_path):
    bomb = rle_frame(int(2.3e9))  # 70 KB that zstd would expand to 2.3 GB
    assert len(bomb) < 80_000
    path = tmp_path / "records-00000.msgpack.zst"
    path.write_bytes(bomb)
    started = time.perf_counter()
    with pytest.raises(SpecError, match=r"records-00000.msgpack.zst: record shard expands to 2300000000 bytes, past the 256 MiB limit \(SPEC.md §7\)"):
        read_record_shard(path)
    assert time.perf_counter() - started < 1.0, "refused from the frame header, not after decompressing"


def test_issue_16_record_shard_without_a_declared_size_stops_at_the_limit(monkeypatch):
    monkeypatch.setattr(records_module, "MAX_RECORD_SHARD_BYTES", 1 << 20)
    with pytest.raises(SpecError, match=r"x.zst: record shard expands past the 1 MiB limit \(SPEC.md §7\)"):
        decode_records(rle_frame(64 << 20, 0xC0, content_size=False), "x.zst")  # 64 MiB of msgpack nils
    assert decode_records(rle_frame(1 << 20, 0xC0, content_size=False)) == [None] * (1 << 20)  # at the limit: read


@pytest.mark.slow
def test_issue_16_record_shard_over_100_MiB_reads(tmp_path):
    # msgpack's default 100 MiB buffer made any larger shard fail with a BufferFull traceback.
    big = {**RECORD, "metadata": {"note": "x" * (101 << 20)}}
    path = tmp_path / "records-00000.msgpack.zst"
    path.write_bytes(encode_records([big, RECORD]))
    assert [r["id"] for r in read_record_shard(path)] == ["0", "0"]


def test_issue_16_stream_frame_expanding_to_gigabytes_is_refused_before_decompressing(monkeypatch):
    from libspec.format import stream as stream_module

    bomb = rle_frame(int(4.4e9))
    stream = MAGIC + struct.pack("<I", len(bomb)) + bomb
    started = time.perf_counter()
    with pytest.raises(SpecError, match=r"s.spst: frame 0: frame expands to 4400000000 bytes, past the 1 GiB limit \(SPEC.md §10\)"):
        StreamReader(io.BytesIO(stream), "s.spst")
    assert time.perf_counter() - started < 1.0, "refused from the frame header, not after decompressing"
    monkeypatch.setattr(stream_module, "MAX_STREAM_FRAME_BYTES", 1 << 20)
    no_size = rle_frame(64 << 20, content_size=False)
    with pytest.raises(SpecError, match=r"frame 0: frame expands past the 1 MiB limit"):
        StreamReader(io.BytesIO(MAGIC + struct.pack("<I", len(no_size)) + no_size), "s.spst")


class _EndlessAfter:
    """`prefix`, then zeros without end: a stream that would fill memory if read to a declared length."""

    def __init__(self, prefix: bytes):
        self.prefix = prefix

    def read(self, size: int) -> bytes:
        if self.prefix:
            data, self.prefix = self.prefix[:size], self.prefix[size:]
            return data
        return bytes(min(size, 1 << 20))


def test_issue_16_stream_frame_length_past_the_limit_is_refused_before_reading():
    with pytest.raises(SpecError, match=r"s.spst: frame 0: length 4294967295 is more than a frame within the 1 GiB limit can take"):
        StreamReader(_EndlessAfter(MAGIC + b"\xff\xff\xff\xff"), "s.spst")


@pytest.mark.parametrize("shard", ["records-00000.msgpack.zst", "hidden-00000.safetensors"])
def test_issue_16_a_shard_symlinked_to_dev_zero_is_refused(dataset_dir, shard):
    (dataset_dir / shard).unlink()
    (dataset_dir / shard).symlink_to("/dev/zero")
    with pytest.raises(SpecError, match=rf"{shard}: the shard 0 \w+ file is a character device, expected a regular file"):
        Dataset(dataset_dir)
    with pytest.raises(SpecError, match=rf"{shard}: the (record|tensor) shard is a character device, expected a regular file"):
        read_record_shard(dataset_dir / shard) if shard.startswith("records") else TensorShard(dataset_dir / shard)
    with pytest.raises(SpecError, match="is a character device"):
        list(Dataset(dataset_dir, check_files=False))


def test_issue_16_a_shard_resolving_outside_the_data_set_is_refused(dataset_dir, tmp_path):
    outside = tmp_path / "elsewhere.msgpack.zst"
    (dataset_dir / "records-00000.msgpack.zst").rename(outside)
    (dataset_dir / "records-00000.msgpack.zst").symlink_to(outside)
    with pytest.raises(SpecError, match=r"records-00000.msgpack.zst: the shard 0 records file resolves to .*elsewhere.msgpack.zst, outside"):
        Dataset(dataset_dir)


def test_issue_16_fifos_are_refused_without_blocking(dataset_dir, tmp_path):
    for name in ("records-00000.msgpack.zst", "hidden-00000.safetensors", MANIFEST):
        (dataset_dir / name).unlink()
        os.mkfifo(dataset_dir / name)
    os.mkfifo(tmp_path / "stream.spst")
    os.mkfifo(tmp_path / "in.jsonl")
    with deadline(10):
        with pytest.raises(SpecError, match=r"manifest.json: the file is a FIFO \(named pipe\), expected a regular file"):
            Dataset(dataset_dir)
        with pytest.raises(SpecError, match="records-00000.msgpack.zst: the record shard is a FIFO"):
            read_record_shard(dataset_dir / "records-00000.msgpack.zst")
        with pytest.raises(SpecError, match="hidden-00000.safetensors: the tensor shard is a FIFO"):
            TensorShard(dataset_dir / "hidden-00000.safetensors")
        with pytest.raises(SpecError, match="stream.spst: the stream file is a FIFO"):
            open_data(tmp_path / "stream.spst")
        with pytest.raises(SpecError, match="in.jsonl: the input file is a FIFO"):
            expand_inputs([str(tmp_path / "in.jsonl")])
        with pytest.raises(SpecError, match="in.jsonl: the input file is a FIFO"):
            list(read_items([str(tmp_path / "in.jsonl")]))


def test_issue_16_spec_validate_refuses_a_fifo_in_place_of_a_stream_file_without_blocking(tmp_path):
    from libspec.validate.artifacts import validate
    from tools.spec_validate import main as spec_validate

    os.mkfifo(tmp_path / "stream.spst")
    with deadline(10):
        report = validate(str(tmp_path / "stream.spst"))
        assert spec_validate(["--json", str(tmp_path / "stream.spst")]) == 1
    assert not report.ok and report.problems == [f"{tmp_path / 'stream.spst'}: the file is a FIFO (named pipe), expected a regular file"]


def test_issue_16_a_50_MB_jsonl_line_is_one_bad_line_read_in_bounded_memory(tmp_path):
    path = tmp_path / "in.jsonl"
    with open(path, "w") as handle:
        handle.write('{"text": "' + "a" * 50_000_000 + '"}\n{"text": "fine"}\n')
    tracemalloc.start()
    try:
        items = list(read_items([str(path)]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20, f"peak {peak >> 20} MiB"
    assert [i.line for i in items] == [1, 2]
    assert items[0].error == "line longer than the 8 MiB limit (SPEC.md §9.1)"
    assert normalise(items[1]).text == "fine"
    assert count_items([str(path)]) == 2
    with pytest.raises(SpecError, match=r"in.jsonl:1: line longer than the 8 MiB limit"):
        normalise(items[0])


def test_issue_16_json_array_files_are_read_an_item_at_a_time(tmp_path):
    items = [{"text": "t" * 1000 + str(i)} for i in range(3000)]
    one_line = tmp_path / "dump.json"
    one_line.write_text(json.dumps(items))  # one 3 MB line, as json.dump writes it: still an array file
    assert [normalise(i).text for i in read_items([str(one_line)])] == [i["text"] for i in items]
    assert count_items([str(one_line)]) == 3000
    long_item = tmp_path / "long.json"
    long_item.write_text(json.dumps([{"text": "ok"}, {"text": "a" * (9 << 20)}]))
    with pytest.raises(SpecError, match=r"long.json: item 2 of the JSON array is longer than the 8 MiB limit"):
        list(read_items([str(long_item)]))
    for text, message in (("[1, 2", "it ends after 2 items without its closing ]"), ("[1] 2", "data after its closing ]"), ("[1 2]", "expected , or ] after item 1")):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(SpecError, match=rf"bad.json: not a valid JSON array: {message}"):
            list(read_items([str(tmp_path / "bad.json")]))
    (tmp_path / "numbers.json").write_text("[\n 12345, \n true,null , 1.5e3\n]\n")
    assert [i.value for i in read_items([str(tmp_path / "numbers.json")])] == [12345, True, None, 1500.0]


# ---- item 7: a one-line error where a traceback was -------------------------------------------


def test_issue_16_non_utf8_manifest_is_a_one_line_error(dataset_dir):
    manifest = dataset_dir / MANIFEST
    manifest.write_bytes(manifest.read_bytes().replace(b'"random values"', b'"caf\xe9"'))
    with pytest.raises(SpecError, match=r"manifest.json: not valid JSON: 'utf-8' codec can't decode byte 0xe9"):
        Dataset(dataset_dir)


def tensor_shard_with(tmp_path, mutate) -> Path:
    header, data = read_safetensors(EXAMPLES / "dataset" / "hidden-00000.safetensors")
    mutate(header)
    return safetensors_file(tmp_path / "hidden-00000.safetensors", header, data)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda h: h["offsets"].pop("data_offsets"), "tensor 'offsets': expected an entry with dtype, shape and data_offsets"),
        (lambda h: h["hidden_states"].pop("shape"), "tensor 'hidden_states': expected an entry with dtype, shape and data_offsets"),
        (lambda h: h.update(offsets="I64"), "tensor 'offsets': expected an entry with dtype, shape and data_offsets"),
        (lambda h: h["hidden_states"].update(shape=[-2, 3, 8]), r"tensor 'hidden_states': shape must be a list of non-negative integers, found \[-2, 3, 8\]"),
        (lambda h: h["hidden_states"].update(shape=[True, 3, 8]), "shape must be a list of non-negative integers"),
        (lambda h: h["hidden_states"].update(shape=[2, 3, 8, 1]), r"hidden_states must be \[tokens, layers, hidden\], found shape \[2, 3, 8, 1\]"),
        (lambda h: h["offsets"].update(data_offsets=[10]), r"tensor 'offsets': data_offsets must be \[begin, end\]"),
        (lambda h: h["offsets"].update(data_offsets=[50, 40]), r"data_offsets must be \[begin, end\] with 0 <= begin <= end"),
        (lambda h: h["offsets"].update(dtype=["I64"]), r"tensor 'offsets': unsupported dtype \[\"I64\"\]"),
        (lambda h: h.update(__metadata__=[1]), "safetensors __metadata__ must map names to strings"),
        (lambda h: h["__metadata__"].update(num_records="9" * 5000), "offsets must be int64"),
        (lambda h: h["__metadata__"].update(layer_ids="[" + "9" * 5000 + "]"), "layer_ids is not a JSON list of integers"),
        (lambda h: h.update(extra={"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}), "overlaps the tensor before it"),
    ],
)
def test_issue_16_tensor_shard_headers_are_checked_when_the_shard_is_opened(tmp_path, mutate, message):
    path = tensor_shard_with(tmp_path, mutate)
    with pytest.raises(SpecError, match=rf"hidden-00000.safetensors: .*{message}"):
        TensorShard(path)


def test_issue_16_spec_train_meets_a_damaged_tensor_shard_before_its_first_step(dataset_dir):
    # Previously the table opened tensor shards lazily: a bad header surfaced as a KeyError mid-epoch.
    last = dataset_dir / "hidden-00002.safetensors"
    header, data = read_safetensors(last)
    del header["offsets"]["data_offsets"]
    safetensors_file(last, header, data)
    manifest = json.loads((dataset_dir / MANIFEST).read_text())
    shard = manifest["shards"][2]
    shard["tensors_bytes"] = last.stat().st_size
    shard["tensors_sha256"] = __import__("hashlib").sha256(last.read_bytes()).hexdigest()
    (dataset_dir / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SpecError, match="hidden-00002.safetensors: tensor 'offsets': expected an entry with dtype, shape and data_offsets"):
        open_sample_table(dataset_dir)


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: p.symlink_to(p.name)], ids=["directory", "symlink-loop"])
def test_issue_16_a_directory_or_symlink_loop_where_a_shard_belongs(dataset_dir, make):
    for name in ("records-00000.msgpack.zst", "hidden-00000.safetensors"):
        (dataset_dir / name).unlink()
        make(dataset_dir / name)
    expected = "is a directory, expected a regular file" if (dataset_dir / "records-00000.msgpack.zst").is_dir() else "Too many levels of symbolic links"
    with pytest.raises(SpecError, match=f"records-00000.msgpack.zst: .*{expected}"):
        read_record_shard(dataset_dir / "records-00000.msgpack.zst")
    with pytest.raises(SpecError, match=f"hidden-00000.safetensors: .*{expected}"):
        TensorShard(dataset_dir / "hidden-00000.safetensors")
    with pytest.raises(SpecError, match=f"records-00000.msgpack.zst: .*{expected}"):
        Dataset(dataset_dir)


def test_issue_16_deeply_nested_json_in_a_manifest(dataset_dir):
    manifest = dataset_dir / MANIFEST
    original = manifest.read_bytes()
    manifest.write_bytes(original.replace(b'"random values"', b"[" * 100_000 + b"]" * 100_000))
    with pytest.raises(SpecError, match=r"manifest.json: not valid JSON: nested too deeply"):
        read_manifest(dataset_dir)
    manifest.write_bytes(original.replace(b'"random values"', b"[" * 100 + b"]" * 100))
    with pytest.raises(SpecError, match=r"manifest.json: nested more than 64 levels deep \(SPEC.md §2\)"):
        read_manifest(dataset_dir)


def test_issue_16_deeply_nested_json_in_inputs_is_a_bad_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n' + "[" * 100_000 + "]" * 100_000 + '\n{"text": "b", "x": ' + "[" * 80 + "]" * 80 + "}\n")
    items = list(read_items([str(path)]))
    assert [i.error for i in items] == [None, "not valid JSON: nested too deeply", "not valid JSON: nested more than 64 levels deep"]
    (tmp_path / "deep.json").write_text("[" + "[" * 100_000 + "]" * 100_000 + "]")
    with pytest.raises(SpecError, match="deep.json: not a valid JSON array: item 1 is nested too deeply"):
        list(read_items([str(tmp_path / "deep.json")]))


def test_issue_16_weight_map_that_is_not_a_map(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": 5}))
    with pytest.raises(SpecError, match=r"model.safetensors.index.json: not a shard index: expected weight_map to map tensor names to file names, found int"):
        weight_files(tmp_path)


def test_issue_16_binary_and_non_utf8_jsonl_lines_are_bad_lines(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "a"}\n\x89PNG\r\n\x00\x00\xff\xd8\n{"text": "caf\xe9"}\n{"text": "b"}\n')
    items = list(read_items([str(path)]))
    assert [(i.line, i.error) for i in items] == [
        (1, None),
        (2, "not UTF-8 text (invalid start byte at byte 0)"),
        (3, "not UTF-8 text (invalid start byte at byte 2)"),
        (4, "not UTF-8 text (invalid continuation byte at byte 13)"),
        (5, None),
    ]
    assert count_items([str(path)]) == 5
    stdin_items = list(read_items(["-"], stdin=io.BytesIO(path.read_bytes())))
    assert [i.error for i in stdin_items] == [i.error for i in items]


def test_issue_16_corrupt_gz_and_zst_inputs(tmp_path):
    lines = b"".join(b'{"text": "line %d"}\n' % i for i in range(2000))
    gz = bytearray(gzip.compress(lines))
    gz[len(gz) // 2] ^= 0xFF
    zst = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(lines))
    zst[len(zst) // 2] ^= 0xFF
    cases = {
        "corrupt.jsonl.gz": bytes(gz),
        "cut.jsonl.gz": gzip.compress(lines)[:-20],
        "garbage.jsonl.gz": b"not gzip at all",
        "corrupt.jsonl.zst": bytes(zst),
        "cut.jsonl.zst": zstandard.ZstdCompressor().compress(lines)[:-20],
        "garbage.jsonl.zst": b"not zstd at all",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SpecError, match=rf"{name}: cannot read \(corrupt or truncated compressed data: "):
            list(read_items([str(tmp_path / name)]))
        with pytest.raises(SpecError, match=rf"{name}: cannot read"):
            count_items([str(tmp_path / name)])


def test_zst_inputs_of_several_frames_are_read_whole(tmp_path):
    # `zstd -T`, pzstd and `cat a.zst b.zst` write several frames; only the first used to be read.
    frames = b"".join(zstandard.ZstdCompressor().compress(b'{"text": "%d"}\n' % i) for i in range(3))
    (tmp_path / "in.jsonl.zst").write_bytes(frames)
    assert [normalise(i).text for i in read_items([str(tmp_path / "in.jsonl.zst")])] == ["0", "1", "2"]


def test_issue_16_a_binary_prompts_file_is_a_one_line_error(tmp_path):
    (tmp_path / "prompts.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(SpecError, match=r"prompts.jsonl: not a JSONL prompt file: not UTF-8 text"):
        load_prompt_set(tmp_path / "prompts.jsonl")
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(SpecError, match=r"deep.jsonl:1: not valid JSON: nested too deeply"):
        load_prompt_set(tmp_path / "deep.jsonl")


# ---- item 8: what SPEC.md says, the readers enforce ---------------------------------------------


def test_issue_16_loss_mask_of_msgpack_booleans_is_refused(dataset_dir):
    record = {"id": "a", "input_ids": [1, 2], "loss_mask": [True, False]}
    assert record_problems(record) == ["field loss_mask: expected a list of integers 0/1"]
    assert schema_problems("record", record), "the schema refuses them too"
    assert record_problems({**record, "loss_mask": [1.0, 0.0]}) == ["field loss_mask: expected a list of integers 0/1"]
    path = dataset_dir / "records-00000.msgpack.zst"
    records = read_record_shard(path)
    records[0]["loss_mask"] = [bool(v) for v in records[0]["loss_mask"]]
    path.write_bytes(encode_records(records))
    with pytest.raises(SpecError, match=r"records-00000.msgpack.zst: record 0: field loss_mask: expected a list of integers 0/1"):
        Dataset(dataset_dir, verify_checksums=False).shard_records(0)


def test_issue_16_overlapping_tensors_in_a_tensor_shard_are_refused(tmp_path):
    # hidden_states [2, 3, 8] float32 whose last 24 bytes double as offsets [0, 1, 2]: every check of
    # shapes and offsets passes, only the overlap is wrong.
    offsets = torch.tensor([0, 1, 2], dtype=torch.int64).numpy().tobytes()
    hidden = bytearray(torch.randn(2, 3, 8).numpy().tobytes())
    hidden[-len(offsets) :] = offsets
    header = {
        "__metadata__": {"format": "spec-tools/hidden-states", "format_version": "1", "layer_ids": "[2, 3, 4]", "num_records": "2"},
        "hidden_states": {"dtype": "F32", "shape": [2, 3, 8], "data_offsets": [0, len(hidden)]},
        "offsets": {"dtype": "I64", "shape": [3], "data_offsets": [len(hidden) - len(offsets), len(hidden)]},
    }
    path = safetensors_file(tmp_path / "hidden-00000.safetensors", header, bytes(hidden))
    with pytest.raises(SpecError, match=r"hidden-00000.safetensors: tensor 'offsets' overlaps the tensor before it \(data_offsets begin at 168, expected 192\)"):
        TensorShard(path)
    header["offsets"]["data_offsets"] = [len(hidden) + 8, len(hidden) + 32]
    with pytest.raises(SpecError, match=r"tensor 'offsets' leaves a gap after the tensor before it"):
        TensorShard(safetensors_file(path, header, bytes(hidden) + bytes(8) + offsets))
    header["offsets"]["data_offsets"] = [len(hidden), len(hidden) + 24]
    with pytest.raises(SpecError, match=r"8 bytes after the last tensor"):
        TensorShard(safetensors_file(path, header, bytes(hidden) + offsets + bytes(8)))
    assert TensorShard(safetensors_file(path, header, bytes(hidden) + offsets)).num_records == 2


# ---- found on the way ------------------------------------------------------------------------------


def test_record_shard_with_a_cut_last_record_or_bytes_after_its_frame_is_refused():
    whole = msgpack.packb(RECORD)
    cut = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(whole + whole[:-1])
    with pytest.raises(SpecError, match=r"x.zst: record 1: msgpack data ends in the middle of a record"):
        decode_records(cut, "x.zst")  # msgpack's tell() counts the cut record: it was returned as 1 record
    with pytest.raises(SpecError, match=r"x.zst: bytes follow the zstd frame"):
        decode_records(encode_records([RECORD]) + b"junk", "x.zst")


def test_record_metadata_must_be_json_data():
    # A stream record with binary metadata used to stop spec-train with a TypeError from json.dumps.
    assert record_problems({**RECORD, "metadata": {"blob": b"\x00"}}) == ["field metadata: holds a bytes, not JSON data"]
    assert record_problems({**RECORD, "metadata": {"a": {"b": msgpack.ExtType(1, b"")}}}) == ["field metadata: holds a ExtType, not JSON data"]
    deep: dict = {}
    for _ in range(70):
        deep = {"d": deep}
    assert record_problems({**RECORD, "metadata": deep}) == ["field metadata: nested more than 64 levels deep"]


def test_writers_never_write_what_the_readers_refuse(tmp_path, fake_verifier, monkeypatch):
    from conftest import random_samples
    from libspec.format import dataset as dataset_module, stream as stream_module
    from libspec.format.dataset import DatasetWriter
    from libspec.format.sample import make_header
    from libspec.format.stream import StreamWriter
    from libspec.verifier import fingerprint_verifier

    header = make_header(fingerprint_verifier(str(fake_verifier)), [1, 2, 4], "bfloat16", tool="test")
    for module in (records_module, dataset_module):
        monkeypatch.setattr(module, "MAX_RECORD_SHARD_BYTES", 400)
    samples = random_samples(12, 64, 3, 16)
    writer = DatasetWriter(tmp_path / "data", header)  # shard_bytes is 256 MiB: only the record limit splits
    for record, hidden in samples:
        writer.add(record, hidden)
    manifest = writer.close()
    assert len(manifest["shards"]) > 2
    assert [s.record for s in Dataset(tmp_path / "data")] == [r for r, _ in samples]
    monkeypatch.setattr(stream_module, "MAX_STREAM_FRAME_BYTES", 1000)
    stream = StreamWriter(io.BytesIO(), header)
    record, hidden = random_samples(1, 64, 3, 16, min_len=20, max_len=20)[0]
    with pytest.raises(SpecError, match=r"stream frame sample takes \d+ bytes, past the 1000 bytes limit \(SPEC.md §10\); write a data set directory instead"):
        stream.add(record, hidden)
