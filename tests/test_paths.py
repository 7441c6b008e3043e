"""Files a folder names for itself (issue 16 item 2): a shard index naming an absolute path, a `..`
path or a link out of the folder is refused by every tool, never read, copied or published."""

from __future__ import annotations

import json
import os

import pytest
import safetensors.torch

from conftest import TINY_LLAMA, random_checkpoint_tensors, write_fake_verifier
from libspec.algorithms.eagle3 import config as eagle3
from libspec.convert.pipeline import ConvertRequest, convert
from libspec.errors import SpecError
from libspec.format import checkpoint as ckpt
from libspec.format.paths import inside, read_weight_map
from libspec.train.teacher import _read_tensors
from libspec.validate.artifacts import validate
from libspec.verifier import VerifierConfig, check_weight_files
from tools import spec_push

INDEX = "model.safetensors.index.json"


@pytest.fixture(autouse=True)
def no_interop_gates(monkeypatch):
    monkeypatch.setattr("libspec.validate.gates.where_gate_runs", lambda gate: None)


def sharded_checkpoint(root, outside_name: str):
    """A valid EAGLE-3 checkpoint whose index puts half the tensors in root/elsewhere/outside.safetensors,
    named by `outside_name` (or by a link of that name, when it is a plain name)."""
    config = eagle3.make_config(TINY_LLAMA, "org/verifier", eagle3.Eagle3Options(aux_layer_ids=(1, 2, 3)))
    tensors = random_checkpoint_tensors(config)
    folder, elsewhere = root / "ckpt", root / "elsewhere"
    ckpt.write_checkpoint(folder, config, {})
    (folder / ckpt.WEIGHTS).unlink()
    elsewhere.mkdir()
    names = sorted(tensors)
    safetensors.torch.save_file({n: tensors[n] for n in names[::2]}, str(folder / "model-00001-of-00002.safetensors"))
    safetensors.torch.save_file({n: tensors[n] for n in names[1::2]}, str(elsewhere / "outside.safetensors"))
    if "/" not in outside_name:
        os.symlink(elsewhere / "outside.safetensors", folder / outside_name)
    weight_map = {n: "model-00001-of-00002.safetensors" for n in names[::2]} | {n: outside_name for n in names[1::2]}
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def outside_names(root):
    return {
        "absolute": str(root / "elsewhere" / "outside.safetensors"),
        "dot-dot": "../elsewhere/outside.safetensors",
        "link out": "model-00002-of-00002.safetensors",
    }


ESCAPES = {"absolute": "is an absolute path", "dot-dot": "leads out of the folder with '..'", "link out": "outside"}


def test_inside_refuses_every_way_out(tmp_path):
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "ok.bin").write_bytes(b"x")
    (tmp_path / "secret").write_text("s")
    os.symlink(tmp_path / "secret", folder / "link")
    os.symlink("sub/ok.bin", folder / "inner-link")
    assert inside(folder, "sub/ok.bin", "idx") == folder / "sub" / "ok.bin"
    assert inside(folder, "inner-link", "idx") == folder / "inner-link"  # a link that stays inside is fine
    cases = {
        str(tmp_path / "secret"): "is an absolute path",
        "../secret": "leads out of the folder",
        "sub/../../secret": "leads out of the folder",
        "link": f"is a link to {tmp_path / 'secret'}, outside",
        "sub": "is not a regular file",
        "missing.bin": "does not exist",
        "": "is not a file name",
        7: "is not a file name",
    }
    for name, message in cases.items():
        with pytest.raises(SpecError, match=f"^idx: .*{message}") as error:
            inside(folder, name, "idx")
        assert "\n" not in str(error.value)


def test_hub_cache_snapshot_links_into_blobs_count_as_inside(tmp_path):
    repo = tmp_path / "hub" / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc123").write_bytes(b"weights")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    os.symlink("../../blobs/abc123", snapshot / "model.safetensors")
    assert inside(snapshot, "model.safetensors", "x") == snapshot / "model.safetensors"
    (tmp_path / "token").write_text("hf_secret")
    os.symlink(tmp_path / "token", snapshot / "evil")
    with pytest.raises(SpecError, match="outside"):
        inside(snapshot, "evil", "x")


def test_index_entry_error_names_the_index_file_and_the_entry(tmp_path):
    folder = sharded_checkpoint(tmp_path, "../elsewhere/outside.safetensors")
    with pytest.raises(SpecError) as error:
        read_weight_map(folder, INDEX)
    message = str(error.value)
    assert message.startswith(f"{folder / INDEX}: weight_map[") and "'../elsewhere/outside.safetensors'" in message


@pytest.mark.parametrize("case", ESCAPES)
def test_spec_validate_never_follows_an_index_out_of_the_folder(tmp_path, case):
    folder = sharded_checkpoint(tmp_path, outside_names(tmp_path)[case])
    report = validate(str(folder))
    assert not report.ok and any(p.startswith(f"{folder / INDEX}: weight_map[") and ESCAPES[case] in p for p in report.problems), report.problems
    with pytest.raises(SpecError, match=ESCAPES[case]):
        ckpt.load_tensors(folder)


@pytest.mark.parametrize("case", ESCAPES)
def test_spec_convert_never_reads_weights_out_of_the_source(tmp_path, case):
    folder = sharded_checkpoint(tmp_path, outside_names(tmp_path)[case])
    verifier = write_fake_verifier(tmp_path / "verifier")
    with pytest.raises(SpecError, match=f"{INDEX}: weight_map.*{ESCAPES[case]}"):
        convert(ConvertRequest(str(folder), str(verifier), str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def secret_checkpoint(tmp_path, how: str):
    """A valid checkpoint plus an index entry naming $HF_HOME/token (an absolute path), ../elsewhere/.env, or a link to the token."""
    hf_home = tmp_path / "hf-home"  # stands for $HF_HOME; the variable itself is left alone (huggingface_hub reads it once)
    hf_home.mkdir()
    (hf_home / "token").write_text("hf_TheSecretToken")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / ".env").write_text("AWS_SECRET=1")
    config = eagle3.make_config(TINY_LLAMA, "org/verifier", eagle3.Eagle3Options(aux_layer_ids=(1, 2, 3)))
    tensors = random_checkpoint_tensors(config)
    folder = ckpt.write_checkpoint(tmp_path / "ckpt", config, tensors)
    name = {"hf token": f"{hf_home}/token", "dot-dot": "../elsewhere/.env", "link": "notes.safetensors"}[how]
    if how == "link":
        os.symlink(hf_home / "token", folder / name)
    weight_map = {n: ckpt.WEIGHTS for n in tensors} | {"secret": name}
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("how", ["hf token", "dot-dot", "link"])
def test_spec_push_never_publishes_a_file_from_outside_the_folder(tmp_path, capsys, how):
    folder = secret_checkpoint(tmp_path, how)
    out = tmp_path / "hub-ready"
    for action in (["--dry-run"], ["--to-dir", str(out)]):
        with pytest.raises(SpecError, match=rf"^{folder / INDEX}: weight_map\['secret'\]: "):
            spec_push.main([str(folder), "org/spec", "--force", *action])
        captured = capsys.readouterr()
        assert "token" not in captured.out and ".env" not in captured.out
    assert not out.exists()


def test_verifier_weights_named_outside_its_folder_are_refused(tmp_path):
    verifier = sharded_checkpoint(tmp_path, "../elsewhere/outside.safetensors")  # a folder with an index is all it takes
    with pytest.raises(SpecError, match="leads out of the folder"):
        check_weight_files(verifier)
    with pytest.raises(SpecError, match="leads out of the folder"):
        _read_tensors(verifier, ["fc.weight"], {})
    os.symlink(tmp_path / "elsewhere" / "outside.safetensors", verifier / "z.safetensors")
    with pytest.raises(SpecError, match="outside"):
        VerifierConfig("v", TINY_LLAMA, verifier).weight_files
