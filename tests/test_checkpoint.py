"""Speculator checkpoints (EAGLE-3): config as vLLM/upstream read it, weights consistent with it, broken variants caught."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_LLAMA, random_checkpoint_tensors
from libspec.format import checkpoint as ckpt
from libspec.algorithms.eagle3 import config as eagle3
from libspec.validate.artifacts import validate


def make_config(**changes) -> dict:
    options = eagle3.Eagle3Options(aux_layer_ids=(1, 2, 3), **changes)
    return eagle3.make_config(TINY_LLAMA, "meta-llama/Llama-3.1-8B-Instruct", options)


def write(tmp_path, config, tensors=None, name="ckpt"):
    tensors = random_checkpoint_tensors(config) if tensors is None else tensors
    return ckpt.write_checkpoint(tmp_path / name, config, tensors)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"draft_vocab_size": 32},
        {"num_layers": 2},
        {"layer_style": "qwen3", "draft_vocab_size": 48},
        {"norm_before_fc": True},
        {"fc_norm": True, "norm_before_residual": False},
    ],
)
def test_valid_checkpoints_pass(tmp_path, changes):
    report = validate(str(write(tmp_path, make_config(**changes))))
    assert report.ok, report.problems
    assert report.kind == "checkpoint" and report.facts["aux_layer_ids"] == [1, 2, 3]


def test_config_has_what_vllm_needs_explicitly():
    config = make_config(draft_vocab_size=32)
    tl = config["transformer_layer_config"]
    assert config["norm_before_residual"] is True and "eagle_aux_hidden_state_layer_ids" in config
    assert tl["num_aux_hidden_states"] == 3 and tl["model_type"] == "llama"
    assert tl["rope_parameters"]["rope_theta"] == 10000.0 and tl["head_dim"] == 8
    assert config["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 3


def test_default_aux_layers_follow_eagle3_and_stay_valid_for_shallow_verifiers():
    assert eagle3.default_aux_layer_ids(32) == [2, 16, 29]
    assert eagle3.default_aux_layer_ids(8) == [2, 4, 5]
    assert eagle3.default_aux_layer_ids(4) == [1, 2]
    assert eagle3.default_aux_layer_ids(1) == [1]


def test_moe_verifier_gets_a_dense_draft_width():
    moe = {**TINY_LLAMA, "model_type": "qwen3_moe", "num_experts": 8, "intermediate_size": 8}
    config = eagle3.make_config(moe, "x/y", eagle3.Eagle3Options(aux_layer_ids=(1, 2, 3)))
    assert config["transformer_layer_config"]["intermediate_size"] == 3 * 16


def broken(tmp_path, mutate_config=None, mutate_tensors=None):
    config = make_config(draft_vocab_size=32)
    tensors = random_checkpoint_tensors(config)
    if mutate_config:
        mutate_config(config)
    if mutate_tensors:
        mutate_tensors(tensors)
    return validate(str(write(tmp_path, config, tensors)))


BROKEN = {
    "missing tensor": ({"mutate_tensors": lambda t: t.pop("layers.0.hidden_norm.weight")}, "tensor layers.0.hidden_norm.weight is missing"),
    "extra tensor": ({"mutate_tensors": lambda t: t.update({"model.norm.weight": torch.ones(16)})}, "unexpected tensor model.norm.weight"),
    "wrong fc width": ({"mutate_tensors": lambda t: t.update({"fc.weight": torch.zeros(16, 32)})}, "tensor fc.weight has shape [16, 32], the config implies [16, 48]"),
    "missing norm flag": ({"mutate_config": lambda c: c.pop("norm_before_residual")}, "norm_before_residual"),
    "wrong model_type": (
        {"mutate_config": lambda c: c["transformer_layer_config"].update(model_type="mistral")},
        "vLLM accepts only llama, qwen3",
    ),
    "d2t out of range": ({"mutate_tensors": lambda t: t["d2t"].__setitem__(-1, 1000)}, "d2t maps 1 draft ids outside the vocabulary"),
    "t2d disagrees": ({"mutate_tensors": lambda t: t.update({"t2d": t["t2d"].roll(1)})}, "t2d and d2t disagree"),
    "unsorted aux ids": ({"mutate_config": lambda c: c.update(eagle_aux_hidden_state_layer_ids=[3, 1, 2])}, "must be ascending"),
    "aux count vs num_aux_hidden_states": (
        {"mutate_config": lambda c: c["transformer_layer_config"].update(num_aux_hidden_states=4)},
        "num_aux_hidden_states is 4 but there are 3",
    ),
    "missing verifier": ({"mutate_config": lambda c: c["speculators_config"].pop("verifier")}, "'verifier' is a required property"),
    "NaN weight": ({"mutate_tensors": lambda t: t["norm.weight"].__setitem__(0, float("nan"))}, "tensor norm.weight has 1 NaN/inf values"),
    "dtype mismatch": ({"mutate_config": lambda c: c.update(dtype="bfloat16")}, "dtype says torch.bfloat16"),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_checkpoints_are_caught_and_named(tmp_path, kind):
    mutation, message = BROKEN[kind]
    report = broken(tmp_path, **mutation)
    assert not report.ok
    assert any(message in p for p in report.problems), report.problems


def test_llama_head_with_four_aux_layers_needs_num_aux_hidden_states(tmp_path):
    options = eagle3.Eagle3Options(aux_layer_ids=(1, 2, 3, 4))
    config = eagle3.make_config(TINY_LLAMA, "x/y", options)
    tensors = random_checkpoint_tensors(config)
    del config["transformer_layer_config"]["num_aux_hidden_states"]
    report = validate(str(write(tmp_path, config, tensors)))
    assert any("vLLM's Llama head would size fc for 3 aux layers, not 4" in p for p in report.problems)


def test_write_checkpoint_replaces_atomically(tmp_path):
    config = make_config()
    path = write(tmp_path, config)
    first = ckpt.load_tensors(path)
    write(tmp_path, config, random_checkpoint_tensors(config, seed=1))
    second = ckpt.load_tensors(path)
    assert not torch.equal(first["fc.weight"], second["fc.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], "no staging or old folders left behind"
    written = json.loads((path / "config.json").read_text())
    assert set(written.pop("spec_tools")["weights"]) == {"model.safetensors"}  # the digests write_checkpoint adds
    assert written == config


def test_failed_write_leaves_the_old_checkpoint(tmp_path):
    config = make_config()
    path = write(tmp_path, config)
    with pytest.raises(Exception):
        ckpt.write_checkpoint(path, config, {"bad": "not a tensor"})
    assert validate(str(path)).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_checkpoint_files_get_the_umasks_permissions(tmp_path):
    """Regression: safetensors writes its file 0600, which hid converted checkpoints from colleagues."""
    from libspec.format.atomic import default_file_mode

    path = write(tmp_path, make_config())
    assert {(p.name, p.stat().st_mode & 0o777) for p in path.iterdir()} == {(n, default_file_mode()) for n in ("config.json", "model.safetensors")}


def flip_byte(path, position=-3):
    data = bytearray(path.read_bytes())
    data[position] ^= 0x55
    path.write_bytes(bytes(data))


def test_flipped_weight_byte_is_caught_by_the_recorded_sha256(tmp_path):
    """Regression (issue 13 item 8): a flipped byte in model.safetensors passed spec-validate."""
    from libspec.format.digest import digest_file

    path = write(tmp_path, make_config())
    recorded = json.loads((path / "config.json").read_text())["spec_tools"]["weights"]["model.safetensors"]
    assert recorded == {"bytes": (path / "model.safetensors").stat().st_size, "sha256": digest_file(path / "model.safetensors").sha256}
    assert validate(str(path)).facts["weight_digests"].startswith("verified: model.safetensors")
    flip_byte(path / "model.safetensors")  # inside the last tensor's data: the file still parses
    report = validate(str(path))
    found = digest_file(path / "model.safetensors").sha256
    assert f"model.safetensors: sha256 {found}, config.json records {recorded['sha256']} (the file changed after it was written)" in report.problems


def test_truncated_weights_are_caught_by_the_recorded_size(tmp_path):
    path = write(tmp_path, make_config())
    (path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:-4])
    assert any(p.startswith("model.safetensors: ") and "bytes, config.json records" in p for p in validate(str(path)).problems)


def test_folder_without_digests_is_valid_and_says_so(tmp_path):
    """Upstream's folders record no digests: a fact, not a problem."""
    path = write(tmp_path, make_config())
    config = json.loads((path / "config.json").read_text())
    del config["spec_tools"]["weights"]
    (path / "config.json").write_text(json.dumps(config))
    report = validate(str(path))
    assert report.ok, report.problems
    assert report.facts["weight_digests"].startswith("no digests recorded")


def test_digests_carried_in_a_config_are_recomputed_when_written(tmp_path):
    """A config copied from another checkpoint (spec-convert of our own folder) must not keep that folder's digests."""
    config = make_config()
    config["spec_tools"] = {"version": "0", "format_version": 1, "weights": {"model.safetensors": {"bytes": 1, "sha256": "0" * 64}}}
    report = validate(str(write(tmp_path, config)))
    assert report.ok, report.problems


def test_a_malformed_digest_record_is_one_line(tmp_path):
    path = write(tmp_path, make_config())
    config = json.loads((path / "config.json").read_text())
    config["spec_tools"]["weights"] = {"model.safetensors": "abc"}
    (path / "config.json").write_text(json.dumps(config))
    assert any("spec_tools.weights['model.safetensors']: expected" in p for p in validate(str(path)).problems)
