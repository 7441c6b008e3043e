"""Benchmarks of speculative decoding: raw counts and times out, every figure derived from them.

For each prompt set the verifier decodes alone (baseline) and with the draft for each k, prompt by
prompt in the same run, interleaved so slow drift of a shared machine hits all settings alike.
A run keeps the accepted-length histogram and the seconds per phase; `derive` computes τ,
per-position acceptance, costs, measured and predicted speedup, and the sanity flags.

The in-run costs cannot test the engine: a prediction from them differs from the measured speedup
only through E(α) vs τ. So each set also times the costs in isolation (`measure_isolated_costs`:
verifier forwards of 1..n tokens and one draft step, each alone with the caches holding a prompt
and half its answer), in passes spread between the prompts so they see the same machine as the
generations, and predicts from their medians; measured / predicted is the engine's efficiency.
"""

from __future__ import annotations

import datetime as _dt
import platform
import statistics
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable

import torch

import libspec
from libspec.bench.decoding import Generation, Proposer, DecodingVerifier, Timer, autoregressive_generate, speculative_generate
from libspec.bench.journal import BenchJournal, MeasuredPrompt
from libspec.bench.prompts import PromptSet, encode_prompt
from libspec.errors import SpecError

MIN_TOKENS_FOR_STABLE_FIGURES = 200
MIN_ROUNDS_FOR_STABLE_FIGURES = 50
MIN_ISOLATED_FORWARD_TOKENS = 8  # v for k+1 = 2..8 is always measured, whatever k the run covers


@dataclass(frozen=True)
class BenchSettings:
    """How generations are run; recorded in the report."""

    k_values: tuple[int, ...]
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    cost_repeats: int = 12  # isolated-cost passes per prompt set, spread over its prompts (medians are used); 0 = none


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


@dataclass
class IsolatedCosts:
    """Raw isolated timings of a prompt set, pass by pass (each pass: every forward size and one draft step)."""

    with_draft: bool
    context_tokens: list[int] = field(default_factory=list)  # cached tokens during each pass
    forward_s: dict[str, list[float]] = field(default_factory=dict)  # tokens per forward -> seconds of each pass
    draft_step_s: list[float] = field(default_factory=list)

    @property
    def passes(self) -> int:
        return len(self.context_tokens)

    def add(self, measured: dict | None) -> None:
        if measured is None:
            return
        self.context_tokens += measured["context_tokens"]
        for n, seconds in measured["forward_s"].items():
            self.forward_s.setdefault(n, []).extend(seconds)
        self.draft_step_s += measured["draft_step_s"] or []

    def to_dict(self) -> dict:
        draft_step_s = self.draft_step_s if self.with_draft else None
        return {"context_tokens": self.context_tokens, "forward_s": self.forward_s, "draft_step_s": draft_step_s}


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """Leviathan et al. eq. 1: E = (1 - α^(k+1)) / (1 - α) tokens per verifier step."""
    return float(k + 1) if alpha >= 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def acceptance_needed(speedup: float, k: int, c: float, v: float) -> float | None:
    """The acceptance rate α at which S = E(α) / (k·c + v) reaches `speedup`: what a draft would need
    for a target on an engine with these isolated costs. None when even α = 1 (E = k + 1) falls short."""
    needed = speedup * (k * c + v)
    if needed > k + 1:
        return None
    low, high = 0.0, 1.0  # E(α) increases with α: bisect
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if expected_tokens_per_step(middle, k) < needed else (low, middle)
    return high


def _ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None (JSON null) when undefined."""
    return numerator / denominator if denominator else None


def derive(k: int, run: dict, baseline: dict, greedy: bool, isolated_costs: dict | None = None) -> dict:
    """τ, acceptance, costs, speedups and sanity flags of a run, from its raw counts only.

    Costs are relative to one plain decoding step t1 of the baseline: c = draft time per drafted
    token / t1, v = verify time per round / t1, o = the rest of a round / t1. The prediction is
    S = E(α) / (k·c + v + o) with α the pooled conditional acceptance rate. With the set's
    `isolated_costs` (older reports have none) the row also gets `isolated`: the prediction from them.
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
    if isolated_costs is not None:
        derived["isolated"] = isolated_prediction(k, alpha, derived["speedup"], isolated_cost_figures(isolated_costs))
    derived["flags"] = sanity_flags(k, derived, run, greedy)
    return derived


def isolated_cost_figures(isolated_costs: dict) -> dict:
    """Medians of the isolated timings: the 1-token step in seconds, and c and v (forward size -> v) relative to it."""
    medians = {int(n): statistics.median(samples) for n, samples in isolated_costs["forward_s"].items() if samples}
    step_1_s = medians.get(1)
    draft_step_s = isolated_costs["draft_step_s"]
    return {
        "step_1_s": step_1_s,
        "draft_cost_c": _ratio(statistics.median(draft_step_s), step_1_s) if draft_step_s else None,
        "verify_cost_v": {str(n): _ratio(seconds, step_1_s) for n, seconds in sorted(medians.items()) if n > 1},
    }


def isolated_prediction(k: int, alpha: float | None, speedup: float | None, figures: dict) -> dict:
    """S = E(α) / (k·c + v) from the isolated costs (v of a (k+1)-token forward), and measured / predicted."""
    c, v = figures["draft_cost_c"], figures["verify_cost_v"].get(str(k + 1))
    predicted = None if None in (alpha, c, v) else expected_tokens_per_step(alpha, k) / (k * c + v)
    return {
        "draft_cost_c": c,
        "verify_cost_v": v,
        "predicted_speedup": predicted,
        "efficiency": None if speedup is None else _ratio(speedup, predicted),
    }


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
    journal: BenchJournal | None = None,
) -> dict:
    """Baseline and every k on one prompt set, with the isolated costs timed between prompts; the set's report entry.

    Prompts with a `category` are also counted in their category's totals (the entry's `categories`).
    With a `journal`, prompts an earlier attempt measured are replayed from it and each new one is appended.
    """
    greedy = settings.temperature == 0
    k_values = settings.k_values if proposer else ()
    totals = _SetTotals(k_values)
    by_category: dict[str, _SetTotals] = {}
    costs = IsolatedCosts(proposer is not None)
    warmed_up, pace = False, _Pace(len(prompt_set.items))
    for index, item in enumerate(prompt_set.items):
        measured = journal.get(prompt_set.name, index) if journal else None
        if measured is not None and set(measured.runs) != set(k_values):
            raise SpecError(f"{journal.path}: {prompt_set.name} prompt {index} holds k = {sorted(measured.runs)}, the run measures k = {list(k_values)}; the journal is damaged: delete it to start afresh")
        if measured is None:
            if not warmed_up:
                _warm_up(verifier, proposer, encode_prompt(tokenizer, prompt_set.items[0]).to(verifier.device), settings, eos_ids)
                warmed_up = True
            progress(f"{prompt_set.name}: prompt {index + 1}/{len(prompt_set.items)}{pace.remaining(index)}")
            measured = _measure_prompt(verifier, proposer, tokenizer, item, index, len(prompt_set.items), settings, eos_ids)
            if journal:
                journal.record(prompt_set.name, index, measured)
        counted_in = [totals]
        if "category" in item:
            counted_in.append(by_category.setdefault(item["category"], _SetTotals(k_values)))
        for set_totals in counted_in:
            set_totals.add(index, measured, greedy)
        costs.add(measured.costs)
    raw_costs = costs.to_dict() if costs.passes else None
    entry = {"name": prompt_set.name, "path": prompt_set.path, **totals.report(greedy, raw_costs)}
    if raw_costs is not None:
        entry["isolated_costs"] = {**raw_costs, "derived": isolated_cost_figures(raw_costs)}
    if by_category:
        entry["categories"] = [{"name": name, **category.report(greedy, raw_costs)} for name, category in by_category.items()]
    return entry


class _Pace:
    """The time left in a set, from the prompts measured so far in this attempt (replayed ones cost nothing)."""

    def __init__(self, num_prompts: int):
        self.num_prompts, self.started, self.first_index = num_prompts, None, None

    def remaining(self, index: int) -> str:
        now = time.monotonic()
        if self.started is None:
            self.started, self.first_index = now, index
            return ""
        per_prompt = (now - self.started) / (index - self.first_index)
        minutes = round(per_prompt * (self.num_prompts - index) / 60)
        return f" (~{minutes // 60} h {minutes % 60:02d} min left in this set at {per_prompt:.0f} s a prompt)"


def _measure_prompt(
    verifier: DecodingVerifier, proposer: Proposer | None, tokenizer, item: dict, index: int, num_prompts: int, settings: BenchSettings, eos_ids: set[int]
) -> MeasuredPrompt:
    """The baseline and each k on one prompt, then the isolated-cost passes that fall after it.

    Sampling draws from a generator seeded per prompt, so a run resumed from its journal samples
    exactly what an uninterrupted one would have."""
    generator = torch.Generator(device=verifier.device).manual_seed((settings.seed << 20) + index)
    if "follow_up" in item:  # measure the second turn, after the verifier's own first answer
        item = with_first_answer(verifier, tokenizer, item, settings.max_new_tokens, eos_ids)
    prompt = encode_prompt(tokenizer, item).to(verifier.device)
    reference = autoregressive_generate(verifier, prompt, settings.max_new_tokens, eos_ids, settings.temperature, generator)
    runs = {
        k: speculative_generate(verifier, proposer, prompt, k, settings.max_new_tokens, eos_ids, settings.temperature, generator)
        for k in (settings.k_values if proposer else ())
    }
    passes = cost_passes_after(index, num_prompts, settings.cost_repeats)
    return MeasuredPrompt(reference, runs, _isolated_passes(verifier, proposer, answered_context(prompt, reference.tokens), passes, settings))


def _warm_up(verifier: DecodingVerifier, proposer: Proposer | None, prompt: torch.Tensor, settings: BenchSettings, eos_ids: set[int]) -> None:
    """One untimed pass of each kind: the first calls pay for allocations and lazy initialisation."""
    reference = autoregressive_generate(verifier, prompt, 8, eos_ids)
    if proposer:
        speculative_generate(verifier, proposer, prompt, max(settings.k_values), 8, eos_ids)
    _isolated_passes(verifier, proposer, answered_context(prompt, reference.tokens), 1, settings)


def cost_passes_after(index: int, num_prompts: int, total_passes: int) -> int:
    """How many isolated-cost passes follow prompt `index`: `total_passes` spread evenly over the run,
    so the isolated timings see the same machine (load, clocks) as the generations."""
    return (index + 1) * total_passes // num_prompts - index * total_passes // num_prompts


def answered_context(prompt: torch.Tensor, answer: list[int]) -> torch.Tensor:
    """A prompt followed by the first half of the verifier's answer to it: the context halfway through its generation."""
    return torch.cat([prompt, torch.tensor(answer[: len(answer) // 2], dtype=prompt.dtype, device=prompt.device)])


def _isolated_passes(verifier: DecodingVerifier, proposer: Proposer | None, context: torch.Tensor, passes: int, settings: BenchSettings) -> dict | None:
    """`passes` isolated timings at `context` (None for none, or for a context too short to split)."""
    if passes < 1 or len(context) < 3:
        return None
    largest = max(MIN_ISOLATED_FORWARD_TOKENS, max(settings.k_values) + 1)
    generator = torch.Generator(device=verifier.device).manual_seed(settings.seed)  # its own: the run's sampling stays as without
    return measure_isolated_costs(verifier, proposer, context, largest, passes, settings.temperature, generator)


@torch.no_grad()
def measure_isolated_costs(
    verifier: DecodingVerifier,
    proposer: Proposer | None,
    context: torch.Tensor,
    largest_forward: int,
    repeats: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict:
    """Seconds of verifier forwards of 1..largest_forward tokens and of one draft step, each alone after `context`.

    The engine's own calls (DecodingVerifier.forward, Proposer.commit + propose), with the caches
    already holding the context and cropped back after each forward; the sizes are interleaved
    within each repeat so that drift on a shared machine hits them all alike.
    """
    verifier.reset()
    _, aux = verifier.forward(context)
    length = verifier.length
    forward_s: dict[str, list[float]] = {str(n): [] for n in range(1, largest_forward + 1)}
    draft_step_s: list[float] | None = [] if proposer else None
    for _ in range(repeats):
        for n in range(1, largest_forward + 1):
            tokens = context[-1:].repeat(n)  # which token ids does not change the cost
            forward_s[str(n)].append(_seconds(verifier.device, lambda: verifier.forward(tokens)))
            verifier.crop(length)
        if proposer:
            draft_step_s.append(_draft_step_seconds(proposer, context, aux, temperature, generator, verifier.device))
    verifier.reset()
    return {"context_tokens": [length] * repeats, "forward_s": forward_s, "draft_step_s": draft_step_s}


def _draft_step_seconds(proposer: Proposer, context: torch.Tensor, aux: torch.Tensor | None, temperature: float, generator, device) -> float:
    """One proposer step with a warm cache: the context but its last token is started (untimed); then the
    last token is committed and one token drafted, as a round of the engine does with k = 1."""
    proposer.start(context[:-1], None if aux is None else aux[:-2])
    last_aux = None if aux is None else aux[-2:-1]  # the verifier state before the last token

    def step() -> None:
        proposer.commit(context[-1:], last_aux)
        proposer.propose(1, temperature, generator)

    return _seconds(device, step)


def _seconds(device: torch.device, action: Callable[[], object]) -> float:
    """Wall-clock seconds of one call (the engine's Timer, so CUDA is synchronised the same way)."""
    timer = Timer(device)
    with timer.measure("call"):
        action()
    return timer.seconds["call"]


def with_first_answer(verifier: DecodingVerifier, tokenizer, item: dict, max_new_tokens: int, eos_ids: set[int]) -> dict:
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

    def add(self, index: int, measured: MeasuredPrompt, greedy: bool) -> None:
        """Count one prompt; under greedy decoding, any k whose tokens differ from the baseline's is a mismatch."""
        self.baseline.add(measured.baseline, None)
        for k, totals in self.runs.items():
            result = measured.runs[k]
            totals.add(result, k)
            if greedy and result.tokens != measured.baseline.tokens:
                totals.mismatched_prompts.append(index)

    def report(self, greedy: bool, isolated_costs: dict | None) -> dict:
        baseline = self.baseline.to_dict()
        rows = [
            {"k": k, **totals.to_dict(), "derived": derive(k, totals.to_dict(), baseline, greedy, isolated_costs)}
            for k, totals in self.runs.items()
        ]
        return {"num_prompts": self.baseline.prompts, "baseline": baseline, "runs": rows, "best_k": best_k(rows)}


def hardware_description(device: torch.device) -> str:
    """What the numbers were measured on, in words."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    capability = torch.backends.cpu.get_cpu_capability()  # AVX2 or AVX512: the costs differ by kernel as much as by clock
    return f"{_cpu_model() or platform.machine() + ' CPU'} ({capability}), {torch.get_num_threads()} torch thread(s)"


def _cpu_model() -> str | None:
    """The CPU's marketing name on Linux (platform.processor() is empty there), else None."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


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
            "cost_repeats": settings.cost_repeats,
        },
        "verifier": verifier_info,
        "speculator": speculator_info,
    }
