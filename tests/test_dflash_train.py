"""spec-train --algorithm dflash: anchored blocks, the loss weights, metrics, the mask token, and end to end on a tiny verifier."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_LLAMA, random_samples
from gates import assert_servable
from libspec.algorithms.dflash.config import DFlashOptions, make_config
from libspec.algorithms.dflash.model import DFlashDraft, DFlashProposer, load_proposer
from libspec.algorithms.dflash.train import (
    AnchoredBlocks, DFlashTrainOptions, block_counts, build_objective, default_aux_layer_ids, draft_config, position_weights, resolve_mask_token_id, step_metrics,
)  # fmt: skip
from libspec.algorithms.eagle3.config import draft_layer_config
from libspec.bench.decoding import DecodingVerifier, autoregressive_generate, speculative_generate
from libspec.errors import SpecError
from libspec.format import checkpoint as ckpt
from libspec.train.config import TrainConfig
from libspec.train.loop import build_draft, prepare, train
from libspec.train.packing import PackedBatch, build_batch
from verifier_data import greedy_records, load_verifier, make_dataset, make_verifier

WIDER = {**TINY_LLAMA, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}
MASK_ID = 63  # the tiny verifier's stand-in tokenizer cannot be loaded, so the tests name the mask token
BLOCK = 4


def tiny_draft(causal: bool = False, seed: int = 0) -> DFlashDraft:
    shape = DFlashOptions(aux_layer_ids=(1, 2), block_size=BLOCK, mask_token_id=5, speculative_tokens=BLOCK - 1, sliding_window_non_causal=not causal)
    draft = DFlashDraft(make_config(TINY_LLAMA, "verifier", draft_layer_config(TINY_LLAMA, 2, "qwen3", 2), shape))
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.normal_(0, 0.3)
    return draft


def packed(seed: int = 0) -> PackedBatch:
    return build_batch(random_samples(4, 64, 3, 16, seed=seed, min_len=6, max_len=12), [0, 1], 2, 100)


@pytest.mark.parametrize("causal", [False, True])
def test_training_forward_over_many_blocks_equals_drafting_each_block_alone(causal):
    """The packed forward (one row of blocks, one mask) gives what the decoding engine computes per block."""
    draft, batch = tiny_draft(causal), packed()
    blocks = AnchoredBlocks.select(batch, BLOCK, 100, None)
    assert blocks.count >= 5
    ids = torch.full_like(blocks.slots, 5)
    ids[:, 0] = batch.tokens[0, blocks.anchors]
    mask = blocks.attention_mask(batch, causal)
    together = draft(ids.view(1, -1), batch.aux_hidden, batch.positions, blocks.positions.view(1, -1), mask).view(blocks.count, BLOCK, -1)
    documents = batch.document_ids[0]
    for index, anchor in enumerate(blocks.anchors.tolist()):
        start = int((documents == documents[anchor]).nonzero()[0])  # the context is the anchor's document up to it
        assert int(blocks.positions[index, 0]) == anchor - start + 1  # the anchor sits right after its context
        alone = draft(ids[index : index + 1], batch.aux_hidden[:, start : anchor + 1], batch.positions[:, start : anchor + 1], blocks.positions[index : index + 1])
        torch.testing.assert_close(together[index], alone[0], rtol=1e-4, atol=1e-5)


def test_anchors_are_supervised_and_slots_stay_in_their_document():
    batch = packed(seed=3)
    documents, supervised = batch.document_ids[0], batch.loss_mask[0]
    blocks = AnchoredBlocks.select(batch, BLOCK, 100, None)
    assert bool(supervised[blocks.anchors].all()) and bool(blocks.trained[:, 1].all()) and not bool(blocks.trained[:, 0].any())
    for index, anchor in enumerate(blocks.anchors.tolist()):
        for slot in range(1, BLOCK):
            target = anchor + slot
            expected = target < len(documents) and bool(documents[target] == documents[anchor]) and bool(supervised[target])
            assert bool(blocks.trained[index, slot]) == expected, (anchor, slot)
    every = blocks.count
    few = AnchoredBlocks.select(batch, BLOCK, 3, torch.Generator().manual_seed(1))
    assert few.count == 3 < every and set(few.anchors.tolist()) <= set(blocks.anchors.tolist())
    assert few.anchors.tolist() == sorted(few.anchors.tolist())


def test_decay_weights_follow_exp_minus_k_minus_1_over_gamma():
    trained = torch.tensor([[False, True, True, True], [False, True, False, False]])
    weights = position_weights(torch.zeros(2, 4), trained, DFlashTrainOptions(position_weighting="decay", decay_gamma=2.0))
    torch.testing.assert_close(weights[0], torch.tensor([0.0, 1.0, math.exp(-0.5), math.exp(-1.0)]))
    torch.testing.assert_close(weights[1], torch.tensor([0.0, 1.0, 0.0, 0.0]))


def test_dpace_weights_are_the_reachable_accepted_length_from_each_slot():
    ce = torch.tensor([[0.0, 0.1, 0.7, 2.0], [0.0, 0.3, 0.0, 0.0]])
    trained = torch.tensor([[False, True, True, True], [False, True, False, False]])
    alpha = 0.25
    weights = position_weights(ce, trained, DFlashTrainOptions(dpace_alpha=alpha))
    smooth = [(1 - alpha) * math.exp(-c) + alpha for c in (0.1, 0.7, 2.0)]
    reach = [smooth[0], smooth[0] * smooth[1], smooth[0] * smooth[1] * smooth[2]]
    torch.testing.assert_close(weights[0], torch.tensor([0.0, sum(reach), reach[1] + reach[2], reach[2]]))
    torch.testing.assert_close(weights[1], torch.tensor([0.0, (1 - alpha) * math.exp(-0.3) + alpha, 0.0, 0.0]))


def test_metrics_per_position_chain_and_accepted_length():
    trained = torch.tensor([[False, True, True, True]] * 3 + [[False, True, True, False]])
    correct = torch.tensor([[False, True, True, False], [False, True, False, True], [False, False, True, True], [False, True, True, False]])
    counts = {k: float(v) for k, v in block_counts(torch.ones(4, 4), trained, correct).items()}
    counts.update(weighted_loss_sum=9.0, queries=10.0)
    metrics = step_metrics(counts, DFlashTrainOptions(block_size=BLOCK))
    assert (metrics["acc_0"], metrics["acc_1"], metrics["acc_2"]) == (3 / 4, 3 / 4, 2 / 3)
    assert (metrics["cond_acc_0"], metrics["cond_acc_1"], metrics["cond_acc_2"]) == (3 / 4, 2 / 3, 0.0)
    assert metrics["tau_sim"] == pytest.approx(1 + 3 / 4 + 3 / 4 * 2 / 3)
    assert metrics["eal"] == pytest.approx((3 + 2 + 1 + 3) / 4)  # leading correct run + 1, per block
    assert metrics["loss"] == pytest.approx(9.0 / 11)


def test_default_aux_layers_follow_zlab_spacing():
    assert default_aux_layer_ids(36, DFlashTrainOptions()) == [2, 10, 18, 26, 34]  # Qwen3-8B: z-lab's [1, 9, 17, 25, 33] + 1
    assert default_aux_layer_ids(28, DFlashTrainOptions(num_layers=1)) == [15]
    assert default_aux_layer_ids(4, DFlashTrainOptions()) == [2]


def test_mask_token_comes_from_the_tokenizer_or_its_first_unused_row(tmp_path, fake_verifier):
    from tiny_chat import make_tokenizer

    tokenizer = make_tokenizer()
    plain = tmp_path / "plain"
    tokenizer.save_pretrained(plain)
    assert resolve_mask_token_id(None, str(plain), len(tokenizer) + 8) == len(tokenizer)  # where <|MASK|> would be added
    assert resolve_mask_token_id(None, str(plain), len(tokenizer)) == tokenizer.pad_token_id  # no room: upstream's fallback
    tokenizer.add_special_tokens({"mask_token": "<|mask|>"})
    masked = tmp_path / "masked"
    tokenizer.save_pretrained(masked)
    assert resolve_mask_token_id(None, str(masked), len(tokenizer)) == tokenizer.mask_token_id
    assert resolve_mask_token_id(7, str(masked), len(tokenizer)) == 7
    with pytest.raises(SpecError, match="--mask-token-id 999: expected an id below"):
        resolve_mask_token_id(999, str(masked), len(tokenizer))
    with pytest.raises(SpecError, match="pass --mask-token-id"):
        resolve_mask_token_id(None, str(fake_verifier), 64)


# ---- end to end: data from a tiny verifier, spec-train --algorithm dflash, the real drafting loop ----


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A verifier and a data set of its own greedy replies, captured at layers 1..4."""
    root = tmp_path_factory.mktemp("dflash")
    verifier_dir = make_verifier(root / "verifier", WIDER, head_scale=2.0)
    model = load_verifier(verifier_dir)
    data = make_dataset(verifier_dir, root / "data", greedy_records(model, 120, new_tokens=24), layer_ids=[1, 2, 3, 4])
    return model, verifier_dir, data


def dflash_config(setup, out, **changes) -> TrainConfig:
    _, verifier_dir, data = setup
    values = {"data": str(data), "verifier": str(verifier_dir), "output": str(out), "algorithm": "dflash", "aux_layer_ids": [1, 2, 3],
              "num_layers": 1, "block_size": BLOCK, "mask_token_id": MASK_ID, "epochs": 8, "tokens_per_batch": 256, "lr": 1e-2,
              "val_fraction": 0.1, "save_dtype": "float32"}  # fmt: skip
    values.update(changes)
    return TrainConfig.from_dict(values)


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    config = dflash_config(setup, tmp_path_factory.mktemp("dflash-run") / "run")
    train(config)
    return config


def tau(model, proposer, prompts, k=BLOCK - 1, new_tokens=24) -> tuple[float, list[list[int]]]:
    verifier = DecodingVerifier(model, proposer.aux_layer_ids)
    accepted, rounds, outputs = 0, 0, []
    for prompt in prompts:
        generation = speculative_generate(verifier, proposer, torch.tensor(prompt), k, new_tokens, set())
        accepted += sum(generation.accepted_per_round)
        rounds += len(generation.accepted_per_round)
        outputs.append(generation.tokens)
    return 1 + accepted / rounds, outputs


def test_training_raises_acceptance_in_the_drafting_loop_and_keeps_the_verifiers_output(setup, trained):
    model = setup[0]
    prompts = [record["input_ids"][:4] for record in greedy_records(model, 10, seed=99, new_tokens=0)]
    untrained = DFlashProposer(build_draft(prepare(trained)))
    tau_untrained, untrained_outputs = tau(model, untrained, prompts)
    tau_trained, outputs = tau(model, load_proposer(Path(trained.output) / "best", model), prompts)
    assert tau_trained > tau_untrained + 0.1, (tau_untrained, tau_trained)
    plain = DecodingVerifier(model)
    greedy = [autoregressive_generate(plain, torch.tensor(p), 24, set()).tokens for p in prompts]
    assert outputs == greedy and untrained_outputs == greedy


def test_checkpoints_record_the_block_and_pass_spec_validate_and_the_gates(trained):
    out = Path(trained.output)
    config = ckpt.read_config(out / "best")
    assert config["speculators_model_type"] == "dflash" and config["block_size"] == BLOCK and config["mask_token_id"] == MASK_ID
    assert config["aux_hidden_state_layer_ids"] == [1, 2, 3] and config["sliding_window_non_causal"] is True
    assert config["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == BLOCK - 1
    assert config["spec_tools"]["training"]["config"]["position_weighting"] == "dpace"
    assert_servable(out / "best", out / "checkpoint-epoch-7")


def test_the_loss_equals_upstream_speculators_loss_on_the_same_blocks(setup, trained, tmp_path):
    """Forward, masks, positions, targets and both position weightings, checked against upstream's DFlash trainer."""
    import dataclasses
    import json
    import subprocess

    from gates import require_gates
    from libspec.format.sample_table import open_sample_table
    from libspec.train.teacher import load_verifier_head
    from libspec.train.vocab_map import VocabMap
    from libspec.validate.gates import gate_python

    require_gates()
    _, verifier_dir, data = setup
    best = Path(trained.output) / "best"
    table, draft = open_sample_table(str(data)), load_proposer(best, load_verifier(verifier_dir)).draft.float()
    head, layers = load_verifier_head(str(verifier_dir)), [0, 1, 2, 3]  # the data's columns: layers 1, 2, 3 (aux) and 4
    inputs, ours = {}, {"dpace": [], "decay": []}
    for index in range(3):
        record, hidden = table.records[index], table.hidden(index, layers).float()
        length, batch = len(record["input_ids"]), build_batch([(table.records[index], hidden)], [0, 1, 2], 3, 10_000)
        blocks = AnchoredBlocks.select(batch, BLOCK, 10_000, None)
        keep = blocks.anchors + 1 < length - BLOCK  # upstream never anchors in the last block_size tokens
        blocks = AnchoredBlocks(*(getattr(blocks, f.name)[keep] for f in dataclasses.fields(blocks)))
        for weighting in ours:
            objective = build_objective(draft, head, VocabMap(torch.arange(64), 64), DFlashTrainOptions(block_size=BLOCK, position_weighting=weighting))
            with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
                patch.setattr(AnchoredBlocks, "select", classmethod(lambda cls, *args: blocks))
                ours[weighting].append(float(objective.eval()(batch)[0]))
        inputs.update({f"{index}.anchors": blocks.anchors + 1, f"{index}.input_ids": torch.tensor([record["input_ids"]]),
                       f"{index}.loss_mask": torch.tensor([record["loss_mask"]]), f"{index}.hidden_states": hidden[None, :, :3].flatten(2),
                       f"{index}.verifier_last_hidden_states": hidden[None, :, 3]})  # fmt: skip
    torch.save(inputs, tmp_path / "inputs.pt")
    script = Path(__file__).with_name("upstream_dflash_loss.py")
    result = subprocess.run([str(gate_python()), str(script), str(best), str(verifier_dir), str(tmp_path / "inputs.pt")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    upstream = json.loads(result.stdout.strip().splitlines()[-1])
    for weighting, losses in ours.items():
        assert losses == pytest.approx(upstream[weighting], rel=1e-5), weighting


def test_reduced_vocabulary_draft_is_servable(setup, tmp_path):
    out = tmp_path / "run"
    train(dflash_config(setup, out, draft_vocab_size=24, epochs=1, position_weighting="decay"))
    tensors = ckpt.load_tensors(out / "checkpoint-epoch-0")
    assert tensors["lm_head.weight"].shape == (24, 32) and int(tensors["t2d"].sum()) == 24
    assert_servable(out / "checkpoint-epoch-0")


def test_refuses_aux_layer_zero():
    with pytest.raises(SpecError, match="DFlash ids start at 1"):  # vLLM reads id - 1 as a layer output
        draft_config(DFlashTrainOptions(mask_token_id=5), TINY_LLAMA, "verifier", [0, 1], 64, "float32", {})


def test_spec_train_command_line_takes_the_dflash_options(setup, tmp_path, capsys):
    from tools import spec_train

    _, verifier_dir, data = setup
    out = tmp_path / "run"
    argv = ["--algorithm", "dflash", "--data", str(data), "--verifier", str(verifier_dir), "-o", str(out), "--aux-layer-ids", "1,2,3",
            "--num-layers", "2", "--block-size", "3", "--mask-token-id", "7", "--position-weighting", "decay", "--decay-gamma", "2",
            "--max-steps", "2", "--save-dtype", "float32", "--json"]  # fmt: skip
    assert spec_train.main(argv) == 0
    config = ckpt.read_config(out / "best")
    assert (config["block_size"], config["mask_token_id"], config["transformer_layer_config"]["num_hidden_layers"]) == (3, 7, 2)
    recorded = config["spec_tools"]["training"]["config"]
    assert (recorded["position_weighting"], recorded["decay_gamma"], recorded["algorithm"]) == ("decay", 2.0, "dflash")


def test_kill_9_mid_epoch_then_the_same_run_ends_with_identical_weights(setup, tmp_path):
    """A forked child (no interpreter start-up) trains and is killed with SIGKILL after its step-10 state; rerunning resumes."""
    import multiprocessing

    changes = {"epochs": 2, "save_every": 5, "tokens_per_batch": 64, "max_anchors": 8}  # ~54 steps per epoch, anchors subsampled
    train(dflash_config(setup, tmp_path / "whole", **changes))
    config = dflash_config(setup, tmp_path / "killed", **changes)
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
