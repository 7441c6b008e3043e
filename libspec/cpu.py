"""What this CPU computes fast: bf16 or fp32 matrix products, decided by a quick measurement.

CPUs differ by 300x here: with AMX or AVX512-BF16, bf16 matmuls run ~6x faster than fp32; on an
AVX2-only CPU torch takes a slow path and they run ~50x slower. `get_cpu_capability()` does not
tell these apart (AMX machines report "AVX512"), so we time both on a product of the size the
built-in verifier's training uses, once per process.
"""

from __future__ import annotations

import functools
import time

import torch

ROWS, INNER, COLUMNS = 512, 256, 768  # a quarter of one training batch's [2048 x 256] x [256 x 768]
BF16_MIN_SPEEDUP = 1.2  # below this, fp32's exactness is worth more than bf16's speed


@functools.cache
def bf16_speedup(threads: int) -> float:
    """fp32 time over bf16 time for one matmul on `threads` torch threads (> 1: bf16 is faster)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(ROWS, INNER), torch.randn(INNER, COLUMNS)
        return _seconds(a, b) / _seconds(a.bfloat16(), b.bfloat16())
    finally:
        torch.set_num_threads(previous)


def _seconds(a: torch.Tensor, b: torch.Tensor, repeats: int = 3) -> float:
    """The fastest of a few timed products (after one warm-up): the CPU's speed, not the machine's load."""
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return best


def training_precision(threads: int) -> str:
    """"bf16" where bf16 matmuls are measurably faster on this CPU, else "fp32"."""
    return "bf16" if bf16_speedup(threads) >= BF16_MIN_SPEEDUP else "fp32"


def describe(threads: int) -> str:
    """One line for the user: what was chosen and why."""
    speedup = bf16_speedup(threads)
    return (
        f"training precision {training_precision(threads)}: bf16 matmuls measured {speedup:.2f}x the speed of fp32 "
        f"on this CPU ({torch.backends.cpu.get_cpu_capability()}, {threads} thread(s))"
    )
