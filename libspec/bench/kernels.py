"""Verifier linears for forwards of a few tokens: MKL's packed GEMM where the whole forward measures faster.

Verifying k drafts runs the verifier on k+1 tokens. On a CPU, MKL's general matrix product packs
the weight matrix anew on every call; with a handful of rows that packing costs more than the
arithmetic, so a forward of 4 tokens took ~1.6 single steps on SmolLM2 where memory-bound decoding
allows ~1. MKL's packed GEMM (`torch.ops.mkl._mkl_linear`, what torch.compile's CPU freezing uses)
packs each weight once, ahead of time, for one row count per pack, and each pack is as large as the
weight. Measured on a Xeon, packed kernels are fast at 1 row and at multiples of 4 rows and slow in
between, so other row counts are padded up to the next multiple of 4.

Timing one matrix product in a loop would mislead (small weights stay in cache there, not in a
real forward, where the whole model streams from memory), so `plan_small_batch_linears` times the
verifier's own forward of each row count with and without the packs, and keeps them for the row
counts where they win. Packs are made only while they fit a memory budget. Inference only: with
autograd on, or any other row count, the plain kernel runs.

Attention has the same kind of waste: with a mask (any forward of several tokens after a cache),
transformers' SDPA path copies the cached keys and values once per query head group
(`repeat_kv`) instead of letting torch's kernel share them (`enable_gqa`), because some CUDA
kernels need that. On a CPU torch's kernel takes the mask and the groups together with the same
result; transformers' own switch for it (TRANSFORMERS_SDPA_FORCE_GQA) is set while the plan is
installed, if a timing shows it faster.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

FASTER_BY = 0.97  # packs (or shared K/V groups) must save at least 3% of a forward to be kept
FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"
TIMING_REPEATS = 7


def packed_gemm_available(device: torch.device, dtype: torch.dtype) -> bool:
    """MKL's packed GEMM exists in x86 CPU builds of torch, for float32."""
    return device.type == "cpu" and dtype == torch.float32 and torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


def memory_available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (None where there is none)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def pack_rows(rows: int) -> int:
    """The row count of the pack that serves `rows` rows: 1, else the next multiple of 4."""
    return 1 if rows == 1 else -(-rows // 4) * 4


@dataclass
class KernelPlan:
    """Which row counts run on packs (padded up to the pack's rows); `install` switches the linears over, `remove` back."""

    sizes: tuple[int, ...]
    routes: dict[int, int] = field(default_factory=dict)  # rows -> rows of the pack they run on
    forward_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # rows -> {"plain": ms, "packed": ms}
    pack_bytes: int = 0
    shared_kv_groups: bool = False  # sets FORCE_GQA while installed
    note: str = ""
    _saved_force_gqa: str | None = field(default=None, repr=False)
    _packs: dict[nn.Linear, dict[int, torch.Tensor]] = field(default_factory=dict, repr=False)
    _plain: dict[nn.Linear, object] = field(default_factory=dict, repr=False)

    def describe(self) -> dict:
        return {"kernel": "mkl packed gemm" if self.routes else "plain", "note": self.note, "routes": {str(r): p for r, p in self.routes.items()},
                "pack_bytes": self.pack_bytes, "shared_kv_groups": self.shared_kv_groups, "forward_ms": self.forward_ms}  # fmt: skip

    def install(self, model: nn.Module, routes: dict[int, int] | None = None) -> None:
        """Route the linears' forwards of these row counts (default: the plan's) to their packs, making missing packs."""
        self.remove()
        routes = self.routes if routes is None else routes
        for module in _linears(model):
            packs = self._packs.setdefault(module, {})
            for rows in set(routes.values()) - set(packs):
                packs[rows] = torch.ops.mkl._mkl_reorder_linear_weight(module.weight.detach(), rows)
            self._plain[module] = module.__dict__.get("forward")  # None: the class's own forward
            module.forward = _packed_forward(module, dict(routes), packs)
        if self.shared_kv_groups:
            self._share_kv_groups(True)

    def _share_kv_groups(self, on: bool) -> None:
        if on:
            self._saved_force_gqa = os.environ.get(FORCE_GQA)
            os.environ[FORCE_GQA] = "1"
        elif self._saved_force_gqa is None:
            os.environ.pop(FORCE_GQA, None)
        else:
            os.environ[FORCE_GQA] = self._saved_force_gqa

    def remove(self) -> None:
        if self.shared_kv_groups and os.environ.get(FORCE_GQA) == "1":
            self._share_kv_groups(False)
        for module, forward in self._plain.items():
            if forward is None:
                del module.forward  # back to the class's method, as if never installed
            else:
                module.forward = forward
        self._plain.clear()

    def drop_unused_packs(self) -> None:
        used = set(self.routes.values())
        for packs in self._packs.values():
            for rows in set(packs) - used:
                del packs[rows]


def plan_small_batch_linears(model: nn.Module, sizes: list[int], time_forward: Callable[[int], float], budget_bytes: int | None = None) -> KernelPlan:
    """Route each row count in `sizes` to packs where `time_forward(rows)` (seconds of the verifier's own
    forward of that many new tokens) is faster with them; packs within `budget_bytes` (default: half
    the memory available now)."""
    sizes = sorted(set(sizes))
    parameter = next(model.parameters())
    plan = KernelPlan(tuple(sizes))
    if not packed_gemm_available(parameter.device, parameter.dtype):
        plan.note = f"plain kernels: no MKL packed GEMM for {parameter.dtype} on {parameter.device.type}"
        return plan
    budget = budget_bytes if budget_bytes is not None else (memory_available_bytes() or 0) // 2
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m in _linears(model))
    affordable = sorted({pack_rows(rows) for rows in sizes})[: max(0, budget // max(1, weight_bytes))]
    candidates = {rows: pack_rows(rows) for rows in sizes if pack_rows(rows) in affordable}
    if not candidates:
        plan.note = f"plain kernels: one set of packs ({weight_bytes / 2**20:,.0f} MiB) exceeds the memory budget of {budget / 2**20:,.0f} MiB"
        return plan
    ratios: dict[int, list[float]] = {rows: [] for rows in candidates}  # packed / plain, round by round
    plain_ms: dict[int, list[float]] = {rows: [] for rows in candidates}
    for _ in range(TIMING_REPEATS):  # alternating rounds: drift on a shared machine hits both alike
        plan.remove()
        plain = {rows: time_forward(rows) for rows in candidates}
        plan.install(model, candidates)
        for rows in candidates:
            ratios[rows].append(time_forward(rows) / plain[rows])
            plain_ms[rows].append(plain[rows] * 1e3)
    plan.remove()
    plan.routes = {rows: pack for rows, pack in candidates.items() if statistics.median(ratios[rows]) < FASTER_BY}
    plan.forward_ms = {str(rows): {"plain": round(statistics.median(plain_ms[rows]), 2),
                                   "packed": round(statistics.median(plain_ms[rows]) * statistics.median(ratios[rows]), 2)} for rows in candidates}  # fmt: skip
    plan.drop_unused_packs()
    plan.pack_bytes = weight_bytes * len(set(plan.routes.values()))
    plan.shared_kv_groups = _shared_kv_groups_faster(plan, model, [rows for rows in sizes if rows > 1], time_forward)
    plan.note = (f"MKL packed GEMM for forwards of {', '.join(map(str, plan.routes))} tokens ({plan.pack_bytes / 2**20:,.0f} MiB of packs)"
                 if plan.routes else "plain kernels: packed GEMM measured no faster here")  # fmt: skip
    if plan.shared_kv_groups:
        plan.note += "; attention shares K/V across query groups (no repeat_kv copies)"
    return plan


def _shared_kv_groups_faster(plan: KernelPlan, model: nn.Module, sizes: list[int], time_forward: Callable[[int], float]) -> bool:
    """Whether forwards of several tokens (with the plan's packs) are faster with K/V shared across query groups."""
    if not sizes or FORCE_GQA in os.environ:  # the user's own setting stands
        return False
    ratios = []  # shared / copied, round by round, over all sizes
    plan.install(model)
    try:
        for _ in range(TIMING_REPEATS):
            copied = sum(time_forward(rows) for rows in sizes)
            os.environ[FORCE_GQA] = "1"
            try:
                ratios.append(sum(time_forward(rows) for rows in sizes) / copied)
            finally:
                del os.environ[FORCE_GQA]
    finally:
        plan.remove()
    return statistics.median(ratios) < FASTER_BY


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if type(m) is nn.Linear]


def _packed_forward(module: nn.Linear, routes: dict[int, int], packs: dict[int, torch.Tensor]):
    plain = module.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.dim() else 0
        pack = routes.get(rows)
        if pack is None or torch.is_grad_enabled() or x.dtype != torch.float32:
            return plain(x)
        flat = x.reshape(rows, x.shape[-1])
        if pack > rows:  # padded up to the pack's row count; the padding rows' outputs are dropped
            flat = torch.cat([flat, flat.new_zeros(pack - rows, flat.shape[1])])
        out = torch.ops.mkl._mkl_linear(flat, packs[pack], module.weight, module.bias, pack)[:rows]
        return out.reshape(*x.shape[:-1], out.shape[-1])

    return forward


def verifier_forward_timer(verifier, context_length: int = 128) -> Callable[[int], float]:
    """`time_forward` for a DecodingVerifier: seconds of a forward of `rows` new tokens after `context_length`
    cached ones (cropped back after each). Which token ids does not change the cost."""
    verifier.reset()
    verifier.forward(torch.zeros(context_length, dtype=torch.long, device=verifier.device))
    length = verifier.length

    def time_forward(rows: int) -> float:
        tokens = torch.zeros(rows, dtype=torch.long, device=verifier.device)
        started = time.perf_counter()
        verifier.forward(tokens)
        seconds = time.perf_counter() - started
        verifier.crop(length)
        return seconds

    return time_forward
