"""Issue 12 item 9: precision is chosen from what this CPU runs fast, not from what was fast on one box."""

from __future__ import annotations

import torch

from libspec import cpu
from libspec.demo import tiny_verifier


def test_bf16_only_where_measured_faster(monkeypatch):
    monkeypatch.setattr(cpu, "bf16_speedup", lambda threads: 1 / 54)  # an AVX2-only CPU: bf16 54x slower
    assert cpu.training_precision(1) == "fp32"
    assert "fp32" in cpu.describe(1) and "0.02x" in cpu.describe(1)
    monkeypatch.setattr(cpu, "bf16_speedup", lambda threads: 6.0)  # AMX / AVX512-BF16
    assert cpu.training_precision(1) == "bf16"


def test_the_measurement_is_a_real_ratio_and_restores_threads():
    before = torch.get_num_threads()
    speedup = cpu.bf16_speedup.__wrapped__(1)
    assert speedup > 0 and torch.get_num_threads() == before


def test_the_verifier_cache_key_depends_on_the_precision(monkeypatch):
    monkeypatch.setattr(cpu, "bf16_speedup", lambda threads: 0.02)
    fp32_key = tiny_verifier.recipe_hash("tiny")
    monkeypatch.setattr(cpu, "bf16_speedup", lambda threads: 6.0)
    assert tiny_verifier.recipe_hash("tiny") != fp32_key
