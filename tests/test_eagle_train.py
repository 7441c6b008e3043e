"""spec-train --algorithm eagle: EAGLE-1's loss, HASS's options (top-K distillation, context alignment) on
EAGLE-1 and EAGLE-3, and end to end on a tiny verifier (real drafting loop, spec-validate, gates, kill -9)."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import TINY_LLAMA
from gates import assert_servable
from libspec.algorithms.eagle import config as eagle
from libspec.algorithms.eagle.model import EagleDraft, EagleProposer, load_proposer
from libspec.algorithms.eagle.train import EagleObjective, EagleTrainOptions, FeatureTargets, draft_config, row_losses, step_metrics
from libspec.algorithms.eagle3 import config as eagle3
from libspec.algorithms.eagle3.model import Eagle3Draft
from libspec.algorithms.eagle3.train import Eagle3Objective, Eagle3TrainOptions
from libspec.algorithms.eagle3.config import draft_layer_config
from libspec.algorithms.hass import topk_distillation_loss
from libspec.algorithms.layers import DraftCache
from libspec.bench.decoding import DecodingVerifier, autoregressive_generate, speculative_generate
from libspec.errors import SpecError
from libspec.format import checkpoint as ckpt
from libspec.train.config import TrainConfig
from libspec.train.loop import build_draft, prepare, train
from libspec.train.packing import build_batch
from libspec.train.teacher import Teacher
from verifier_data import greedy_records, load_verifier, make_dataset, make_verifier

H, V = 16, 64
WIDER = {**TINY_LLAMA, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}
K = 3  # drafted tokens per step in the end-to-end tests


def random_draft(seed: int = 0, layers: int = 1) -> EagleDraft:
    config = eagle.make_config(TINY_LLAMA, "verifier", draft_layer_config(TINY_LLAMA, layers, "llama", 1), K, "float32")
    draft = EagleDraft(config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.normal_(0, 0.3)
    return draft.eval()


def random_teacher(seed: int = 1) -> Teacher:
    torch.manual_seed(seed)
    norm = nn.RMSNorm(H)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    return Teacher(norm, nn.Linear(H, V, bias=False), None)


def all_supervised(lengths, layers=1, seed=2):
    """(record, hidden [L, layers, H]) documents, every token supervised; one layer: n, the input and the teacher's."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index, length in enumerate(lengths):
        ids = torch.randint(0, V, (length,), generator=generator).tolist()
        samples.append(({"id": f"d{index}", "input_ids": ids, "loss_mask": [1] * length}, torch.randn(length, layers, H, generator=generator)))
    return samples


# ---- the loss, by hand ----


def test_topk_distillation_is_the_cross_entropy_over_the_verifiers_top_k_tokens():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = torch.tensor([[1.0, 0.0, 0.0, -1.0]])
    z = math.exp(1) + 2 + math.exp(-1)
    log_q = [1 - math.log(z), -math.log(z), -math.log(z), -1 - math.log(z)]
    assert float(topk_distillation_loss(logits, probs, 2)[0]) == pytest.approx(-(0.5 * log_q[1] + 0.3 * log_q[3]))
    full = -sum(p * q for p, q in zip(probs[0].tolist(), log_q))
    assert float(topk_distillation_loss(logits, probs, 10)[0]) == pytest.approx(full)  # K past the vocabulary: all of it


def test_eagle1_row_loss_is_smooth_l1_on_features_plus_soft_cross_entropy_plus_hass_topk():
    predicted = torch.tensor([[0.0, 2.0]])
    target = FeatureTargets(torch.tensor([[0.5, 0.0]]), torch.tensor([[0.05, 0.5, 0.15, 0.3]]), torch.tensor([1]))
    logits = torch.tensor([[1.0, 0.0, 0.0, -1.0]])
    z = math.exp(1) + 2 + math.exp(-1)
    log_q = [1 - math.log(z), -math.log(z), -math.log(z), -1 - math.log(z)]
    feature = (0.5 * 0.5**2 + (2.0 - 0.5)) / 2  # smooth L1 (beta 1): 0.5 d^2 below 1, |d| - 0.5 above; mean over H
    token = -(0.05 * log_q[0] + 0.5 * log_q[1] + 0.15 * log_q[2] + 0.3 * log_q[3])
    topk = -(0.5 * log_q[1] + 0.3 * log_q[3])
    plain = row_losses(predicted, logits, target, EagleTrainOptions())
    assert float(plain["feature"][0]) == pytest.approx(feature) and float(plain["token"][0]) == pytest.approx(token)
    assert float(plain["total"][0]) == pytest.approx(1.0 * feature + 0.1 * token)  # EAGLE-1's v_w, p_w
    hass = row_losses(predicted, logits, target, EagleTrainOptions(hass_topk=2, hass_topk_weight=0.5, token_weight=0.2))
    assert float(hass["topk"][0]) == pytest.approx(topk)
    assert float(hass["total"][0]) == pytest.approx(feature + 0.2 * token + 0.5 * topk)


def _hand_topk_means(step_logits, teacher, last_hidden, steps, k):
    """sum over steps of the mean top-k loss, from the draft's recorded logits (one document, all supervised)."""
    total = 0.0
    for step in range(steps):
        logits = step_logits[step]
        probs = torch.softmax(teacher(last_hidden[step : step + len(logits)]), dim=-1)
        rows = [-(sum(float(p[v]) * float(torch.log_softmax(l, -1)[v]) for v in p.topk(k).indices)) for p, l in zip(probs, logits)]
        total += sum(rows) / len(rows)
    return total


def test_hass_topk_adds_its_weighted_mean_to_the_eagle1_objective():
    draft, teacher, steps = random_draft(), random_teacher(), 2
    batch = build_batch(all_supervised([9]), [0], 0, 64)
    logits_seen = []
    handle = teacher.lm_head.register_forward_hook(lambda module, args, out: logits_seen.append(out.detach()))
    with torch.no_grad():
        plain, _ = EagleObjective(draft, teacher, EagleTrainOptions(hass_align_steps=steps))(batch)
        hass, counts = EagleObjective(draft, teacher, EagleTrainOptions(hass_align_steps=steps, hass_topk=3, hass_topk_weight=0.5))(batch)
    handle.remove()
    draft_logits = logits_seen[-steps:]  # the teacher's own call runs first in each forward; then one per step
    assert [len(l) for l in draft_logits] == [8, 7]
    expected = _hand_topk_means(draft_logits, teacher, batch.last_hidden[0], steps, 3)
    assert float(hass - plain) == pytest.approx(0.5 * expected, rel=1e-5)
    assert float(counts["topk_loss_sum"]) == pytest.approx(sum(float(topk_distillation_loss(l, torch.softmax(teacher(batch.last_hidden[0, s : s + len(l)]), -1), 3).sum()) for s, l in enumerate(draft_logits)), rel=1e-5)


def test_hass_topk_adds_its_weighted_mean_to_the_eagle3_objective():
    torch.manual_seed(0)
    draft = Eagle3Draft(eagle3.make_config(TINY_LLAMA, "x/y", eagle3.Eagle3Options(aux_layer_ids=(1, 2))))
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.normal_(0, 0.5)
    teacher, steps = random_teacher(), 3
    batch = build_batch(all_supervised([10], layers=3), [0, 1], 2, 64)
    seen = []
    handle = draft.register_forward_hook(lambda module, args, kwargs, out: seen.append(out[0].detach()), with_kwargs=True)
    with torch.no_grad():
        plain, _ = Eagle3Objective(draft, teacher, None, Eagle3TrainOptions(ttt_steps=steps))(batch)
        hass, _ = Eagle3Objective(draft, teacher, None, Eagle3TrainOptions(ttt_steps=steps, hass_topk=4, hass_topk_weight=2.0))(batch)
    handle.remove()
    expected = _hand_topk_means(seen[-steps:], teacher, batch.last_hidden[0], steps, 4)
    assert float(hass - plain) == pytest.approx(2.0 * expected, rel=1e-5)


# ---- harmonized context alignment: step s is what drafting computes ----


@pytest.mark.parametrize("layers", [1, 2])
def test_alignment_step_equals_drafting_on_the_drafts_own_features(layers):
    """Step s at query j = the feature the draft predicts for its (s+1)-th token after token j+1, its own document only."""
    draft, teacher, steps = random_draft(layers=layers), random_teacher(), 3
    samples = all_supervised([7, 9])
    batch = build_batch(samples, [0], 0, 64)
    outputs = []
    handle = draft.register_forward_hook(lambda module, args, kwargs, out: outputs.append(out.detach()), with_kwargs=True)
    with torch.no_grad():
        EagleObjective(draft, teacher, EagleTrainOptions(hass_align_steps=steps))(batch)
    handle.remove()
    offset = 0
    for record, hidden in samples:
        ids, features = record["input_ids"], teacher.final_norm(hidden[:, 0])
        queries = len(ids) - 1
        for j in range(queries):
            cache = DraftCache.empty(layers)
            with torch.no_grad():  # queries 0..j enter the cache with the verifier's features, as after a verification
                out = draft(torch.tensor([ids[1 : j + 2]]), features[None, : j + 1], torch.arange(j + 1)[None], cache=cache)
                for step in range(min(steps, queries - j)):
                    torch.testing.assert_close(out[0, -1], outputs[step][0, offset + j], rtol=1e-4, atol=1e-5)
                    if j + step + 2 < len(ids):  # the data's next token, the draft's own feature
                        out = draft(torch.tensor([[ids[j + step + 2]]]), out[:, -1:], torch.tensor([[j + step + 1]]), cache=cache)
        offset += queries


def test_alignment_steps_never_train_across_documents_and_follow_the_loss_mask():
    draft, teacher = random_draft(), random_teacher()
    _, counts = EagleObjective(draft, teacher, EagleTrainOptions(hass_align_steps=3))(build_batch(all_supervised([5, 6]), [0], 0, 64))
    assert [counts[f"trained_{s}"].item() for s in range(3)] == [9, 7, 5]
    ((record, hidden),) = all_supervised([8])
    record["loss_mask"] = [0, 0, 0, 1, 1, 1, 1, 1]
    _, counts = EagleObjective(draft, teacher, EagleTrainOptions(hass_align_steps=2))(build_batch([(record, hidden)], [0], 0, 64))
    assert (counts["trained_0"].item(), counts["trained_1"].item(), counts["chain_total_0"].item()) == (5, 5, 5)


def test_validation_replays_every_drafted_step_but_trains_only_the_aligned_ones():
    draft, teacher = random_draft(), random_teacher()
    batch = build_batch(all_supervised([9]), [0], 0, 64)
    objective = EagleObjective(draft, teacher, EagleTrainOptions(hass_align_steps=2, speculative_tokens=4))
    with torch.no_grad():
        trained_loss, trained_counts = objective(batch)
        validation_loss, validation_counts = objective.eval()(batch)
    assert [key for key in trained_counts if key.startswith("trained_")] == ["trained_0", "trained_1"]
    assert [validation_counts[f"trained_{s}"].item() for s in range(4)] == [8, 7, 6, 5]
    assert float(validation_loss) == pytest.approx(float(trained_loss))  # steps 2 and 3 are measured, not trained
    metrics = step_metrics({k: float(v) for k, v in validation_counts.items()}, objective.options)
    assert metrics["loss"] == pytest.approx(float(trained_loss)) and "cond_acc_3" in metrics
    assert "cond_acc_2" not in step_metrics({k: float(v) for k, v in trained_counts.items()}, objective.options)


def test_draft_config_is_the_eagle1_folder_and_refuses_other_layers():
    config = draft_config(EagleTrainOptions(num_layers=2, speculative_tokens=4), TINY_LLAMA, "v", [4], 64, "bfloat16", {"verifier": {"name_or_path": "v"}})
    assert eagle.config_problems(config) == [] and eagle.is_eagle_config(config)
    assert (config["num_hidden_layers"], config["spec_tools"]["speculative_tokens"], config["hidden_size"]) == (2, 4, 16)
    with pytest.raises(SpecError, match=r"--aux-layer-ids 2,4: EAGLE-1 reads only the verifier's last layer \(4"):
        draft_config(EagleTrainOptions(), TINY_LLAMA, "v", [2, 4], 64, "bfloat16", {})
    with pytest.raises(SpecError, match="all 0: nothing would be trained"):
        EagleTrainOptions(feature_weight=0, token_weight=0).check()


# ---- end to end: data from a tiny verifier, spec-train --algorithm eagle, the real drafting loop ----


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A verifier and a data set of its own greedy replies, captured at its last layer only."""
    root = tmp_path_factory.mktemp("eagle")
    verifier_dir = make_verifier(root / "verifier", WIDER, head_scale=2.0)
    model = load_verifier(verifier_dir)
    data = make_dataset(verifier_dir, root / "data", greedy_records(model, 120, new_tokens=24), layer_ids=[4])
    return model, verifier_dir, data


def eagle_config(setup, out, **changes) -> TrainConfig:
    _, verifier_dir, data = setup
    values = {"data": str(data), "verifier": str(verifier_dir), "output": str(out), "algorithm": "eagle", "speculative_tokens": K,
              "epochs": 8, "tokens_per_batch": 256, "lr": 1e-2, "val_fraction": 0.1, "save_dtype": "float32"}  # fmt: skip
    values.update(changes)
    return TrainConfig.from_dict(values)


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    config = eagle_config(setup, tmp_path_factory.mktemp("eagle-run") / "run")
    train(config)
    return config


def tau(model, proposer, prompts, k=K, new_tokens=24) -> tuple[float, list[list[int]]]:
    verifier = DecodingVerifier(model, proposer.aux_layer_ids)
    accepted, rounds, outputs = 0, 0, []
    for prompt in prompts:
        generation = speculative_generate(verifier, proposer, torch.tensor(prompt), k, new_tokens, set())
        accepted += sum(generation.accepted_per_round)
        rounds += len(generation.accepted_per_round)
        outputs.append(generation.tokens)
    return 1 + accepted / rounds, outputs


def untrained_proposer(config: TrainConfig, model) -> EagleProposer:
    decoder = model.get_decoder()
    return EagleProposer(build_draft(prepare(config)), decoder.norm, model.get_output_embeddings(), len(decoder.layers))


def test_training_raises_acceptance_in_the_drafting_loop_and_keeps_the_verifiers_output(setup, trained):
    model = setup[0]
    prompts = [record["input_ids"][:4] for record in greedy_records(model, 10, seed=99, new_tokens=0)]
    tau_untrained, untrained_outputs = tau(model, untrained_proposer(trained, model), prompts)
    tau_trained, outputs = tau(model, load_proposer(Path(trained.output) / "best", model), prompts)
    assert tau_trained > tau_untrained + 0.1, (tau_untrained, tau_trained)
    plain = DecodingVerifier(model)
    greedy = [autoregressive_generate(plain, torch.tensor(p), 24, set()).tokens for p in prompts]
    assert outputs == greedy and untrained_outputs == greedy


def test_checkpoints_are_eagle1_folders_that_pass_spec_validate_and_the_gates(trained):
    out = Path(trained.output)
    config = ckpt.read_config(out / "best")
    assert eagle.is_eagle_config(config) and "speculators_config" not in config
    assert config["spec_tools"]["speculative_tokens"] == K and config["spec_tools"]["training"]["config"]["algorithm"] == "eagle"
    validation = config["spec_tools"]["training"]["validation"]
    assert validation["source"] == "validation" and f"cond_acc_{K - 1}" in validation and validation["loss"] == validation["loss_0"]
    tensors = ckpt.load_tensors(out / "best")
    assert "lm_head.weight" not in tensors and "layers.0.input_layernorm.weight" not in tensors and tensors["fc.weight"].shape == (32, 64)
    assert_servable(out / "best", out / "checkpoint-epoch-7")


def test_refuses_data_without_the_last_layer_and_a_reduced_vocabulary(setup, tmp_path):
    model, verifier_dir, _ = setup
    data = make_dataset(verifier_dir, tmp_path / "data", greedy_records(model, 4, new_tokens=4), layer_ids=[1, 2])
    with pytest.raises(SpecError, match=r"captured layers \[1, 2\] lack layer 4 \(the last, pre-norm\).*--layers including 4"):
        train(eagle_config(setup, tmp_path / "a", data=str(data)))
    with pytest.raises(SpecError, match="--draft-vocab-size 24: --algorithm eagle drafts over the verifier's whole vocabulary"):
        train(eagle_config(setup, tmp_path / "b", draft_vocab_size=24))


def test_spec_train_command_line_takes_the_eagle_and_hass_options(setup, tmp_path):
    from tools import spec_train

    _, verifier_dir, data = setup
    out = tmp_path / "run"
    argv = ["--algorithm", "eagle", "--data", str(data), "--verifier", str(verifier_dir), "-o", str(out), "--num-layers", "2",
            "--speculative-tokens", "4", "--hass-topk", "5", "--hass-topk-weight", "0.5", "--hass-align-steps", "2",
            "--max-steps", "2", "--save-dtype", "float32", "--json"]  # fmt: skip
    assert spec_train.main(argv) == 0
    config = ckpt.read_config(out / "best")
    assert (config["num_hidden_layers"], config["spec_tools"]["speculative_tokens"]) == (2, 4)
    recorded = config["spec_tools"]["training"]["config"]
    assert (recorded["hass_topk"], recorded["hass_topk_weight"], recorded["hass_align_steps"]) == (5, 0.5, 2)
    assert set(config["spec_tools"]["training"]["validation"]) >= {"tau_sim", "cond_acc_1", "feature_loss", "token_loss", "topk_loss"}


def test_kill_9_mid_epoch_then_the_same_run_ends_with_identical_weights(setup, tmp_path):
    """A forked child (no interpreter start-up) trains and is killed with SIGKILL after its step-10 state; rerunning resumes."""
    import multiprocessing

    changes = {"epochs": 2, "save_every": 5, "tokens_per_batch": 64, "hass_align_steps": 2, "hass_topk": 4}
    train(eagle_config(setup, tmp_path / "whole", **changes))
    config = eagle_config(setup, tmp_path / "killed", **changes)
    process = multiprocessing.get_context("fork").Process(target=train, args=(config,))
    process.start()
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.is_alive():
        if metrics.is_file() and metrics.read_text().count("\n") >= 13:  # past the state saved at step 10, mid-epoch
            break
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    assert process.exitcode == -signal.SIGKILL, "the run finished before it could be killed"

    events = []
    train(config, on_event=lambda kind, payload: events.append((kind, payload)))
    assert events[0][0] == "start" and events[0][1]["resumed_at_step"] >= 10
    a, b = ckpt.load_tensors(tmp_path / "whole" / "checkpoint-epoch-1"), ckpt.load_tensors(tmp_path / "killed" / "checkpoint-epoch-1")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"
