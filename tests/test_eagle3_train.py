"""The EAGLE-3 training step: TTT computes what drafting computes, losses, metrics from raw counts."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY_LLAMA
from libspec.algorithms.eagle3 import config as eagle3
from libspec.algorithms.eagle3.model import Eagle3Draft
from libspec.algorithms.layers import DocumentSpans, DraftCache
from libspec.algorithms.eagle3.train import Eagle3Objective, TeacherTargets, Eagle3TrainOptions, derive_metrics, token_loss
from libspec.train.packing import build_batch
from libspec.train.teacher import Teacher, find_final_norm
from torch import nn

H, V = 16, 64


def random_draft(seed=0, **changes) -> Eagle3Draft:
    torch.manual_seed(seed)
    draft = Eagle3Draft(eagle3.make_config(TINY_LLAMA, "x/y", eagle3.Eagle3Options(aux_layer_ids=(1, 2), **changes)))
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.normal_(0, 0.5)
    return draft.eval()


def random_teacher(seed=1) -> Teacher:
    torch.manual_seed(seed)
    norm = nn.RMSNorm(H)
    head = nn.Linear(H, V, bias=False)
    return Teacher(norm, head, None)


def documents(lengths, seed=2):
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index, length in enumerate(lengths):
        ids = torch.randint(0, V, (length,), generator=generator).tolist()
        record = {"id": f"d{index}", "input_ids": ids, "loss_mask": [1] * length}
        samples.append((record, torch.randn(length, 3, H, generator=generator)))  # layers: aux 1, aux 2, last
    return samples


def record_draft_calls(draft):
    """Per draft call: (args, logits by query index, the hidden state fed back)."""
    calls = []

    def hook(module, args, kwargs, output):
        logits, hidden = output
        rows = kwargs.get("logits_at")
        by_query = dict(zip(rows.tolist(), logits)) if rows is not None else dict(enumerate(logits[0]))
        calls.append((args, by_query, hidden))

    handle = draft.register_forward_hook(hook, with_kwargs=True)
    return calls, handle


@pytest.mark.parametrize("changes", [{}, {"num_layers": 2, "norm_output": True}, {"layer_style": "qwen3", "norm_before_fc": True}])
def test_ttt_step_equals_drafting_with_a_cache(changes):
    """Step s at query j = the draft's (s+1)-th token when it drafts after token j+1, its own document only."""
    draft, steps = random_draft(**changes), 3
    samples = documents([7, 9])
    batch = build_batch(samples, [0, 1], 2, max_queries=64)
    objective = Eagle3Objective(draft, random_teacher(), None, Eagle3TrainOptions(ttt_steps=steps))
    calls, handle = record_draft_calls(draft)
    with torch.no_grad():
        objective(batch)
    handle.remove()
    step_logits = [by_query for _, by_query, _ in calls]  # per step: query index -> logits

    offset = 0
    for record, hidden in samples:
        ids = record["input_ids"]
        queries = len(ids) - 1
        aux = hidden[:, :2].flatten(1)
        for j in range(queries):
            cache = DraftCache.empty(len(draft.layers))
            with torch.no_grad():
                # the queries 0..j enter the cache with the verifier's states, as after a verification
                logits, out = draft(torch.tensor([ids[1 : j + 2]]), draft.project(aux[None, : j + 1]), torch.arange(0, j + 1)[None], cache=cache)
                for step in range(steps):
                    if j + step >= queries:
                        break
                    torch.testing.assert_close(logits[0, -1], step_logits[step][offset + j], rtol=1e-4, atol=1e-4)
                    if j + step + 2 < len(ids):  # teacher forcing: the data's next token
                        logits, out = draft(torch.tensor([[ids[j + step + 2]]]), out[:, -1:], torch.tensor([[j + step + 1]]), cache=cache)
        offset += queries


def test_self_fed_steps_read_the_drafts_own_tokens():
    draft = random_draft()
    batch = build_batch(documents([10]), [0, 1], 2, max_queries=64)
    objective = Eagle3Objective(draft, random_teacher(), None, Eagle3TrainOptions(ttt_steps=3, ttt_inputs="draft"))
    calls, handle = record_draft_calls(draft)
    with torch.no_grad():
        objective(batch)
    handle.remove()
    for step in (1, 2):
        fed = calls[step][0][0][0]
        for query, logits in calls[step - 1][1].items():
            assert fed[query] == logits.argmax()
    assert torch.equal(calls[0][0][0], batch.tokens)


def test_steps_never_train_across_documents():
    draft = random_draft()
    samples = documents([5, 6])
    batch = build_batch(samples, [0, 1], 2, max_queries=64)
    _, counts = Eagle3Objective(draft, random_teacher(), None, Eagle3TrainOptions(ttt_steps=3))(batch)
    # 4 + 5 queries; step s trains the queries with s queries of their own document ahead
    assert [counts[f"trained_{s}"].item() for s in range(3)] == [9, 7, 5]


def test_loss_mask_selects_trained_queries_and_chain_starts():
    draft = random_draft()
    ((record, hidden),) = documents([8])
    record["loss_mask"] = [0, 0, 0, 1, 1, 1, 1, 1]
    batch = build_batch([(record, hidden)], [0, 1], 2, max_queries=64)
    _, counts = Eagle3Objective(draft, random_teacher(), None, Eagle3TrainOptions(ttt_steps=2))(batch)
    assert counts["trained_0"].item() == 5  # queries whose next token is supervised: tokens 3..7
    assert counts["trained_1"].item() == 5  # tokens 3..7 again, reached one step later from queries 1..5
    assert counts["chain_total_0"].item() == 5


def test_reduced_vocabulary_scores_the_verifiers_full_argmax():
    draft = random_draft(draft_vocab_size=32)
    chosen = torch.arange(0, 64, 2)
    draft.d2t.copy_(chosen - torch.arange(32))
    draft.t2d.zero_()
    draft.t2d[chosen] = True
    teacher = random_teacher()
    teacher.lm_head = nn.Linear(H, V, bias=True)
    with torch.no_grad():
        teacher.lm_head.bias.zero_()
        teacher.lm_head.bias[1::2] = 100.0  # the verifier prefers odd ids, which the draft cannot produce
    batch = build_batch(documents([12]), [0, 1], 2, max_queries=64)
    loss, counts = Eagle3Objective(draft, teacher, chosen, Eagle3TrainOptions(ttt_steps=2))(batch)
    assert torch.isfinite(loss)
    assert counts["correct_0"].item() == 0


def test_losses():
    p_logits = torch.randn(5, 7)
    log_p = TeacherTargets.from_logits(p_logits)
    assert torch.allclose(token_loss(p_logits, log_p, "kl"), torch.zeros(5), atol=1e-6)
    assert torch.allclose(token_loss(p_logits, log_p, "tv"), torch.zeros(5), atol=1e-6)
    q_logits = torch.randn(5, 7)
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    assert torch.allclose(token_loss(q_logits, log_p, "tv"), 0.5 * (p - q).abs().sum(-1), atol=1e-6)
    kl = (p * (p.log() - q.log())).sum(-1)
    assert torch.allclose(token_loss(q_logits, log_p, "kl"), kl, atol=1e-5)
    lk = token_loss(q_logits, log_p, "lk")
    tv = token_loss(q_logits, log_p, "tv")
    assert bool(((lk >= torch.minimum(kl, tv) - 1e-6) & (lk <= torch.maximum(kl, tv) + 1e-6)).all())


def test_losses_train_the_draft_toward_the_teacher():
    for kind in ("kl", "tv", "lk"):
        torch.manual_seed(0)
        target = torch.randn(4, 9) * 3
        logits = torch.zeros(4, 9, requires_grad=True)
        optimizer = torch.optim.SGD([logits], lr=1.0)
        for _ in range(300):
            optimizer.zero_grad()
            token_loss(logits, TeacherTargets.from_logits(target), kind).sum().backward()
            optimizer.step()
        assert torch.equal(logits.argmax(-1), target.argmax(-1)), kind


def test_derived_metrics_follow_the_chain_formula():
    counts = {
        "loss_sum_0": 20.0, "trained_0": 10.0, "correct_0": 8.0, "chain_total_0": 10.0, "chain_correct_0": 8.0,
        "loss_sum_1": 30.0, "trained_1": 10.0, "correct_1": 6.0, "chain_total_1": 8.0, "chain_correct_1": 4.0,
    }  # fmt: skip
    metrics = derive_metrics(counts, 2, step_decay=0.5)
    assert metrics["acc_0"] == 0.8 and metrics["cond_acc_1"] == 0.5 and metrics["acc_1"] == 0.6
    assert math.isclose(metrics["tau_sim"], 1 + 0.8 + 0.8 * 0.5)
    assert math.isclose(metrics["loss"], 2.0 + 0.5 * 3.0)


def test_gradients_reach_only_trainable_weights():
    draft = random_draft()
    draft.embed_tokens.weight.requires_grad_(False)
    draft.lm_head.weight.requires_grad_(False)
    batch = build_batch(documents([9, 7]), [0, 1], 2, max_queries=64)
    loss, _ = Eagle3Objective(draft, random_teacher(), None, Eagle3TrainOptions(ttt_steps=3))(batch)
    loss.backward()
    assert draft.fc.weight.grad is not None and draft.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert draft.embed_tokens.weight.grad is None and draft.lm_head.weight.grad is None


def test_find_final_norm_picks_the_models_last_norm():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in TINY_LLAMA.items() if k != "model_type"}))
    assert find_final_norm(model) is model.model.norm


def test_document_spans_attend_like_the_dense_ttt_mask():
    draft = random_draft(num_layers=2)
    batch = build_batch(documents([5, 8, 3]), [0, 1], 2, max_queries=64)
    spans = DocumentSpans.from_document_ids(batch.document_ids[0])
    assert spans.bounds == ((0, 4), (4, 11), (11, 13))
    outputs = {}
    for kind in ("dense", "spans"):
        cache = DraftCache.empty(2)
        hidden = draft.project(batch.aux_hidden)
        for step in range(3):
            mask = spans.dense(13, step + 1)[None, None] if kind == "dense" else spans
            logits, hidden = draft(batch.tokens, hidden, batch.positions + step, mask, cache)
        outputs[kind] = logits
    torch.testing.assert_close(outputs["spans"], outputs["dense"], rtol=1e-5, atol=1e-5)


def test_reach_weighting_leaves_step_0_and_shrinks_later_steps():
    draft = random_draft()
    batch = build_batch(documents([12, 9]), [0, 1], 2, max_queries=64)
    uniform = Eagle3Objective(draft, random_teacher(), None, Eagle3TrainOptions(ttt_steps=3))(batch)[1]
    reach = Eagle3Objective(draft, random_teacher(), None, Eagle3TrainOptions(ttt_steps=3, ttt_weighting="reach"))(batch)[1]
    assert torch.isclose(reach["loss_sum_0"], uniform["loss_sum_0"])
    assert reach["loss_sum_1"] < uniform["loss_sum_1"] and reach["loss_sum_2"] < reach["loss_sum_1"]
