"""The verifier fingerprint's weights digest (SPEC.md §3): a fine-tune with the same config, tokenizer
and chat template is told apart from its base, cheaply, and old data without a digest still trains."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

import libspec.verifier_weights as verifier_weights
from libspec.errors import SpecError
from libspec.format.dataset import MANIFEST, read_manifest
from libspec.verifier import fingerprint_differences, fingerprint_verifier, weights_not_checked
from libspec.verifier_weights import WINDOW_BYTES, digest_weights, sample_windows, sampled_sha256
from verifier_data import make_dataset, make_verifier, pattern_records

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    """A tiny verifier and a small data set captured from it."""
    root = tmp_path_factory.mktemp("weights")
    verifier = make_verifier(root / "verifier")
    return verifier, make_dataset(verifier, root / "data", pattern_records(12, 64))


def perturb_one_value(folder: Path, tensor: str, flat_index: int) -> None:
    """Add 1e-3 to one value of one tensor in folder/model.safetensors, keeping its header as it was."""
    path = folder / "model.safetensors"
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = safetensors.torch.load_file(str(path))
    tensors[tensor].view(-1)[flat_index] += 1e-3
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def spec_train(data: Path, verifier: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    args = ["--data", str(data), "--verifier", str(verifier), "-o", str(out), "--tokens-per-batch", "128", "--epochs", "1", "--json"]
    return subprocess.run([sys.executable, "-m", "tools.spec_train", *args], cwd=REPO, env=env, capture_output=True, text=True)


def test_spec_train_refuses_data_from_a_fine_tune_that_differs_in_one_weight(captured, tmp_path):
    verifier, data = captured
    fine_tune = tmp_path / "fine-tune"
    shutil.copytree(verifier, fine_tune)
    perturb_one_value(fine_tune, "model.layers.1.mlp.up_proj.weight", 100)
    base, tuned = fingerprint_verifier(str(verifier)), fingerprint_verifier(str(fine_tune))
    assert (base.config_sha256, base.tokenizer_sha256, base.chat_template_sha256) == (tuned.config_sha256, tuned.tokenizer_sha256, tuned.chat_template_sha256)

    result = spec_train(data, fine_tune, tmp_path / "run")
    assert result.returncode == 1, result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert f"made with another verifier ({verifier}) than {fine_tune}" in message
    assert "weights differ: model.safetensors sampled_sha256" in message
    assert not (tmp_path / "run").exists()


def test_the_digest_depends_on_the_weights_not_on_the_folders_path_or_mtime(captured, tmp_path):
    verifier = captured[0]
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(verifier, copy)
    os.utime(copy / "model.safetensors", (0, 0))
    first, again, copied = fingerprint_verifier(str(verifier)), fingerprint_verifier(str(verifier)), fingerprint_verifier(str(copy))
    assert first.weights == again.weights == copied.weights
    assert set(first.weights) == {"model.safetensors"} and set(first.weights["model.safetensors"]) == {"bytes", "sampled_sha256"}
    assert fingerprint_differences(first, copied) == [] and weights_not_checked(first, copied) is None


def test_data_recorded_without_a_weights_digest_trains_with_a_one_line_warning(captured, tmp_path):
    verifier, data = captured
    old = tmp_path / "old-data"
    shutil.copytree(data, old)
    manifest = json.loads((old / MANIFEST).read_text())
    del manifest["verifier"]["weights"]  # as spec-gen-hidden wrote it before the digest existed
    (old / MANIFEST).write_text(json.dumps(manifest))

    result = spec_train(old, verifier, tmp_path / "run")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [f"spec-train: warning: {old}: the verifier's weights could not be checked: the data records no weights digest (made before spec-tools recorded one)"]
    recorded = json.loads((tmp_path / "run" / "checkpoint-epoch-0" / "config.json").read_text())["spec_tools"]["verifier"]
    assert "weights" not in recorded  # the checkpoint claims no more than the data knew


@pytest.mark.parametrize("weights", [{"model.safetensors": {"bytes": 1}}, {"model.safetensors": {"bytes": 1, "sha256": "not hex"}}, ["model.safetensors"]])
def test_a_malformed_weights_digest_in_a_manifest_is_a_one_line_error(captured, tmp_path, weights):
    data = tmp_path / "data"
    shutil.copytree(captured[1], data)
    manifest = json.loads((data / MANIFEST).read_text())
    manifest["verifier"]["weights"] = weights
    (data / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SpecError, match=rf"^{data / MANIFEST}.*weights"):
        read_manifest(data)


def fake_hub_snapshot(cache: Path, content: bytes, name: str = "model.safetensors") -> Path:
    """<cache>/models--org--tiny/snapshots/<rev>/<name> -> ../../blobs/<sha256 of content>, as huggingface_hub lays it out."""
    repo = cache / "models--org--tiny"
    sha = hashlib.sha256(content).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / sha).write_bytes(content)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / sha)
    return snapshot


def test_a_hub_cache_snapshot_is_digested_from_its_blob_names_without_reading(captured, tmp_path, monkeypatch):
    content = (captured[0] / "model.safetensors").read_bytes()
    snapshot = fake_hub_snapshot(tmp_path / "hub", content)

    def no_reading(*args, **kwargs):
        raise AssertionError("read a weight file")

    monkeypatch.setattr(verifier_weights, "digest_file", no_reading)
    monkeypatch.setattr(verifier_weights, "open_regular", no_reading)
    assert digest_weights(snapshot) == {"model.safetensors": {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}}


def test_a_link_that_is_not_a_blob_of_its_cache_repository_is_read(captured, tmp_path):
    content = (captured[0] / "model.safetensors").read_bytes()
    snapshot = fake_hub_snapshot(tmp_path / "hub", content)
    blob = Path(os.path.realpath(snapshot / "model.safetensors"))
    renamed = blob.with_name("not-a-sha256")
    blob.rename(renamed)
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to(renamed)
    assert digest_weights(snapshot)["model.safetensors"] == {"bytes": len(content), "sampled_sha256": sampled_sha256(renamed)[0]}


def test_a_hub_snapshot_and_a_local_copy_of_it_compare_by_computing_the_missing_kind(captured, tmp_path):
    verifier = captured[0]
    snapshot = fake_hub_snapshot(tmp_path / "hub", (verifier / "model.safetensors").read_bytes())
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(verifier / name, snapshot / name)
    hub = fingerprint_verifier(str(snapshot))
    local = fingerprint_verifier(str(verifier))
    assert weights_not_checked(hub, local) is not None  # no kind in common ...
    assert fingerprint_differences(hub, fingerprint_verifier(str(verifier), like=hub)) == []  # ... until asked for
    assert fingerprint_differences(local, fingerprint_verifier(str(snapshot), like=local)) == []
    tuned = tmp_path / "tuned"
    shutil.copytree(verifier, tuned)
    perturb_one_value(tuned, "lm_head.weight", 0)
    assert [d for d in fingerprint_differences(hub, fingerprint_verifier(str(tuned), like=hub)) if d.startswith("weights differ: model.safetensors sha256")]


def test_the_sample_reads_the_header_and_three_windows_per_tensor(tmp_path):
    """The cost rule in SPEC.md §3, and its limit: a change outside every window is not seen."""
    path = tmp_path / "model.safetensors"
    big, small = torch.zeros(64 * 1024, dtype=torch.float32), torch.ones(100, dtype=torch.float32)  # 256 KiB, 400 bytes
    safetensors.torch.save_file({"big": big, "small": small}, str(path))
    header_bytes = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    digest, read = sampled_sha256(path)
    assert read == header_bytes + 3 * WINDOW_BYTES + 400
    assert sample_windows(0, 400) == [(0, 400)] and len(sample_windows(0, 3 * WINDOW_BYTES + 1)) == 3

    for index, seen in ((0, True), (big.numel() // 2, True), (big.numel() - 1, True), (big.numel() // 4, False)):
        changed = big.clone()
        changed[index] = 1.0
        safetensors.torch.save_file({"big": changed, "small": small}, str(path))
        assert (sampled_sha256(path)[0] != digest) == seen, index
