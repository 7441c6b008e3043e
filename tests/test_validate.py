"""spec-validate on data sets, shards and streams: 0 when valid, 1 with a clear message for each kind of damage."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import random_samples
from libspec.format.dataset import MANIFEST, DatasetWriter
from libspec.verifier import fingerprint_verifier
from libspec.format.records import encode_records, decode_records
from libspec.format.digest import digest_bytes
from libspec.format.sample import make_header
from libspec.format.stream import StreamWriter
from tools.spec_validate import main


@pytest.fixture
def dataset(tmp_path, fake_verifier):
    header = make_header(fingerprint_verifier(str(fake_verifier)), [1, 2, 4], "bfloat16", tool="test")
    writer = DatasetWriter(tmp_path / "data", header, shard_bytes=4000)
    for record, hidden in random_samples(12, 64, 3, 16):
        writer.add(record, hidden)
    manifest = writer.close()
    assert len(manifest["shards"]) >= 3
    return tmp_path / "data"


def validate_json(path, capsys) -> tuple[int, dict]:
    status = main(["--json", str(path)])
    return status, json.loads(capsys.readouterr().out)[0]


def test_valid_data_set_passes_with_facts(dataset, capsys):
    status, report = validate_json(dataset, capsys)
    assert status == 0 and report["ok"] and report["kind"] == "dataset"
    assert report["facts"]["num_records"] == 12 and report["facts"]["layer_ids"] == [1, 2, 4]


def test_each_shard_and_a_stream_validate_alone(dataset, tmp_path, capsys):
    assert main([str(dataset / "records-00000.msgpack.zst"), str(dataset / "hidden-00001.safetensors")]) == 0
    header = json.loads((dataset / MANIFEST).read_text())
    header = {k: header[k] for k in ("format", "format_version", "created_by", "created_at", "verifier", "hidden_states", "metadata")}
    with open(tmp_path / "s.spst", "wb") as out:
        writer = StreamWriter(out, header)
        for record, hidden in random_samples(3, 64, 3, 16):
            writer.add(record, hidden)
        writer.close()
    capsys.readouterr()
    status, report = validate_json(tmp_path / "s.spst", capsys)
    assert status == 0 and report["kind"] == "stream" and report["facts"]["num_records"] == 3


def set_manifest(dataset, change) -> None:
    manifest = json.loads((dataset / MANIFEST).read_text())
    change(manifest)
    (dataset / MANIFEST).write_text(json.dumps(manifest))


def replace_records(dataset, index: int, change) -> None:
    """Rewrite a record shard with consistent checksums, so that only the content is wrong."""
    manifest = json.loads((dataset / MANIFEST).read_text())
    shard = manifest["shards"][index]
    records = decode_records((dataset / shard["records"]).read_bytes())
    change(records)
    data = encode_records(records)
    (dataset / shard["records"]).write_bytes(data)
    digest = digest_bytes(data)
    shard["records_bytes"], shard["records_sha256"] = digest.num_bytes, digest.sha256
    (dataset / MANIFEST).write_text(json.dumps(manifest))


def truncate(path, cut=7):
    path.write_bytes(path.read_bytes()[:-cut])


def flip_byte(path, position=-3):
    data = bytearray(path.read_bytes())
    data[position] ^= 0x55
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated record shard": (lambda d: truncate(d / "records-00001.msgpack.zst"), r"records-00001.msgpack.zst: size is \d+ bytes, the manifest says"),
    "truncated tensor shard": (lambda d: truncate(d / "hidden-00000.safetensors"), r"hidden-00000.safetensors: size is"),
    "flipped byte": (lambda d: flip_byte(d / "hidden-00002.safetensors"), r"hidden-00002.safetensors: sha256 .* does not match"),
    "wrong checksum": (
        lambda d: set_manifest(d, lambda m: m["shards"][0].update(records_sha256="0" * 64)),
        r"records-00000.msgpack.zst: sha256 .* does not match",
    ),
    "missing shard": (lambda d: (d / "records-00002.msgpack.zst").unlink(), r"records-00002.msgpack.zst: record shard is missing"),
    "schema violation": (
        lambda d: set_manifest(d, lambda m: m["shards"][1].update(num_tokens="many")),
        r"manifest.json: does not match the dataset-manifest schema at shards/1/num_tokens",
    ),
    "token id >= vocab": (
        lambda d: replace_records(d, 1, lambda rs: rs[0]["input_ids"].__setitem__(0, 64)),
        r"records-00001.msgpack.zst: record 0: field input_ids: token id 64 >= vocab size 64",
    ),
    "count mismatch": (
        lambda d: replace_records(d, 0, lambda rs: rs.pop()),
        r"records-00000.msgpack.zst: holds \d+ records, the manifest says",
    ),
    "incomplete": (lambda d: set_manifest(d, lambda m: m.update(complete=False)), r"data set is incomplete"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damage_is_found_and_named(dataset, capsys, kind):
    damage, message = DAMAGE[kind]
    damage(dataset)
    status, report = validate_json(dataset, capsys)
    assert status == 1 and not report["ok"]
    assert any(__import__("re").search(message, p) for p in report["problems"]), report["problems"]


def test_nan_in_hidden_states_is_found(tmp_path, fake_verifier, capsys):
    header = make_header(fingerprint_verifier(str(fake_verifier)), [1, 2, 4], "bfloat16", tool="test")
    writer = DatasetWriter(tmp_path / "data", header)
    samples = random_samples(3, 64, 3, 16)
    samples[1][1][2, 0, 5] = float("nan")
    for record, hidden in samples:
        writer.add(record, hidden)
    writer.close()
    status, report = validate_json(tmp_path / "data", capsys)
    assert status == 1
    assert report["problems"] == [f"{tmp_path / 'data' / 'hidden-00000.safetensors'}: 1 NaN/inf values in the hidden states"]


def test_every_problem_is_listed_not_just_the_first(dataset, capsys):
    truncate(dataset / "records-00000.msgpack.zst")
    flip_byte(dataset / "hidden-00002.safetensors")
    status, report = validate_json(dataset, capsys)
    assert status == 1 and len(report["problems"]) == 2


def test_human_output_and_exit_codes_from_the_command_line(dataset, tmp_path):
    command = [sys.executable, "-m", "tools.spec_validate"]
    ok = subprocess.run([*command, str(dataset)], capture_output=True, text=True)
    assert ok.returncode == 0 and "✓ valid" in ok.stdout
    (dataset / "hidden-00001.safetensors").unlink()
    bad = subprocess.run([*command, str(dataset)], capture_output=True, text=True)
    assert bad.returncode == 1 and "tensor shard is missing" in bad.stdout
    usage = subprocess.run([*command, "--jsn", str(dataset)], capture_output=True, text=True)
    assert usage.returncode == 2 and "did you mean --json?" in usage.stderr
    nothing = subprocess.run([*command, str(tmp_path / "nope")], capture_output=True, text=True)
    assert nothing.returncode == 1 and "no such file or directory" in nothing.stdout
    version = subprocess.run([*command, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("spec-validate ")


def test_stream_on_stdin(dataset, tmp_path):
    header = json.loads((dataset / MANIFEST).read_text())
    header = {k: header[k] for k in ("format", "format_version", "created_by", "created_at", "verifier", "hidden_states", "metadata")}
    import io

    buffer = io.BytesIO()
    writer = StreamWriter(buffer, header)
    for record, hidden in random_samples(2, 64, 3, 16):
        writer.add(record, hidden)
    writer.close()
    command = [sys.executable, "-m", "tools.spec_validate", "-"]
    ok = subprocess.run(command, input=buffer.getvalue(), capture_output=True)
    assert ok.returncode == 0, ok.stdout
    cut = subprocess.run(command, input=buffer.getvalue()[:-10], capture_output=True)
    assert cut.returncode == 1 and b"truncated" in cut.stdout
