"""The engine behind `spec-bench serve`: one generation at a time, in order, with counters for /metrics.

The decoding engine (libspec/bench/decoding.py) runs batch 1, so generations go through a
one-thread executor whose queue is the server's queue; the server decides how many may wait
(libspec/bench/server.py). Callbacks hear each verification round's text as it is decided, and
a stop event ends a generation whose client went away at the next round.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import torch

from libspec.bench import metrics_page as sdm
from libspec.bench.decoding import Generation, DecodingVerifier, autoregressive_generate, speculative_generate
from libspec.errors import SpecError

ENGINE_NOTE = "spec-tools offline engine (PyTorch), batch 1: one generation at a time; concurrent requests wait their turn (up to --max-queue, then 503)"


class GenerationStopped(Exception):
    """The request's client went away; its generation ends at the next verification round."""


@dataclass(frozen=True)
class CompletionRequest:
    """One parsed /v1/completions or /v1/chat/completions request."""

    chat: bool
    prompt_ids: torch.Tensor
    max_tokens: int
    temperature: float
    seed: int | None
    stream: bool
    include_usage: bool
    continuous_usage: bool
    ignore_eos: bool


@dataclass
class Completion:
    """What a request produced: text, token counts, why it stopped, and its verification rounds."""

    text: str
    prompt_tokens: int
    generation: Generation
    finish_reason: str


class TextStream:
    """Text of a growing token list, released as it becomes final (never half a UTF-8 character)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.sent = 0

    def add(self, tokens: list[int]) -> str:
        """The new text after `tokens`; empty while the tail is an incomplete character."""
        self.tokens.extend(tokens)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        return self._release(text)

    def finish(self) -> str:
        """Whatever is still held back."""
        return self._release(self.tokenizer.decode(self.tokens, skip_special_tokens=True))

    def _release(self, text: str) -> str:
        new, self.sent = text[self.sent :], max(self.sent, len(text))
        return new


@dataclass
class ServerStats:
    """Counters shown at /metrics (guarded by Engine.stats_lock)."""

    spec: sdm.SpecDecodeCounters = field(default_factory=sdm.SpecDecodeCounters)
    prompt_tokens: int = 0
    generation_tokens: int = 0
    requests_running: int = 0
    requests_waiting: int = 0
    finished: dict[str, int] = field(default_factory=dict)


class Engine:
    """The verifier (and speculator) behind the server; generations run one at a time, in submission order."""

    def __init__(self, verifier: DecodingVerifier, tokenizer, eos_ids: set[int], model_name: str, proposer=None, k: int | None = None, info: dict | None = None):
        if proposer is not None and (k is None or k < 1):
            raise SpecError(f"k must be at least 1 with a speculator (got {k})")
        self.verifier, self.tokenizer, self.eos_ids = verifier, tokenizer, eos_ids
        self.model_name, self.proposer, self.k = model_name, proposer, k if proposer is not None else None
        self.max_model_len = getattr(verifier.model.config, "max_position_embeddings", None)
        self.info = info or {}
        self.created = int(time.time())
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spec-engine")  # its queue is ours
        self.stats_lock = threading.Lock()
        self.stats = ServerStats()
        if self.k:
            self.stats.spec.accepted_per_position = [0.0] * self.k  # vLLM shows every position from the start

    def warm_up(self) -> None:
        """One short untimed generation: the first calls pay for allocations and lazy initialisation."""
        prompt = torch.tensor([0], device=self.verifier.device)
        self.worker.submit(self._decode, prompt, 4, set(), 0.0, None, None).result()

    def submit(self, request: CompletionRequest, on_text: Callable[[str, int], None] | None = None, stop: threading.Event | None = None) -> Future:
        """Queue a generation; its Future gives the Completion. `on_text(new_text, tokens_so_far)` hears each
        step's text as it is decided (on the engine's thread); setting `stop` ends the generation early."""
        with self.stats_lock:
            self.stats.requests_waiting += 1
        future = self.worker.submit(self._run, request, on_text, stop)
        future.add_done_callback(self._withdrawn)
        return future

    def in_flight(self) -> int:
        """Requests queued or generating."""
        with self.stats_lock:
            return self.stats.requests_waiting + self.stats.requests_running

    def close(self) -> None:
        """Drop queued generations and let the engine's thread end after the running one."""
        self.worker.shutdown(wait=False, cancel_futures=True)

    def _withdrawn(self, future: Future) -> None:
        if future.cancelled():  # left the queue before it ran: _run never counted it
            with self.stats_lock:
                self.stats.requests_waiting -= 1

    def _run(self, request: CompletionRequest, on_text, stop) -> Completion:
        with self.stats_lock:
            self.stats.requests_waiting -= 1
            self.stats.requests_running += 1
        finish_reason = "abort"  # unless it completes: a client gone mid-stream, an engine error
        try:
            completion = self._complete(request, on_text, stop)
            finish_reason = completion.finish_reason
            return completion
        finally:
            with self.stats_lock:
                self.stats.requests_running -= 1
                self.stats.finished[finish_reason] = self.stats.finished.get(finish_reason, 0) + 1

    def _complete(self, request: CompletionRequest, on_text, stop) -> Completion:
        stream = TextStream(self.tokenizer)
        produced = 0

        def on_tokens(tokens: list[int], accepted: int | None) -> None:
            nonlocal produced
            if stop is not None and stop.is_set():
                raise GenerationStopped()
            produced += len(tokens)
            with self.stats_lock:
                self.stats.generation_tokens += len(tokens)
                if accepted is not None:
                    self.stats.spec.observe(self.k, accepted)
            text = stream.add(tokens)
            if text and on_text:
                on_text(text, produced)

        generator = None
        if request.temperature > 0:
            generator = torch.Generator(device=self.verifier.device)
            if request.seed is None:
                generator.seed()  # a fresh random seed
            else:
                generator.manual_seed(request.seed)
        eos_ids = set() if request.ignore_eos else self.eos_ids
        prompt = request.prompt_ids.to(self.verifier.device)
        with self.stats_lock:
            self.stats.prompt_tokens += len(prompt)
        generation = self._decode(prompt, request.max_tokens, eos_ids, request.temperature, generator, on_tokens)
        tail = stream.finish()
        if tail and on_text:
            on_text(tail, produced)
        finish_reason = "stop" if generation.tokens and generation.tokens[-1] in eos_ids else "length"
        text = self.tokenizer.decode(generation.tokens, skip_special_tokens=True)
        return Completion(text, len(prompt), generation, finish_reason)

    def _decode(self, prompt, max_tokens, eos_ids, temperature, generator, on_tokens) -> Generation:
        if self.proposer is None:
            return autoregressive_generate(self.verifier, prompt, max_tokens, eos_ids, temperature, generator, on_tokens)
        return speculative_generate(self.verifier, self.proposer, prompt, self.k, max_tokens, eos_ids, temperature, generator, on_tokens)

    def metrics_page(self) -> str:
        """The Prometheus text page: vLLM's names, with the spec-decode counters only when speculating."""
        labels = {"engine": "0", "model_name": self.model_name}
        with self.stats_lock:
            stats = self.stats
            entries = [
                ("vllm:num_requests_running", "gauge", "Requests generating now (at most 1: batch-1 engine).", [(labels, stats.requests_running)]),
                ("vllm:num_requests_waiting", "gauge", "Requests waiting for the engine.", [(labels, stats.requests_waiting)]),
                ("vllm:prompt_tokens", "counter", "Prefilled prompt tokens.", [(labels, stats.prompt_tokens)]),
                ("vllm:generation_tokens", "counter", "Generated tokens.", [(labels, stats.generation_tokens)]),
                ("vllm:request_success", "counter", "Finished requests by finish reason.",
                 [({**labels, "finished_reason": reason}, n) for reason, n in sorted(stats.finished.items())]),
            ]  # fmt: skip
            if self.proposer is not None:
                entries += sdm.spec_decode_metrics(stats.spec, labels)
            return sdm.render(entries)

    def models_page(self) -> dict:
        """The /v1/models document: one model, with what the engine is."""
        card = {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "spec-tools",
            "root": self.info.get("verifier", self.model_name),
            "parent": None,
            "max_model_len": self.max_model_len,
            "spec_tools": {**self.info, "engine": ENGINE_NOTE, "num_speculative_tokens": self.k},
        }
        return {"object": "list", "data": [card]}
