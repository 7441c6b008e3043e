"""Merging data sets: shards renumbered, checksums kept, incompatible or overlapping parts refused."""

from __future__ import annotations

import pytest
import torch
from conftest import random_samples

from libspec.format.dataset import Dataset, DatasetWriter
from libspec.errors import SpecError
from libspec.verifier import fingerprint_verifier
from libspec.capture.merge import merge_datasets
from libspec.format.sample import make_header
from libspec.validate.artifacts import validate


def write_part(directory, verifier, samples, layer_ids=(1, 4), shard_index=None, num_shards=None):
    metadata = {}
    if shard_index is not None:
        metadata = {"gen_hidden": {"options": {"window": 8, "shard_index": shard_index, "num_shards": num_shards}}, "progress": {"counts": {"records_written": len(samples), "dropped": {"x": 1}}}}
    header = make_header(fingerprint_verifier(str(verifier)), list(layer_ids), "bfloat16", "test", metadata)
    writer = DatasetWriter(directory, header, shard_bytes=2000)
    for record, hidden in samples:
        writer.add(record, hidden)
    writer.close()
    return directory


def renamed(samples, prefix):
    return [({**record, "id": f"{prefix}{record['id']}"}, hidden) for record, hidden in samples]


def test_merge_keeps_every_sample_and_checksum(tmp_path, fake_verifier):
    a = write_part(tmp_path / "a", fake_verifier, renamed(random_samples(7, 64, 2, 16, seed=1), "a"), shard_index=1, num_shards=2)
    b = write_part(tmp_path / "b", fake_verifier, renamed(random_samples(5, 64, 2, 16, seed=2), "b"), shard_index=0, num_shards=2)
    manifest = merge_datasets([a, b], tmp_path / "merged")
    assert validate(str(tmp_path / "merged")).ok
    parts = [Dataset(b), Dataset(a)]  # shard index order
    assert [(s["records_sha256"], s["tensors_sha256"]) for s in manifest["shards"]] == [
        (s["records_sha256"], s["tensors_sha256"]) for d in parts for s in d.manifest["shards"]
    ]
    merged = list(Dataset(tmp_path / "merged"))
    expected = [s for d in parts for s in d]
    assert [s.record for s in merged] == [s.record for s in expected]
    assert all(torch.equal(m.hidden, e.hidden) for m, e in zip(merged, expected))
    assert manifest["metadata"]["counts"]["records_written"] == 12 and manifest["metadata"]["counts"]["dropped"] == {"x": 2}
    assert not list(tmp_path.glob(".merged.merge-tmp"))


def test_merge_refuses_mismatches(tmp_path, fake_verifier):
    a = write_part(tmp_path / "a", fake_verifier, random_samples(3, 64, 2, 16, seed=1))
    same_ids = write_part(tmp_path / "same", fake_verifier, random_samples(2, 64, 2, 16, seed=2))
    other_layers = write_part(tmp_path / "layers", fake_verifier, renamed(random_samples(2, 64, 3, 16), "x"), layer_ids=(0, 1, 4))
    with pytest.raises(SpecError, match="record id 'sample-0' also appears"):
        merge_datasets([a, same_ids], tmp_path / "out1")
    with pytest.raises(SpecError, match="captured other layers, dtype or tensor encoding"):
        merge_datasets([a, other_layers], tmp_path / "out2")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(SpecError, match="exists and is not empty"):
        merge_datasets([a], tmp_path / "full")
    incomplete = tmp_path / "incomplete"
    DatasetWriter(incomplete, make_header(fingerprint_verifier(str(fake_verifier)), [1, 4], "bfloat16", "test"))
    with pytest.raises(SpecError, match="incomplete"):
        merge_datasets([a, incomplete], tmp_path / "out3")
    s0 = write_part(tmp_path / "s0", fake_verifier, renamed(random_samples(2, 64, 2, 16), "s0"), shard_index=0, num_shards=3)
    s0b = write_part(tmp_path / "s0b", fake_verifier, renamed(random_samples(2, 64, 2, 16), "s0b"), shard_index=0, num_shards=3)
    with pytest.raises(SpecError, match="shard index given twice"):
        merge_datasets([s0, s0b], tmp_path / "out4")
    assert merge_datasets([s0], tmp_path / "out5", allow_partial=True)["num_records"] == 2


@pytest.mark.parametrize("kind", ["tensors", "records"])
def test_merge_refuses_a_corrupted_shard_naming_it(tmp_path, fake_verifier, capsys, kind):
    """Issue 16 item 8: --merge hard-linked a corrupted shard and printed "✓ merged"."""
    from tools import spec_gen_hidden

    a = write_part(tmp_path / "a", fake_verifier, renamed(random_samples(7, 64, 2, 16, seed=1), "a"), shard_index=1, num_shards=2)
    b = write_part(tmp_path / "b", fake_verifier, renamed(random_samples(5, 64, 2, 16, seed=2), "b"), shard_index=0, num_shards=2)
    shard = Dataset(a).manifest["shards"][1]
    path = a / shard[kind]
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte in the payload: same size, readable header
    path.write_bytes(bytes(data))
    with pytest.raises(SpecError, match=rf"^{path}: .*(sha256|checksum|corrupt)"):
        spec_gen_hidden.main(["--merge", str(a), str(b), "-o", str(tmp_path / "merged")])
    assert "merged" not in capsys.readouterr().err
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged*"))
