"""Issue 16 item 1: inf or NaN never becomes a draft, let alone the best one. spec-gen-hidden refuses
to store non-finite hidden states, spec-train refuses non-finite data and stops on a non-finite loss
without writing a checkpoint from it. Also: a torn metrics line does not block a resume, and
--keep bounds the checkpoints a long run leaves."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_chat import conversations, write_chat_verifier, write_jsonl

import verifier_data
from conftest import TINY_LLAMA
from libspec.errors import SpecError
from libspec.train.config import TrainConfig
from libspec.train.loop import train
from tools.spec_gen_hidden import main as gen_hidden
from verifier_data import make_dataset, make_verifier, pattern_records


@pytest.fixture(scope="module")
def verifier(tmp_path_factory):
    return make_verifier(tmp_path_factory.mktemp("verifier") / "v", head_scale=3.0)


def run_config(verifier, data, out, **changes) -> TrainConfig:
    values = {"data": str(data), "verifier": str(verifier), "output": str(out), "tokens_per_batch": 128, "lr": 3e-3, "save_dtype": "float32"}
    return TrainConfig.from_dict({**values, **changes})


def test_issue_16_gen_hidden_refuses_hidden_states_that_overflow_float16(tmp_path):
    directory = write_chat_verifier(tmp_path / "v", "chatml")
    weights = load_file(str(directory / "model.safetensors"))
    weights["model.embed_tokens.weight"] *= 1e6  # activations far past float16's 65504
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    inputs = write_jsonl(tmp_path / "in.jsonl", conversations(4))
    with pytest.raises(SpecError, match=r"not finite \(inf or NaN\) in float16; float16 overflows .* use --storage-dtype bfloat16"):
        gen_hidden(["--quiet", "--verifier", str(directory), "--data", str(inputs), "-o", str(tmp_path / "data"), "--storage-dtype", "float16"])
    assert gen_hidden(["--quiet", "--verifier", str(directory), "--data", str(inputs), "-o", str(tmp_path / "ok"), "--storage-dtype", "bfloat16"]) == 0


def test_issue_16_train_refuses_data_with_nan_naming_the_record(verifier, tmp_path, monkeypatch):
    records = pattern_records(30, 64)
    poisoned = records[7]["id"]
    real_capture = verifier_data.capture

    def capture(model, input_ids, layer_ids):
        hidden = real_capture(model, input_ids, layer_ids)
        if input_ids == records[7]["input_ids"]:
            hidden[3, 0, 5] = float("nan")
        return hidden

    monkeypatch.setattr(verifier_data, "capture", capture)
    data = make_dataset(verifier, tmp_path / "data", records)
    out = tmp_path / "run"
    with pytest.raises(SpecError, match=f"record {poisoned}: 1 hidden-state values are inf or NaN"):
        train(run_config(verifier, data, out, epochs=1, val_fraction=0.0))
    assert not list(out.glob("checkpoint-*")) and not (out / "best").exists()


def test_issue_16_a_nonfinite_loss_stops_the_run_before_any_checkpoint(verifier, tmp_path, monkeypatch):
    from libspec.algorithms.eagle3 import train as eagle3_train

    data = make_dataset(verifier, tmp_path / "data", pattern_records(30, 64))
    real_loss = eagle3_train.token_loss
    monkeypatch.setattr(eagle3_train, "token_loss", lambda *args: real_loss(*args) * float("nan"))
    out = tmp_path / "run"
    with pytest.raises(SpecError, match="the loss became nan at optimizer step 1 .*no checkpoint was written"):
        train(run_config(verifier, data, out, epochs=1))
    assert not list(out.glob("checkpoint-*")) and not (out / "best").exists()


def test_issue_16_a_torn_metrics_line_does_not_block_resume(verifier, tmp_path):
    data = make_dataset(verifier, tmp_path / "data", pattern_records(30, 64))
    out = tmp_path / "run"
    train(run_config(verifier, data, out, epochs=1))
    before = (out / "metrics.jsonl").read_text()
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "step": 9')  # a crash in the middle of a write
    train(run_config(verifier, data, out, epochs=1))  # the same command again: resumes from the state (nothing left to do)
    assert (out / "metrics.jsonl").read_text() == before


def test_issue_12_keep_leaves_the_newest_checkpoints_and_the_best(verifier, tmp_path):
    data = make_dataset(verifier, tmp_path / "data", pattern_records(30, 64))
    out = tmp_path / "run"
    result = train(run_config(verifier, data, out, epochs=4, keep=1))
    kept = sorted(p.name for p in out.glob("checkpoint-*"))
    best = json.loads((out / "best.json").read_text())["checkpoint"]
    assert kept == sorted({"checkpoint-epoch-3", best})
    assert result.checkpoints[-1].endswith("checkpoint-epoch-3") and all((out / p.split("/")[-1]).is_dir() for p in result.checkpoints)
    every = tmp_path / "every"
    train(run_config(verifier, data, every, epochs=4, keep=0))
    assert len(list(every.glob("checkpoint-*"))) == 4
