"""`--check-acceptance`: a quick τ of the converted draft with spec-bench's engine (libspec.bench.measure),
when the verifier's weights and tokenizer are local. A handful of short prompts: enough to tell a
working draft (τ well above 1) from a broken one (τ ≈ 1), not a benchmark."""

from __future__ import annotations

from pathlib import Path

import torch

from libspec.verifier import VerifierConfig
from libspec.errors import SpecError

PROMPTS = (
    "Write a short Python function that returns the n-th Fibonacci number.",
    "Explain in two sentences why the sky is blue.",
    "List three prime numbers larger than 100 and say how you know they are prime.",
    "Summarise the rules of chess for a child.",
)
NEW_TOKENS = 48


def quick_acceptance(checkpoint: Path, verifier: VerifierConfig, k: int) -> dict:
    """{"tau", "k", "prompts", "lossless", ...} or {"skipped": why}."""
    from libspec.algorithms import load_proposer
    from libspec.bench.measure import BenchSettings, bench_prompt_set
    from libspec.bench.decoding import DecodingVerifier
    from libspec.verifier import eos_token_ids, load_causal_lm, load_tokenizer
    from libspec.bench.prompts import PromptSet

    if not verifier.weight_files:
        return {"skipped": f"the verifier's weights are not local ({verifier.name_or_path})"}
    device = torch.device("cpu")
    try:
        model = load_causal_lm(str(verifier.directory), device, torch.float32)
        tokenizer = load_tokenizer(str(verifier.directory))
        proposer = load_proposer(checkpoint, model)
    except SpecError as error:
        return {"skipped": str(error).strip().splitlines()[0]}
    prompts = PromptSet("spec-convert quick check", "(built in)", [{"prompt": p} for p in PROMPTS])
    settings = BenchSettings((k,), max_new_tokens=NEW_TOKENS)
    result = bench_prompt_set(DecodingVerifier(model, proposer.aux_layer_ids), proposer, tokenizer, prompts, settings, eos_token_ids(model, tokenizer))
    row = result["runs"][0]
    return {
        "tau": row["derived"]["tau"],
        "k": k,
        "prompts": len(PROMPTS),
        "new_tokens_per_prompt": NEW_TOKENS,
        "histogram": row["histogram"],
        "lossless": row["derived"]["lossless"],
        "engine": "spec-bench's offline engine (libspec.bench.measure), CPU float32, greedy",
    }
