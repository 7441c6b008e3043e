"""Speculative decoding in plain PyTorch: a verifier (any HF causal LM) plus a draft proposer.

Each round the proposer drafts k tokens, the verifier scores the current token and the k drafts
in one forward pass, and we keep exactly what the verifier would have produced itself: greedy
verification at temperature 0, standard speculative sampling (accept with min(1, p/q), resample
from max(p - q, 0)) above it. Every generation records how many drafts each round accepted;
measurements derive from those raw counts (libspec/bench/measure.py).
"""

from __future__ import annotations

import inspect

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from transformers import DynamicCache

from libspec.algorithms.sampling import temperature_probs


@dataclass
class Timer:
    """Wall-clock seconds per phase; synchronises CUDA so the split is honest on a GPU."""

    device: torch.device
    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def measure(self, phase: str):
        return _Phase(self, phase)


class _Phase:
    def __init__(self, timer: Timer, phase: str):
        self.timer, self.phase = timer, phase

    def __enter__(self):
        if self.timer.device.type == "cuda":
            torch.cuda.synchronize(self.timer.device)
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        if self.timer.device.type == "cuda":
            torch.cuda.synchronize(self.timer.device)
        elapsed = time.perf_counter() - self.start
        self.timer.seconds[self.phase] = self.timer.seconds.get(self.phase, 0.0) + elapsed
        self.timer.calls[self.phase] = self.timer.calls.get(self.phase, 0) + 1


class DecodingVerifier:
    """An HF causal LM with a KV cache that also returns the hidden states at given layer ids.

    Layer id k (SPEC.md §4) is captured as the input of decoder layer k, and id n as the input of
    the final norm — generic forward pre-hooks, no per-family code.
    """

    def __init__(self, model, layer_ids: list[int] = ()):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        decoder = model.get_decoder()
        layers = decoder.layers
        self.layer_ids = sorted(layer_ids)
        self._captured: dict[int, torch.Tensor] = {}
        self._hooks = []
        for layer_id in self.layer_ids:
            module = decoder.norm if layer_id == len(layers) else layers[layer_id]
            self._hooks.append(module.register_forward_pre_hook(self._capture(layer_id), with_kwargs=True))
        self.cache = DynamicCache()
        # transformers >= 5.2x names the KV cache argument `cache` and warns on every call with the old name.
        self._cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def _capture(self, layer_id: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self._captured[layer_id] = hidden

        return hook

    @property
    def length(self) -> int:
        return self.cache.get_seq_length()

    def reset(self) -> None:
        self.cache = DynamicCache()

    @torch.no_grad()
    def forward(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run new tokens [T] after the cached ones: logits [T, V] and aux hidden [T, len(ids)*H] (or None)."""
        start = self.length
        positions = torch.arange(start, start + len(token_ids), device=self.device)
        self._captured.clear()
        out = self.model(
            input_ids=token_ids[None], use_cache=True, position_ids=positions[None], logits_to_keep=0, **{self._cache_argument: self.cache}
        )
        aux = torch.cat([self._captured[i][0] for i in self.layer_ids], dim=-1) if self.layer_ids else None
        return out.logits[0].float(), aux

    def crop(self, length: int) -> None:
        """Forget cached positions from `length` on (rejected drafts)."""
        drop = self.length - length
        if drop > 0:
            self.cache.crop(-drop)


class Proposer(Protocol):
    """A draft algorithm as the decoding loop sees it."""

    aux_layer_ids: list[int]  # verifier layers whose hidden states it reads (may be empty)

    def start(self, context: torch.Tensor, aux: torch.Tensor | None) -> None:
        """After the prompt: `context` = prompt + first generated token; aux of the prompt positions."""

    def propose(self, k: int, temperature: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """k draft tokens (verifier ids) and, when sampling, their probabilities [k, V] over the verifier vocab."""

    def commit(self, accepted: torch.Tensor, aux: torch.Tensor | None) -> None:
        """The round's new tokens (accepted drafts + the verifier's token) and the verifier aux of the positions before each."""


@dataclass
class Generation:
    """The tokens one prompt produced and the raw counts behind every figure about them."""

    tokens: list[int]
    accepted_per_round: list[int] = field(default_factory=list)  # drafts accepted in each verification round
    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)


# Called as soon as tokens are decided, outside the timed phases: (the tokens kept this step, drafts
# the verifier accepted in it, or None for a step without drafts). A server streams from it; an
# exception it raises (a client gone) ends the generation.
OnTokens = Callable[[list[int], "int | None"], None]


def _extend(tokens: list[int], new: list[int], max_new_tokens: int, eos_ids: set[int]) -> bool:
    """Append new tokens up to the first EOS (kept) or the budget; True when generation is over."""
    for token in new:
        tokens.append(token)
        if token in eos_ids or len(tokens) >= max_new_tokens:
            return True
    return False


def _sample(logits: torch.Tensor, temperature: float, generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    return torch.multinomial(temperature_probs(logits, temperature), 1, generator=generator)[..., 0]


def autoregressive_generate(
    verifier: DecodingVerifier,
    prompt: torch.Tensor,
    max_new_tokens: int,
    eos_ids: set[int],
    temperature: float = 0.0,
    generator=None,
    on_tokens: OnTokens | None = None,
) -> Generation:
    """Plain decoding, one verifier forward per token: the baseline and the reference output."""
    timer = Timer(verifier.device)
    verifier.reset()
    with timer.measure("prefill"):
        logits, _ = verifier.forward(prompt)
    tokens: list[int] = []
    token = _sample(logits[-1], temperature, generator)
    while True:
        done = _extend(tokens, [int(token)], max_new_tokens, eos_ids)
        if on_tokens:
            on_tokens(tokens[-1:], None)
        if done:
            break
        with timer.measure("decode"):
            logits, _ = verifier.forward(token.view(1))
        token = _sample(logits[-1], temperature, generator)
    return Generation(tokens, seconds=timer.seconds, calls=timer.calls)


def speculative_generate(
    verifier: DecodingVerifier,
    proposer: Proposer,
    prompt: torch.Tensor,
    k: int,
    max_new_tokens: int,
    eos_ids: set[int],
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    on_tokens: OnTokens | None = None,
) -> Generation:
    """Generate with k drafted tokens per verifier forward; the output is what the verifier alone gives."""
    timer = Timer(verifier.device)
    verifier.reset()
    with timer.measure("prefill"):
        logits, aux = verifier.forward(prompt)
        token = _sample(logits[-1], temperature, generator)
        proposer.start(torch.cat([prompt, token.view(1)]), aux)
    tokens: list[int] = []
    accepted_per_round: list[int] = []
    done = _extend(tokens, [int(token)], max_new_tokens, eos_ids)
    if on_tokens:
        on_tokens(tokens[:], None)
    while not done:
        with timer.measure("draft"):
            drafts, draft_probs = proposer.propose(k, temperature, generator)
        with timer.measure("verify"):
            logits, aux = verifier.forward(torch.cat([token.view(1), drafts]))
        kept_from = len(tokens)
        with timer.measure("accept"):
            accepted, token = _accept(drafts, draft_probs, logits, temperature, generator)
            accepted_per_round.append(accepted)
            verifier.crop(verifier.length - (k - accepted))
            new_tokens = torch.cat([drafts[:accepted], token.view(1)])
            done = _extend(tokens, new_tokens.tolist(), max_new_tokens, eos_ids)
        if on_tokens:
            on_tokens(tokens[kept_from:], accepted)
        if not done:
            with timer.measure("draft"):
                proposer.commit(new_tokens, None if aux is None else aux[: accepted + 1])
    return Generation(tokens, accepted_per_round, timer.seconds, timer.calls)


def _accept(drafts, draft_probs, logits, temperature, generator) -> tuple[int, torch.Tensor]:
    """How many drafts the verifier keeps, and its own next token after them.

    Greedy: drafts are kept while they equal the verifier's argmax. Sampling (Leviathan et al.):
    keep draft x with probability min(1, p(x)/q(x)); on the first rejection sample from the
    normalised max(p - q, 0); if all are kept, sample the bonus token from p.
    """
    k = len(drafts)
    if temperature == 0:
        choices = logits.argmax(dim=-1)  # [k+1]
        matches = (choices[:k] == drafts).long()
        accepted = int(matches.cumprod(0).sum())
        return accepted, choices[accepted]
    target = temperature_probs(logits, temperature)  # [k+1, V]
    for i in range(k):
        p, q = target[i, drafts[i]], draft_probs[i, drafts[i]]
        if torch.rand((), generator=generator, device=p.device) * q <= p:  # u < p/q without dividing
            continue
        residual = (target[i] - draft_probs[i]).clamp(min=0)
        return i, torch.multinomial(residual / residual.sum(), 1, generator=generator)[0]
    return k, torch.multinomial(target[k], 1, generator=generator)[0]
