"""Benchmarks of speculative decoding: raw counts and times out, every figure derived from them.

For each prompt set the verifier decodes alone (baseline) and with the draft for each k, prompt by
prompt in the same run, interleaved so slow drift of a shared machine hits all settings alike.
A run keeps the accepted-length histogram and the seconds per phase; `derive` computes τ,
per-position acceptance, costs, measured and predicted speedup, and the sanity flags.
"""

from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import dataclass, field
from typing import Callable

import torch

import libspec
from libspec.bench.decoding import Generation, Proposer, DecodingVerifier, autoregressive_generate, speculative_generate
from libspec.bench.prompts import PromptSet, encode_prompt

MIN_TOKENS_FOR_STABLE_FIGURES = 200
MIN_ROUNDS_FOR_STABLE_FIGURES = 50


@dataclass(frozen=True)
class BenchSettings:
    """How generations are run; recorded in the report."""

    k_values: tuple[int, ...]
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0


@dataclass
class RunTotals:
    """Raw totals of one setting (baseline or one k) over a prompt set."""

    histogram: list[int] = field(default_factory=list)  # rounds that accepted exactly n drafts, n = 0..k
    tokens: int = 0  # generated tokens
    prompts: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    mismatched_prompts: list[int] = field(default_factory=list)

    def add(self, generation: Generation, k: int | None) -> None:
        self.tokens += len(generation.tokens)
        self.prompts += 1
        for phase, seconds in generation.seconds.items():
            self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds
        for phase, count in generation.calls.items():
            self.calls[phase] = self.calls.get(phase, 0) + count
        if k is not None:
            if not self.histogram:
                self.histogram = [0] * (k + 1)
            for accepted in generation.accepted_per_round:
                self.histogram[accepted] += 1

    def decode_seconds(self) -> float:
        return sum(s for phase, s in self.seconds.items() if phase != "prefill")

    def to_dict(self) -> dict:
        return {
            "histogram": self.histogram,
            "tokens": self.tokens,
            "prompts": self.prompts,
            "seconds": self.seconds,
            "calls": self.calls,
            "mismatched_prompts": self.mismatched_prompts,
        }


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """Leviathan et al. eq. 1: E = (1 - α^(k+1)) / (1 - α) tokens per verifier step."""
    return float(k + 1) if alpha >= 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def _ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None (JSON null) when undefined."""
    return numerator / denominator if denominator else None


def derive(k: int, run: dict, baseline: dict, greedy: bool) -> dict:
    """τ, acceptance, costs, speedups and sanity flags of a run, from its raw counts only.

    Costs are relative to one plain decoding step t1 of the baseline: c = draft time per drafted
    token / t1, v = verify time per round / t1, o = the rest of a round / t1. The prediction is
    S = E(α) / (k·c + v + o) with α the pooled conditional acceptance rate.
    """
    histogram = run["histogram"] or [0] * (k + 1)
    rounds = sum(histogram)
    accepted = sum(n * count for n, count in enumerate(histogram))
    attempts = sum(count * (n + 1 if n < k else k) for n, count in enumerate(histogram))
    alpha = _ratio(accepted, attempts)
    t1 = _ratio(baseline["seconds"].get("decode", 0.0), baseline["calls"].get("decode", 0))
    seconds = run["seconds"]
    per_round = {phase: _ratio(_ratio(seconds.get(phase, 0.0), rounds) or 0.0, t1 or 0.0) for phase in ("draft", "verify", "accept")}
    spec_tokens = run["tokens"] - run["prompts"]  # the first token of each prompt comes from the prefill
    spec_per_token = _ratio(sum(seconds.get(p, 0.0) for p in ("draft", "verify", "accept")), spec_tokens)
    predicted = None
    if alpha is not None and None not in per_round.values():
        predicted = expected_tokens_per_step(alpha, k) / (per_round["draft"] + per_round["verify"] + per_round["accept"])
    derived = {
        "tau": None if not rounds else 1.0 + accepted / rounds,
        "per_position_acceptance": [_ratio(sum(histogram[j:]), rounds) for j in range(1, k + 1)],
        "alpha": alpha,
        "rounds": rounds,
        "draft_cost_c": None if per_round["draft"] is None else per_round["draft"] / k,
        "verify_cost_v": per_round["verify"],
        "overhead_o": per_round["accept"],
        "speedup": _ratio(t1 or 0.0, spec_per_token or 0.0),
        "predicted_speedup": predicted,
        "tokens_per_s": _ratio(1.0, spec_per_token or 0.0),
        "baseline_tokens_per_s": _ratio(1.0, t1 or 0.0),
        "lossless": (not run["mismatched_prompts"]) if greedy else None,
    }
    derived["flags"] = sanity_flags(k, derived, run, greedy)
    return derived


def sanity_flags(k: int, derived: dict, run: dict, greedy: bool) -> list[str]:
    """Why a row cannot be trusted as printed; empty when nothing is wrong."""
    flags = []
    if None in (derived["tau"], derived["speedup"], derived["alpha"]):
        flags.append("no complete verification round or no baseline timing: figures undefined")
        return flags
    if derived["speedup"] > derived["tau"]:
        flags.append(f"speedup {derived['speedup']:.2f} > τ {derived['tau']:.2f}: impossible (verifying k+1 tokens costs at least one step); timing is broken")
    if derived["tau"] > k + 1:
        flags.append(f"τ {derived['tau']:.2f} > k+1 = {k + 1}: impossible; acceptance is miscounted")
    if derived["alpha"] > 1 or any(r is not None and r > 1 for r in derived["per_position_acceptance"]):
        flags.append("acceptance above 1: impossible; acceptance is miscounted")
    if greedy and run["mismatched_prompts"]:
        flags.append(f"greedy output differs from the verifier's own on prompts {run['mismatched_prompts']}: not lossless")
    if run["tokens"] < MIN_TOKENS_FOR_STABLE_FIGURES or derived["rounds"] < MIN_ROUNDS_FOR_STABLE_FIGURES:
        flags.append(f"only {run['tokens']} tokens / {derived['rounds']} rounds: too few for stable figures")
    return flags


def best_k(rows: list[dict]) -> int | None:
    """The k with the highest measured speedup among rows without flags (or among all if every row is flagged)."""
    clean = [r for r in rows if not r["derived"]["flags"]] or rows
    clean = [r for r in clean if r["derived"]["speedup"] is not None]
    return max(clean, key=lambda r: r["derived"]["speedup"])["k"] if clean else None


def bench_prompt_set(
    verifier: DecodingVerifier,
    proposer: Proposer | None,
    tokenizer,
    prompt_set: PromptSet,
    settings: BenchSettings,
    eos_ids: set[int],
    progress: Callable[[str], None] = lambda message: None,
) -> dict:
    """Baseline and every k on one prompt set; returns the report entry for the set.

    Prompts with a `category` are also counted in their category's totals (the entry's `categories`).
    """
    greedy = settings.temperature == 0
    generator = torch.Generator(device=verifier.device).manual_seed(settings.seed)
    k_values = settings.k_values if proposer else ()
    totals = _SetTotals(k_values)
    by_category: dict[str, _SetTotals] = {}
    # One untimed generation first: the first calls pay for allocations and lazy initialisation.
    warmup = encode_prompt(tokenizer, prompt_set.items[0]).to(verifier.device)
    autoregressive_generate(verifier, warmup, 8, eos_ids)
    if proposer:
        speculative_generate(verifier, proposer, warmup, max(settings.k_values), 8, eos_ids)
    for index, item in enumerate(prompt_set.items):
        progress(f"{prompt_set.name}: prompt {index + 1}/{len(prompt_set.items)}")
        if "follow_up" in item:  # measure the second turn, after the verifier's own first answer
            item = with_first_answer(verifier, tokenizer, item, settings.max_new_tokens, eos_ids)
        prompt = encode_prompt(tokenizer, item).to(verifier.device)
        counted_in = [totals]
        if "category" in item:
            counted_in.append(by_category.setdefault(item["category"], _SetTotals(k_values)))
        reference = autoregressive_generate(verifier, prompt, settings.max_new_tokens, eos_ids, settings.temperature, generator)
        for set_totals in counted_in:
            set_totals.baseline.add(reference, None)
        for k in k_values:
            result = speculative_generate(verifier, proposer, prompt, k, settings.max_new_tokens, eos_ids, settings.temperature, generator)
            for set_totals in counted_in:
                set_totals.runs[k].add(result, k)
                if greedy and result.tokens != reference.tokens:
                    set_totals.runs[k].mismatched_prompts.append(index)
    entry = {"name": prompt_set.name, "path": prompt_set.path, **totals.report(greedy)}
    if by_category:
        entry["categories"] = [{"name": name, **category.report(greedy)} for name, category in by_category.items()]
    return entry


def with_first_answer(verifier: Verifier, tokenizer, item: dict, max_new_tokens: int, eos_ids: set[int]) -> dict:
    """A two-turn item as its conversation up to the second question, the first answer being the verifier's own (greedy)."""
    prompt = encode_prompt(tokenizer, item).to(verifier.device)
    answer = tokenizer.decode(autoregressive_generate(verifier, prompt, max_new_tokens, eos_ids).tokens, skip_special_tokens=True)
    messages = [*item["messages"], {"role": "assistant", "content": answer.strip()}, {"role": "user", "content": item["follow_up"]}]
    return {**{key: value for key, value in item.items() if key != "follow_up"}, "messages": messages}


class _SetTotals:
    """The baseline's and each k's totals over a prompt set (or over one category of it)."""

    def __init__(self, k_values: tuple[int, ...]):
        self.baseline = RunTotals()
        self.runs = {k: RunTotals() for k in k_values}

    def report(self, greedy: bool) -> dict:
        baseline = self.baseline.to_dict()
        rows = [{"k": k, **totals.to_dict(), "derived": derive(k, totals.to_dict(), baseline, greedy)} for k, totals in self.runs.items()]
        return {"num_prompts": self.baseline.prompts, "baseline": baseline, "runs": rows, "best_k": best_k(rows)}


def hardware_description(device: torch.device) -> str:
    """What the numbers were measured on, in words."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch thread(s)"


def report_header(settings: BenchSettings, device: torch.device, dtype: torch.dtype, verifier_info: dict, speculator_info: dict | None, command: str) -> dict:
    """The report's provenance fields (SPEC.md, "Bench reports")."""
    return {
        "format": "spec-tools/bench-report",
        "format_version": libspec.FORMAT_VERSION,
        "created_by": {"tool": "spec-bench", "version": libspec.__version__},
        "created_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "engine": "spec-tools offline engine (PyTorch, batch 1)",
        "device": device.type,
        "hardware": hardware_description(device),
        "dtype": str(dtype).removeprefix("torch."),
        "torch_version": torch.__version__,
        "settings": {
            "k_values": list(settings.k_values),
            "max_new_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "seed": settings.seed,
        },
        "verifier": verifier_info,
        "speculator": speculator_info,
    }
