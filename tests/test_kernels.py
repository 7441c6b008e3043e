"""Packed small-batch kernels for the verifier: same outputs, chosen by the forward's own timing, bounded memory."""

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from libspec.bench.decoding import DecodingVerifier
from libspec.bench.kernels import pack_rows, packed_gemm_available, plan_small_batch_linears, verifier_forward_timer

needs_mkl = pytest.mark.skipif(not packed_gemm_available(torch.device("cpu"), torch.float32), reason="no MKL packed GEMM in this torch build")


def tiny_model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def fake_timer(model, faster_rows):
    """Packed forwards of `faster_rows` take half the time, others 10% longer; plain ones 1 s."""

    def time_forward(rows):
        packed = "forward" in model.lm_head.__dict__  # the plan installs packs by replacing forward on the module
        return (0.5 if rows in faster_rows else 1.1) if packed else 1.0

    return time_forward


def test_pack_rows_are_one_or_a_multiple_of_four():
    assert [pack_rows(n) for n in range(1, 10)] == [1, 4, 4, 4, 8, 8, 8, 8, 12]


@needs_mkl
def test_only_rows_measured_faster_are_routed_and_outputs_stay_the_same():
    model = tiny_model()
    verifier = DecodingVerifier(model)
    context = torch.randint(0, 300, (20,))
    expected = {}
    for rows in (1, 3, 4, 6):
        verifier.reset()
        verifier.forward(context)
        expected[rows] = verifier.forward(context[:rows])[0]
    plan = plan_small_batch_linears(model, [1, 2, 3, 4, 5, 6], fake_timer(model, {1, 3, 6}), budget_bytes=10**9)
    assert plan.routes == {1: 1, 3: 4, 6: 8}
    assert "forward" not in model.lm_head.__dict__  # planning leaves the model as it was
    plan.install(model)
    for rows in (1, 3, 4, 6):
        verifier.reset()
        verifier.forward(context)
        got = verifier.forward(context[:rows])[0]
        torch.testing.assert_close(got, expected[rows], rtol=1e-4, atol=1e-4)
        assert torch.equal(got.argmax(-1), expected[rows].argmax(-1))
    plan.remove()
    assert "forward" not in model.lm_head.__dict__


@needs_mkl
def test_packs_never_run_under_autograd():
    model = tiny_model()
    plan = plan_small_batch_linears(model, [1], fake_timer(model, {1}), budget_bytes=10**9)
    plan.install(model)
    x = torch.randn(1, 64, requires_grad=True)
    model.lm_head(x).sum().backward()  # the packed op has no backward: this would fail on the packed path
    assert x.grad is not None


@needs_mkl
def test_a_budget_too_small_for_one_set_of_packs_keeps_plain_kernels():
    model = tiny_model()
    plan = plan_small_batch_linears(model, [1, 4], fake_timer(model, {1, 4}), budget_bytes=1000)
    assert plan.routes == {} and "exceeds the memory budget" in plan.note
    # room for one set: the smallest pack size is kept
    weights = sum(m.weight.numel() * 4 for m in model.modules() if type(m) is torch.nn.Linear)
    plan = plan_small_batch_linears(model, [1, 4], fake_timer(model, {1, 4}), budget_bytes=weights)
    assert plan.routes == {1: 1} and plan.pack_bytes == weights


@needs_mkl
def test_the_real_timer_measures_the_verifier_forward():
    model = tiny_model()
    verifier = DecodingVerifier(model)
    time_forward = verifier_forward_timer(verifier, context_length=16)
    assert time_forward(3) > 0 and verifier.length == 16  # cropped back after each timing


def test_without_mkl_packed_gemm_the_plan_is_plain():
    model = tiny_model().to(torch.bfloat16)
    plan = plan_small_batch_linears(model, [1, 4], lambda rows: 1.0)
    assert plan.routes == {} and plan.note.startswith("plain kernels")


@needs_mkl
def test_shared_kv_groups_are_kept_when_faster_and_give_the_same_logits(monkeypatch):
    monkeypatch.delenv("TRANSFORMERS_SDPA_FORCE_GQA", raising=False)
    model = tiny_model()  # 4 query heads, 2 KV heads

    def time_forward(rows):
        return 0.5 if os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA") == "1" else 1.0

    plan = plan_small_batch_linears(model, [1, 4], time_forward, budget_bytes=10**9)
    assert plan.shared_kv_groups and "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ
    verifier = DecodingVerifier(model)
    context = torch.randint(0, 300, (20,))
    verifier.forward(context)
    expected = verifier.forward(context[:4])[0]
    verifier.reset()
    plan.install(model)
    assert os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] == "1"
    verifier.forward(context)
    torch.testing.assert_close(verifier.forward(context[:4])[0], expected, rtol=1e-4, atol=1e-4)
    plan.remove()
    assert "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ


@needs_mkl
def test_a_users_own_gqa_setting_is_left_alone(monkeypatch):
    monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "0")
    model = tiny_model()
    plan = plan_small_batch_linears(model, [1, 4], lambda rows: 1.0, budget_bytes=10**9)
    assert not plan.shared_kv_groups and os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] == "0"
