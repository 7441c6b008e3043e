"""spec-train end to end on tiny real verifiers: checkpoints, refusals, resume after kill -9, DDP, FSDP, streams."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_LLAMA
from gates import assert_servable
from libspec.format import checkpoint as ckpt
from libspec.format.sample_io import open_data
from libspec.errors import SpecError
from libspec.format.stream import StreamWriter
from libspec.train.config import TrainConfig
from libspec.train.loop import train
from libspec.validate.artifacts import validate
from verifier_data import make_dataset, make_verifier, pattern_records

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny verifier and a 60-record data set captured from it at layers [1, 2, 4]."""
    root = tmp_path_factory.mktemp("train")
    verifier = make_verifier(root / "verifier", head_scale=3.0)
    data = make_dataset(verifier, root / "data", pattern_records(60, 64))
    return verifier, data


def config(setup, out, **changes) -> TrainConfig:
    verifier, data = setup
    values = {"data": str(data), "verifier": str(verifier), "output": str(out), "tokens_per_batch": 128,
              "epochs": 2, "lr": 3e-3, "save_dtype": "float32"}  # fmt: skip
    values.update(changes)
    return TrainConfig.from_dict(values)


def cli(*args, env_extra=None, **kwargs) -> subprocess.CompletedProcess | subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **(env_extra or {})}
    return subprocess.run([*args], cwd=REPO, env=env, capture_output=True, text=True, **kwargs)


def train_args(setup, out, *extra) -> list[str]:
    verifier, data = setup
    return ["--data", str(data), "--verifier", str(verifier), "-o", str(out), "--tokens-per-batch", "128",
            "--lr", "3e-3", "--save-dtype", "float32", *extra]  # fmt: skip


def weights(path) -> dict[str, torch.Tensor]:
    return ckpt.load_tensors(path)


def metric_lines(out: Path, kind: str = "train") -> list[dict]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["kind"] == kind]


def test_training_writes_servable_checkpoints_a_best_pointer_and_metrics(setup, tmp_path):
    out = tmp_path / "run"
    result = train(config(setup, out, save_every=4, keep=0))  # keep every checkpoint: each is checked below
    epochs = [out / "checkpoint-epoch-0", out / "checkpoint-epoch-1"]
    assert_servable(*epochs, out / "checkpoint-step-4", out / "best")  # spec-validate, then vLLM's and upstream's loaders
    assert (out / "best").is_symlink() and os.readlink(out / "best") == json.loads((out / "best.json").read_text())["checkpoint"]
    assert validate(str(out / "best")).ok
    config_json = ckpt.read_config(out / "best")
    recorded = config_json["spec_tools"]
    assert recorded["dataset"]["layer_ids"] == [1, 2, 4] and recorded["dataset"]["fingerprint"] == open_data(setup[1]).fingerprint
    assert recorded["training"]["config"]["ttt_steps"] == 3 and recorded["verifier"]["hidden_size"] == 16
    assert config_json["eagle_aux_hidden_state_layer_ids"] == [1, 2]
    steps = metric_lines(out)
    assert [s["step"] for s in steps] == list(range(1, result.progress.step + 1))
    assert {"loss_0", "acc_2", "cond_acc_1", "tau_sim", "tokens_per_s"} <= set(steps[0])
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert len(metric_lines(out, "val")) == 2
    # frozen: the verifier's embedding and lm_head rows are saved unchanged
    from safetensors.torch import load_file

    verifier_weights = load_file(str(setup[0] / "model.safetensors"))
    assert torch.equal(weights(epochs[1])["lm_head.weight"], verifier_weights["lm_head.weight"])
    assert torch.equal(weights(epochs[1])["embed_tokens.weight"], verifier_weights["model.embed_tokens.weight"])


def test_reduced_draft_vocabulary_writes_valid_maps(setup, tmp_path):
    out = tmp_path / "run"
    train(config(setup, out, draft_vocab_size=24, epochs=1))
    tensors = weights(out / "checkpoint-epoch-0")
    assert tensors["lm_head.weight"].shape == (24, 16) and int(tensors["t2d"].sum()) == 24
    assert_servable(out / "checkpoint-epoch-0")


@pytest.mark.parametrize("changes", [{"num_layers": 2, "layer_style": "qwen3"}, {"norm_before_fc": True, "norm_output": True}, {"fc_norm": True}])
def test_draft_variants_are_servable(setup, tmp_path, changes):
    out = tmp_path / "run"
    train(config(setup, out, epochs=1, **changes))
    assert_servable(out / "checkpoint-epoch-0")


def test_refuses_data_from_another_verifier(setup, tmp_path):
    other = make_verifier(tmp_path / "other", {**TINY_LLAMA, "rms_norm_eps": 1e-5})
    with pytest.raises(SpecError, match="made with another verifier.*config_sha256"):
        train(config(setup, tmp_path / "run", verifier=str(other)))


def test_refuses_aux_layers_the_data_did_not_capture(setup, tmp_path):
    with pytest.raises(SpecError, match=r"captured layers \[1, 2, 4\] lack aux layer\(s\) \[3\]"):
        train(config(setup, tmp_path / "run", aux_layer_ids=(1, 3)))


def test_refuses_data_without_the_teachers_layer(setup, tmp_path):
    verifier = setup[0]
    data = make_dataset(verifier, tmp_path / "data", pattern_records(5, 64), layer_ids=[1, 2, 3])
    with pytest.raises(SpecError, match=r"lack layer 4 \(the last, pre-norm\)"):
        train(config(setup, tmp_path / "run", data=str(data)))


def test_refuses_a_changed_command_and_a_foreign_output(setup, tmp_path):
    out = tmp_path / "run"
    train(config(setup, out, epochs=1))
    with pytest.raises(SpecError, match="different command.*lr: was 0.003, now 0.01"):
        train(config(setup, out, epochs=1, lr=1e-2))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SpecError, match="not a spec-train run"):
        train(config(setup, foreign))
    result = cli(sys.executable, "-m", "tools.spec_train", *train_args(setup, out, "--epochs", "1", "--lr", "1e-2"))
    assert result.returncode == 1 and "different command" in result.stderr and "Traceback" not in result.stderr


def test_a_stream_on_stdin_trains_like_the_data_set(setup, tmp_path):
    buffer = io.BytesIO()
    source = open_data(setup[1])
    writer = StreamWriter(buffer, source.header)
    for sample in source:
        writer.add(sample.record, sample.hidden_states())
    writer.close()
    train(config(setup, tmp_path / "from-dir", epochs=1))
    train(config(setup, tmp_path / "from-stream", data="-", epochs=1), stdin=io.BytesIO(buffer.getvalue()))
    a, b = weights(tmp_path / "from-dir" / "checkpoint-epoch-0"), weights(tmp_path / "from-stream" / "checkpoint-epoch-0")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kill_9_mid_epoch_then_the_same_command_ends_with_identical_weights(setup, tmp_path):
    args = ("--epochs", "2", "--save-every", "5", "--tokens-per-batch", "32")  # ~45 steps per epoch
    train(config(setup, tmp_path / "whole", epochs=2, save_every=5, tokens_per_batch=32))  # uninterrupted, in-process

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, "-m", "tools.spec_train", *train_args(setup, out, *args)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 13:  # past the state saved at step 10, mid-epoch
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = len(metric_lines(out))
    total = len(metric_lines(tmp_path / "whole"))
    assert killed_at < total

    resumed = cli(*command)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step" in resumed.stderr
    final = "checkpoint-epoch-1"
    a, b = weights(tmp_path / "whole" / final), weights(out / final)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"
    assert ckpt.read_config(out / final)["spec_tools"]["training"]["command"].startswith("spec-train --data ")
    assert [s["loss"] for s in metric_lines(out)] == [s["loss"] for s in metric_lines(tmp_path / "whole")]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_process_with_the_same_global_batch(setup, tmp_path, mode):
    single = tmp_path / "single"
    train(config(setup, single, grad_accum=2))
    extra = ["--fsdp"] if mode == "fsdp" else []
    torchrun = str(Path(sys.executable).parent / "torchrun")
    # --standalone: a free port of its own, so two suites running at once cannot meet on torchrun's default 29500.
    # A bounded wait: a rank stuck in a collective fails the test instead of stalling the suite for gloo's 30 minutes.
    result = cli(torchrun, "--standalone", "--nproc-per-node", "2", "-m", "tools.spec_train", *train_args(setup, tmp_path / mode, "--epochs", "2", *extra), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ours, theirs = metric_lines(tmp_path / mode), metric_lines(single)
    assert len(ours) == len(theirs) > 5
    for a, b in zip(ours, theirs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
        assert a["queries"] == b["queries"]
    final = "checkpoint-epoch-1"
    assert_servable(tmp_path / mode / final)
    a, b = weights(tmp_path / mode / final), weights(single / final)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_validate_checks_aux_layers_against_what_training_recorded(setup, tmp_path):
    out = tmp_path / "run"
    train(config(setup, out, epochs=1))
    folder = out / "checkpoint-epoch-0"
    config_json = ckpt.read_config(folder)
    config_json["eagle_aux_hidden_state_layer_ids"] = [1, 3]
    (folder / "config.json").write_text(json.dumps(config_json))
    report = validate(str(folder))
    assert any("[3] not among the layers the training data captured [1, 2, 4]" in p for p in report.problems), report.problems
    config_json["eagle_aux_hidden_state_layer_ids"] = [1, 9]
    (folder / "config.json").write_text(json.dumps(config_json))
    assert any("must lie in [0, 4]" in p for p in validate(str(folder)).problems)
